"""Drawing one chart with Pillow: axes, ticks, legend, the series, thresholds and the firing interval.

Pillow imports in about 15 ms and holds a few MB, where matplotlib took close to a second
and 50 MB; a chart costs a few tens of milliseconds of CPU in the agent's own process
(figures: ``bench/render_mail.py``). Shapes are drawn at ``SUPERSAMPLE`` times the size
and reduced, which smooths their edges; text is drawn afterwards at the final size by
FreeType, already smooth.

The image is opaque white (a mail client's forced dark mode leaves images alone, and a
transparent one would put dark text on a dark page) and sized for 2x pixel density: a
1280x480 PNG shown in a 640x240 CSS box. Its text is sized to stay legible when a phone
shows it 390 px wide.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import itertools
import math
import os
import threading
import unicodedata
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol


class ChartSpec(Protocol):
    """What ``draw`` reads of a ``chart.ChartSpec`` (named here: chart.py imports this module, not the reverse)."""

    @property
    def title(self) -> str: ...
    @property
    def points(self) -> Sequence[tuple[float, float]]: ...
    @property
    def timezone(self) -> str: ...
    @property
    def unit(self) -> str: ...
    @property
    def threshold(self) -> float | None: ...
    @property
    def clear(self) -> float | None: ...
    @property
    def shade_from(self) -> float | None: ...
    @property
    def shade_to(self) -> float | None: ...
    @property
    def size(self) -> tuple[int, int]: ...


SUPERSAMPLE = 2
REFERENCE_WIDTH = 1280  # the sizes below are pixels of a chart this wide; others scale with their width

# Colours chosen to read on white and in greyscale prints.
LINE = (0x1F, 0x4E, 0x79)
FILL = (0xDB, 0xE7, 0xF3)
THRESHOLD = (0xC0, 0x39, 0x2B)
CLEAR = (0x1E, 0x84, 0x49)
FIRING = (0xF8, 0xD0, 0xCC)  # #f5b7b1 at 55 % over white, as the earlier charts showed it
GRID = (0xE5, 0xE5, 0xE5)
AXIS = (0x99, 0x99, 0x99)
INK = (0x22, 0x22, 0x22)
MUTED = (0x55, 0x55, 0x55)
WHITE = (0xFF, 0xFF, 0xFF)
KEY_COLOURS = (LINE, FILL, THRESHOLD, CLEAR, FIRING, GRID, AXIS, INK, MUTED, WHITE)

# Font sizes in pixels: ticks at 36 px read as about 10 px when a phone shows the chart in a
# 390 px wide mail (340 px of chart), and as 18 px in the 640 px box of a wider screen.
TITLE_SIZE = 38
TICK_SIZE = 36
LEGEND_SIZE = 32
LABEL_SIZE = 28

# A font with wide coverage where the system has one; Pillow's bundled one (ASCII only) otherwise.
SYSTEM_FONTS = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:/Windows/Fonts/arial.ttf",
)

# One chart at a time: the cached FreeType faces are not meant to be used by two threads at once.
_DRAWING = threading.Lock()

TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600)


@functools.cache
def _pillow() -> None:
    """Pillow's memory in blocks of 1 MB instead of 16: with 16, glibc keeps about 16 MB after the first charts."""
    from PIL import Image

    if "PILLOW_BLOCK_SIZE" not in os.environ:
        Image.core.set_block_size(1 << 20)


@functools.lru_cache(maxsize=16)
def font(size: int) -> Any:
    from PIL import ImageFont

    for path in SYSTEM_FONTS:
        if Path(path).is_file():
            try:
                return ImageFont.truetype(path, size)
            except OSError:
                continue
    return ImageFont.load_default(size=size)


def printable(text: str, face: Any) -> str:
    """``text`` with what the font cannot draw spelled in ASCII (é -> e) or as "?", rather than as empty boxes."""
    missing = bytes(face.getmask("\uffff"))
    out = []
    for ch in text:
        if ch.isascii() or bytes(face.getmask(ch)) != missing:
            out.append(ch)
            continue
        plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
        out.append(plain or ("-" if ch == "−" else "?"))
    return "".join(out)


def fit_text(text: str, face: Any, width: float) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` pixels."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def nice_ticks(low: float, high: float, most: int) -> list[float]:
    """Round values (1, 2, 2.5, 5 x 10^k apart) between ``low`` and ``high``, at most ``most`` of them."""
    span = high - low
    if not span > 0 or not math.isfinite(span):
        return [low]
    raw = span / max(most - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(0.0 if abs(value) < step * 1e-9 else value)
        value = first + len(ticks) * step
    return ticks


def time_ticks(start: float, end: float, zone: zoneinfo.ZoneInfo, most: int) -> tuple[list[float], str]:
    """Tick times on round local clock times between ``start`` and ``end``, and their strftime format."""
    span = max(end - start, 1.0)
    step = next((s for s in TIME_STEPS if span / s <= most), TIME_STEPS[-1])
    offset = dt.datetime.fromtimestamp(end, zone).utcoffset() or dt.timedelta()
    shift = offset.total_seconds()
    t = math.ceil((start + shift) / step) * step - shift
    ticks = []
    while t <= end:
        ticks.append(t)
        t += step
    return ticks, "%H:%M:%S" if step < 60 else "%H:%M"


def draw(spec: ChartSpec, start: float, end: float, low: float, high: float) -> bytes:
    """The PNG of ``spec`` with the time axis from ``start`` to ``end`` and the value axis from ``low`` to ``high``."""
    with _DRAWING:
        return _draw(spec, start, end, low, high)


def _draw(spec: ChartSpec, start: float, end: float, low: float, high: float) -> bytes:
    from PIL import Image, ImageDraw

    _pillow()
    width, height = spec.size
    k = width / REFERENCE_WIDTH

    def px(n: float) -> int:
        return max(1, round(n * k))

    title_font, tick_font, legend_font, label_font = (font(px(s)) for s in (TITLE_SIZE, TICK_SIZE, LEGEND_SIZE, LABEL_SIZE))
    zone = zoneinfo.ZoneInfo(spec.timezone)
    pad = px(16)

    points = sorted((t, v) for t, v in spec.points if start <= t <= end and math.isfinite(v))
    older = max(((t, v) for t, v in spec.points if t < start and math.isfinite(v)), default=None)
    if older is not None and points:
        # The line comes in from the left edge, as it does from older samples, not from the first one shown.
        (t0, v0), (t1, v1) = older, points[0]
        points.insert(0, (start, min(max(v0 + (v1 - v0) * (start - t0) / (t1 - t0), low), high)))
    shade = _shade(spec, start, end)
    legend = _legend_items(spec, shade is not None)

    # Layout: title (and legend, when both fit on one line) on top, the time axis below, value ticks on the left.
    title = printable(spec.title, title_font)
    legend_width = sum(px(56) + legend_font.getlength(text) + px(28) for _, text in legend)
    title_width = title_font.getlength(title)
    one_row = title_width + px(40) + legend_width <= width - 2 * pad
    top = pad + px(50) + (0 if one_row or not legend else px(46)) + px(14)
    bottom = height - pad - px(36) - px(50)

    value_ticks = nice_ticks(low, high, max(2, int((bottom - top) / px(50)) + 1))
    tick_labels = [compact(v) for v in value_ticks]
    label_room = max((tick_font.getlength(s) for s in tick_labels), default=0)
    unit = printable(spec.unit, label_font)
    left = pad + (px(40) if unit else 0) + label_room + px(16)
    right = width - pad - px(8)
    inner = px(10)  # keeps the newest point's dot inside the frame

    def x_of(t: float) -> float:
        return left + (t - start) / (end - start) * (right - inner - left)

    def y_of(v: float) -> float:
        return bottom - (v - low) / (high - low) * (bottom - top)

    # Shapes, drawn large and reduced for smooth edges.
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (width * s, height * s), WHITE)
    pen = ImageDraw.Draw(canvas)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * s, y0 * s, x1 * s, y1 * s)

    if shade is not None:
        x0, x1 = x_of(shade[0]), x_of(shade[1])
        if x1 - x0 < px(6):  # a firing that has just begun still shows
            x0 = x1 - px(6)
        pen.rectangle(box(max(x0, left), top, x1, bottom), fill=FIRING)

    segments = _segments(points)
    for segment in segments:
        xy = [(x_of(t) * s, y_of(v) * s) for t, v in segment]
        if len(xy) > 1:
            pen.polygon([(xy[0][0], bottom * s), *xy, (xy[-1][0], bottom * s)], fill=FILL)

    time_tick_list, time_format = time_ticks(start, end, zone, max(2, int((right - left) / px(220))))
    for v in value_ticks:
        pen.line([(left * s, y_of(v) * s), (right * s, y_of(v) * s)], fill=GRID, width=px(2) * s)
    for t in time_tick_list:
        pen.line([(x_of(t) * s, top * s), (x_of(t) * s, bottom * s)], fill=GRID, width=px(2) * s)

    if spec.threshold is not None:
        _dashed(pen, left * s, right * s, y_of(spec.threshold) * s, px(3) * s, THRESHOLD, px(18) * s, px(10) * s)
    if spec.clear is not None and spec.clear != spec.threshold:
        _dotted(pen, left * s, right * s, y_of(spec.clear) * s, px(3.4) * s, CLEAR, px(11) * s)

    line_width = px(4) * s
    for segment in segments:
        xy = [(x_of(t) * s, y_of(v) * s) for t, v in segment]
        if len(xy) > 1:
            pen.line(xy, fill=LINE, width=line_width, joint="curve")
        else:
            r = line_width / 2
            pen.ellipse((xy[0][0] - r, xy[0][1] - r, xy[0][0] + r, xy[0][1] + r), fill=LINE)
    if points:
        r = px(6.5) * s
        cx, cy = x_of(points[-1][0]) * s, y_of(points[-1][1]) * s
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=LINE)

    pen.line([(left * s, top * s), (left * s, bottom * s), (right * s, bottom * s)], fill=AXIS, width=px(2) * s)
    for t in time_tick_list:
        pen.line([(x_of(t) * s, bottom * s), (x_of(t) * s, (bottom + px(8)) * s)], fill=AXIS, width=px(2) * s)
    for v in value_ticks:
        pen.line([((left - px(8)) * s, y_of(v) * s), (left * s, y_of(v) * s)], fill=AXIS, width=px(2) * s)

    image = canvas.reduce(s)

    # Text, at the final size.
    ink = ImageDraw.Draw(image)
    available = width - 2 * pad - (legend_width + px(40) if one_row else 0)
    ink.text((pad, pad), fit_text(title, title_font, available), font=title_font, fill=INK)
    if legend:
        x = width - pad - legend_width if one_row else pad
        y = pad + px(25) if one_row else pad + px(50) + px(23)
        _draw_legend(ink, legend, x, y, legend_font, px)
    for v, text in zip(value_ticks, tick_labels):
        ink.text((left - px(14), y_of(v)), text, font=tick_font, fill=MUTED, anchor="rm")
    free_until = math.inf  # labels go newest first; one that would touch the label to its right is left out
    for t in reversed(time_tick_list):
        label = dt.datetime.fromtimestamp(t, zone).strftime(time_format)
        # Centred on its tick, but kept whole inside the picture: the newest tick sits near the right edge.
        half = tick_font.getlength(label) / 2
        x = min(max(x_of(t), half + pad / 2), width - pad / 2 - half)
        if x + half > free_until - px(24):
            continue
        ink.text((x, bottom + px(14)), label, font=tick_font, fill=MUTED, anchor="mt")
        free_until = x - half
    zone_name = dt.datetime.fromtimestamp(end, zone).strftime("%Z")
    ink.text(((left + right) / 2, height - pad), f"time ({zone_name})", font=label_font, fill=MUTED, anchor="md")
    if unit:
        _vertical_text(image, unit, label_font, (pad, (top + bottom) / 2), MUTED)
    if not points:
        ink.text(((left + right) / 2, (top + bottom) / 2), "no samples recorded", font=tick_font, fill=(0x77,) * 3, anchor="mm")

    return _png(image)


def compact(value: float) -> str:
    """A tick label that fits the margin: 950 -> "950", 12500 -> "12.5k", 9.5e9 -> "9.5G"."""
    for size, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{prefix}"
    return f"{value:.4g}"


def _shade(spec: ChartSpec, start: float, end: float) -> tuple[float, float] | None:
    if spec.shade_from is None:
        return None
    left = max(spec.shade_from, start)
    right = min(spec.shade_to if spec.shade_to is not None else end, end)
    return (left, right) if right >= left else None


def _legend_items(spec: ChartSpec, shaded: bool) -> list[tuple[str, str]]:
    items = [("firing", "firing")] if shaded else []
    if spec.threshold is not None:
        items.append(("threshold", f"threshold {_short(spec.threshold, spec.unit)}"))
    if spec.clear is not None and spec.clear != spec.threshold:
        items.append(("clear", f"clear {_short(spec.clear, spec.unit)}"))
    return items


def _short(value: float, unit: str) -> str:
    return f"{compact(value)} {unit}".rstrip()


def _segments(points: Sequence[tuple[float, float]]) -> list[list[tuple[float, float]]]:
    """The points split where samples stopped for a while: a gap in the data is not drawn as a straight line."""
    if len(points) < 3:
        return [list(points)] if points else []
    steps = sorted(b[0] - a[0] for a, b in itertools.pairwise(points))
    gap = max(5 * steps[len(steps) // 2], 1e-9)
    segments = [[points[0]]]
    for before, point in itertools.pairwise(points):
        if point[0] - before[0] > gap:
            segments.append([])
        segments[-1].append(point)
    return segments


def _dashed(pen: Any, x0: float, x1: float, y: float, width: float, colour: tuple, on: float, off: float) -> None:
    x = x0
    while x < x1:
        pen.line([(x, y), (min(x + on, x1), y)], fill=colour, width=round(width))
        x += on + off


def _dotted(pen: Any, x0: float, x1: float, y: float, size: float, colour: tuple, every: float) -> None:
    r = size / 2
    x = x0 + r
    while x < x1:
        pen.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        x += every


def _draw_legend(ink: Any, items: list[tuple[str, str]], x: float, y: float, face: Any, px: Any) -> None:
    for kind, text in items:
        if kind == "firing":
            ink.rectangle((x, y - px(11), x + px(44), y + px(11)), fill=FIRING)
        elif kind == "threshold":
            _dashed(ink, x, x + px(44), y, px(3), THRESHOLD, px(16), px(8))
        else:
            _dotted(ink, x, x + px(44), y, px(4), CLEAR, px(10))
        ink.text((x + px(56), y), text, font=face, fill=INK, anchor="lm")
        x += px(56) + face.getlength(text) + px(28)


def _vertical_text(image: Any, text: str, face: Any, at: tuple[float, float], colour: tuple) -> None:
    """``text`` turned a quarter left, its left edge at ``at[0]`` and centred on ``at[1]``."""
    from PIL import Image, ImageDraw

    x0, y0, x1, y1 = face.getbbox(text)
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)), 0)
    ImageDraw.Draw(mask).text((-x0, -y0), text, font=face, fill=255)
    mask = mask.rotate(90, expand=True)
    image.paste(colour, (round(at[0]), round(at[1] - mask.height / 2)), mask)


def _png(image: Any) -> bytes:
    """The chart as a 64-colour PNG: a third of the size of 24-bit, and it looks the same."""
    from PIL import Image

    # Octree: a quarter of the time median cut takes, and the same picture for these flat colours,
    # once the palette entries it averaged near them are set back to them (the background stays pure white).
    quantized = image.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    palette = quantized.getpalette() or []
    for i in range(0, len(palette) - 2, 3):
        entry = palette[i : i + 3]
        near = min(KEY_COLOURS, key=lambda c: sum(abs(a - b) for a, b in zip(c, entry)))
        if sum(abs(a - b) for a, b in zip(near, entry)) <= 9:
            palette[i : i + 3] = near
    quantized.putpalette(palette)
    out = io.BytesIO()
    quantized.save(out, format="PNG", compress_level=6)
    return out.getvalue()
