"""The chart in an alert mail: its size and background, a time axis that fits the data, failures that cost only the chart."""

from __future__ import annotations

import io
import logging
import math

import pytest
from PIL import Image, ImageFont

from alertmail.render import plot
from alertmail.render.chart import MIN_SPAN, ChartSpec, render_png, time_range
from alertmail.render.mail import render_alert
from alertmail.render.view import RenderContext
from tests.test_render import AT, CPU_RULE, SINCE, context, event, html_of, images, reparse

LINE = (0x1F, 0x4E, 0x79)


def chart_of(history) -> Image.Image:
    msg = reparse(render_alert([event()], context(history=history, charts="in-process")))
    [part] = images(msg)
    picture = Image.open(io.BytesIO(part.get_content()))
    picture.load()
    return picture


def line_extent(picture: Image.Image) -> tuple[int, int]:
    """Leftmost and rightmost column holding the series' line colour."""
    rgb = picture.convert("RGB")
    columns = [
        x
        for x in range(rgb.width)
        for y in range(0, rgb.height, 2)
        if sum(abs(a - b) for a, b in zip(rgb.getpixel((x, y)), LINE)) < 60
    ]
    assert columns, "no line drawn"
    return min(columns), max(columns)


def seconds_of_samples(seconds: int, step: float = 1.0):
    def history(metric, labels):
        return [(AT - seconds + i * step, 80 + 15 * i * step / seconds) for i in range(int(seconds / step) + 1)]

    return history


def test_chart_is_1280_by_480_on_an_opaque_white_background():
    picture = chart_of(seconds_of_samples(3600, 60))
    assert picture.size == (1280, 480)  # a 640x240 box at 2x pixel density
    assert "transparency" not in picture.info and picture.mode in ("RGB", "P")
    rgba = picture.convert("RGBA")
    assert rgba.getextrema()[3] == (255, 255)  # not a pixel see-through: dark mode cannot put the text on black
    for corner in ((0, 0), (1279, 0), (0, 479), (1279, 479)):
        assert rgba.getpixel(corner) == (255, 255, 255, 255)


@pytest.mark.parametrize("seconds", [40, 90, 600])
def test_a_fresh_agent_s_samples_span_the_chart_instead_of_a_dot_at_its_edge(seconds):
    left, right = line_extent(chart_of(seconds_of_samples(seconds)))
    shown = max(seconds, MIN_SPAN)
    # The plot takes most of the width; the samples take their share of the axis, not 2 % of an hour.
    assert right - left > 0.75 * 1280 * seconds / shown


def test_an_hour_of_samples_spans_the_chart():
    left, right = line_extent(chart_of(seconds_of_samples(3600, 60)))
    assert right - left > 0.8 * 1280


def test_time_axis_is_the_span_of_the_data_up_to_the_window():
    def spec(first: float, window: float = 3600.0) -> ChartSpec:
        return ChartSpec(title="t", points=((AT - first, 1.0), (AT, 2.0)), end=AT, window=window)

    assert time_range(spec(5)) == (AT - 5, AT)
    assert time_range(ChartSpec(title="t", points=((AT, 2.0),), end=AT)) == (AT - MIN_SPAN, AT)
    assert time_range(spec(700)) == (AT - 700, AT)
    assert time_range(spec(7200, window=1800)) == (AT - 1800, AT)  # the line comes in from the left edge
    nan_first = ChartSpec(title="t", points=((AT - 900, math.nan), (AT - 300, 1.0), (AT, 2.0)), end=AT)
    assert time_range(nan_first) == (AT - 300, AT)


def test_time_ticks_fall_on_round_local_times_in_a_half_hour_zone():
    import zoneinfo

    zone = zoneinfo.ZoneInfo("Asia/Kolkata")  # UTC+05:30
    ticks, fmt = plot.time_ticks(AT - 1800, AT, zone, 6)
    assert fmt == "%H:%M"
    labels = [plot.dt.datetime.fromtimestamp(t, zone).strftime(fmt) for t in ticks]
    assert labels and all(label.endswith(("0", "5")) for label in labels)
    assert all(AT - 1800 <= t <= AT for t in ticks)


def test_value_ticks_are_round_and_within_the_axis():
    assert plot.nice_ticks(68.3, 92.1, 6) == [70.0, 75.0, 80.0, 85.0, 90.0]
    assert plot.nice_ticks(68.3, 92.1, 4) == [70.0, 80.0, 90.0]
    assert plot.nice_ticks(0, 1.2e9, 4) == [0.0, 5e8, 1e9]


def test_text_the_font_cannot_draw_is_spelled_in_ascii_not_as_boxes():
    bundled = ImageFont.load_default(size=30)  # Pillow's own font covers ASCII only
    assert plot.printable("/srv/données − 5 €", bundled) == "/srv/donnees - 5 ?"


def test_labels_in_any_script_and_long_titles_still_draw():
    png = render_png(ChartSpec(title="fs.used " + "données/日本語/" * 20, points=((AT - 60, 1.0), (AT, 2.0)), end=AT, unit="MiB"))
    assert Image.open(io.BytesIO(png)).size == (1280, 480)


def test_a_chart_that_fails_to_draw_costs_only_that_chart(monkeypatch, caplog):
    draw = plot.draw

    def fails_for_cpu(spec, *args):
        if spec.title.startswith("cpu.percent"):
            raise ValueError("drawing broke")
        return draw(spec, *args)

    monkeypatch.setattr(plot, "draw", fails_for_cpu)
    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin", history=seconds_of_samples(600))  # default charts
    with caplog.at_level(logging.WARNING):
        msg = reparse(render_alert([event(), event(CPU_RULE, labels=(), since=SINCE)], ctx))
    assert len(images(msg)) == 1
    assert "No chart: the chart could not be drawn" in html_of(msg)
    assert "drawing broke" in caplog.text
