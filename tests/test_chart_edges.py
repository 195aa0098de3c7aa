"""The chart's edges: the newest time label is drawn whole; a fresh agent's first points fill the axis."""

from __future__ import annotations

import datetime as dt
import io

from PIL import Image

from alertmail.render.chart import ChartSpec, render_png
from tests.test_chart import line_extent

# A round minute: the time axis then has a tick, and its label, at the right edge.
END = dt.datetime(2025, 1, 15, 15, 10, tzinfo=dt.UTC).timestamp()


def picture(points, end: float = END) -> Image.Image:
    image = Image.open(io.BytesIO(render_png(ChartSpec(title="disk.used_percent", points=points, end=end, threshold=90.0))))
    image.load()
    return image.convert("RGB")


def ink_columns(image: Image.Image, top: int, bottom: int) -> list[int]:
    """Columns with dark (text) pixels between rows ``top`` and ``bottom``."""
    return [x for x in range(image.width) for y in range(top, bottom) if sum(image.getpixel((x, y))) < 3 * 160]


def test_the_right_most_time_label_is_drawn_whole_inside_the_picture():
    image = picture([(END - 600 + 10 * i, 80.0 + i / 6) for i in range(61)])
    # The time labels sit in the band between the axis and the "time (UTC)" caption.
    columns = ink_columns(image, 385, 440)
    assert columns, "no time labels"
    assert max(columns) < image.width - 6, "the newest time label runs off the right edge"


def test_the_left_most_time_label_is_drawn_whole_too():
    start = END - 600
    image = picture([(start + 10 * i, 80.0) for i in range(61)], end=END)
    columns = ink_columns(image, 385, 440)
    assert min(columns) > 4


def test_a_fresh_agents_two_points_span_the_chart_not_its_right_edge():
    left, right = line_extent(picture([(END - 10, 80.0), (END, 82.0)]))
    assert right - left > 0.75 * 1280


def test_a_lone_point_still_draws_on_a_two_minute_axis():
    image = picture([(END, 80.0)])
    _, right = line_extent(image)
    assert right > 0.9 * image.width
