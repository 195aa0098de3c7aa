"""Charts of a metric around an alert, as small PNGs for the HTML mail.

matplotlib costs about 48 MB of RSS and close to a second to import; the agent
mails rarely and should stay small while idle. So by default the charts of one
mail are drawn in a short-lived child process (``python -m alertmail.chart``,
JSON in, JSON out) that takes that memory away with it when it exits. Tools that
render many mails in a row (replay, benchmarks) may draw in-process instead.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import math
import os
import subprocess
import sys
import zoneinfo
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

# Colours chosen to read on white and in greyscale prints.
LINE = "#1f4e79"
FILL = "#dbe7f3"
THRESHOLD = "#c0392b"
CLEAR = "#1e8449"
FIRING = "#f5b7b1"


@dataclass(frozen=True)
class ChartSpec:
    """Everything needed to draw one chart; plain values so it crosses a pipe as JSON."""

    title: str
    points: Sequence[tuple[float, float]] = ()  # (unix time, value), any order
    timezone: str = "UTC"
    unit: str = ""
    threshold: float | None = None
    clear: float | None = None
    shade_from: float | None = None  # the firing interval, unix times
    shade_to: float | None = None
    end: float | None = None  # right edge of the time axis (the event time)
    window: float = 3600.0  # seconds shown before ``end``
    size: tuple[int, int] = field(default=(640, 240))  # pixels at 100 dpi

    @classmethod
    def from_json(cls, raw: dict) -> ChartSpec:
        raw = dict(raw)
        raw["points"] = tuple((float(t), float(v)) for t, v in raw.get("points", ()))
        raw["size"] = tuple(raw.get("size", (640, 240)))
        return cls(**raw)


def render_png(spec: ChartSpec) -> bytes:
    """Draw ``spec`` in this process and return the PNG bytes (imports matplotlib on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    zone = zoneinfo.ZoneInfo(spec.timezone)
    end = spec.end if spec.end is not None else max((t for t, _ in spec.points), default=0.0)
    start = end - spec.window
    points = sorted((t, v) for t, v in spec.points if start <= t <= end and math.isfinite(v))

    def when(t: float) -> float:
        return mdates.date2num(dt.datetime.fromtimestamp(t, dt.UTC))

    width, height = spec.size
    fig = Figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_subplot()
    # A little room on the right so the latest point is not cut by the frame.
    ax.set_xlim(when(start), when(end + spec.window * 0.01))

    if spec.shade_from is not None:
        left = max(spec.shade_from, start)
        right = min(spec.shade_to if spec.shade_to is not None else end, end)
        if right > left:
            ax.axvspan(when(left), when(right), color=FIRING, alpha=0.55, linewidth=0, label="firing")

    if points:
        xs = [when(t) for t, _ in points]
        ys = [v for _, v in points]
        ax.fill_between(xs, ys, min([*ys, 0.0]), color=FILL, linewidth=0)
        ax.plot(xs, ys, color=LINE, linewidth=1.6)
        ax.plot(xs[-1:], ys[-1:], "o", color=LINE, markersize=4)
    else:
        ax.text(0.5, 0.5, "no samples recorded", transform=ax.transAxes, ha="center", va="center", color="#777777")

    if spec.threshold is not None:
        label = f"threshold {_short(spec.threshold, spec.unit)}"
        ax.axhline(spec.threshold, color=THRESHOLD, linestyle="--", linewidth=1.2, label=label)
    if spec.clear is not None and spec.clear != spec.threshold:
        ax.axhline(spec.clear, color=CLEAR, linestyle=":", linewidth=1.4, label=f"clear {_short(spec.clear, spec.unit)}")
    _fit_y(ax, points, (spec.threshold, spec.clear))

    step = 10 if spec.window > 1800 else 5
    ax.xaxis.set_major_locator(mdates.MinuteLocator(byminute=range(0, 60, step), tz=zone))
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
    # Short tick labels and no offset text ("1e10") colliding with the title.
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: compact(v)))
    ax.set_xlabel(f"time ({dt.datetime.fromtimestamp(end, zone):%Z})", fontsize=8, color="#555555")
    if spec.unit:
        ax.set_ylabel(spec.unit, fontsize=8, color="#555555")
    ax.set_title(spec.title, fontsize=9, loc="left", color="#222222")
    ax.tick_params(labelsize=8, colors="#555555")
    ax.grid(True, color="#e5e5e5", linewidth=0.6)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", frameon=False, ncol=3)
    # Fixed margins: tight_layout measured every label and took half the drawing time.
    fig.subplots_adjust(left=0.085, right=0.985, top=0.89, bottom=0.19)

    drawn = io.BytesIO()
    fig.savefig(drawn, format="png", dpi=100, metadata={"Software": None})
    return _palette_png(drawn.getvalue())


def _palette_png(png: bytes) -> bytes:
    """The PNG with 64 colours instead of 24-bit RGBA: a quarter of the size, and it looks the same.

    Pillow is there wherever matplotlib is (a dependency of it).
    """
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _fit_y(ax, points: Sequence[tuple[float, float]], lines: Sequence[float | None]) -> None:
    """Y range covering the data and the threshold lines, with head room for the legend."""
    values = [v for _, v in points] + [v for v in lines if v is not None]
    if not values:
        return
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low = 0.0 if 0 <= low <= span else low - 0.08 * span
    ax.set_ylim(low, high + 0.3 * span)


def _short(value: float, unit: str) -> str:
    return f"{compact(value)} {unit}".rstrip()


def compact(value: float) -> str:
    """A tick label that fits the margin: 950 -> "950", 12500 -> "12.5k", 9.5e9 -> "9.5G"."""
    for size, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e4, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{prefix}"
    return f"{value:.4g}"


def render_pngs(specs: Sequence[ChartSpec], *, isolated: bool = True, timeout: float = 30.0) -> list[bytes | None]:
    """PNG bytes for each spec, ``None`` where a chart could not be drawn (the mail goes out without it).

    ``isolated`` draws in a child process so matplotlib's memory leaves with it;
    ``timeout`` bounds that child (its first run may build matplotlib's font cache).
    """
    if not specs:
        return []
    if not isolated:
        results: list[bytes | None] = []
        for spec in specs:
            try:
                results.append(render_png(spec))
            except Exception:
                log.exception("chart %r could not be drawn", spec.title)
                results.append(None)
        return results
    request = json.dumps([asdict(s) for s in specs]).encode()
    env = dict(os.environ, MPLBACKEND="Agg")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "alertmail.render.chart"],
            input=request,
            capture_output=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("charts not drawn: %s", exc)
        return [None] * len(specs)
    if done.returncode != 0:
        log.warning("charts not drawn: exit %s: %s", done.returncode, done.stderr.decode(errors="replace")[-500:])
        return [None] * len(specs)
    try:
        pngs = [base64.b64decode(png) if png else None for png in json.loads(done.stdout)]
    except (ValueError, TypeError) as exc:
        log.warning("charts not drawn: unreadable answer from the chart process: %s", exc)
        return [None] * len(specs)
    return (pngs + [None] * len(specs))[: len(specs)]


def main() -> None:
    """Child process: a JSON list of chart specs on stdin, a JSON list of base64 PNGs (or null) on stdout."""
    specs = [ChartSpec.from_json(raw) for raw in json.load(sys.stdin)]
    pngs = render_pngs(specs, isolated=False)
    json.dump([base64.b64encode(p).decode() if p else None for p in pngs], sys.stdout)


if __name__ == "__main__":
    main()
