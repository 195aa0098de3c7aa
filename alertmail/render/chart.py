"""Charts of a metric around an alert, as PNGs for the HTML mail.

A chart shows the span of data there is (at most the spec's ``window``), so a fresh
agent's first alert is a line across the chart, not a dot at the right edge of an empty
hour, nor two points at the right edge of two minutes; only a single point gets
``MIN_SPAN`` around it. ``alertmail.render.plot`` draws it with Pillow, imported
when the first chart is drawn, so the idle agent does not hold it.

Where a chart is drawn (``[mail].charts``): ``in-process`` (the default: a few tens of
milliseconds of CPU and a few MB that stay once the first alert has rendered), or
``subprocess``, a short-lived child (``python -m alertmail.render.chart``, JSON in, JSON
out) for those who want drawing isolated from the agent at the cost of starting an
interpreter per mail. Either way a chart that fails costs only the chart.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

log = logging.getLogger(__name__)

MIN_SPAN = 120.0  # seconds: the time axis of a chart with a single point
SHORTEST_SPAN = 1.0  # seconds: the narrowest time axis of two points or more
WIDTH, HEIGHT = 1280, 480  # pixels: a 640x240 CSS box at 2x pixel density


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
    window: float = 3600.0  # the longest span shown before ``end``, in seconds
    size: tuple[int, int] = field(default=(WIDTH, HEIGHT))  # pixels

    @classmethod
    def from_json(cls, record: dict) -> ChartSpec:
        values = dict(record)
        values["points"] = tuple((float(t), float(v)) for t, v in values.get("points", ()))
        values["size"] = tuple(values.get("size", (WIDTH, HEIGHT)))
        return cls(**values)


def time_range(spec: ChartSpec) -> tuple[float, float]:
    """The time axis: from the oldest point within ``window`` to ``end``; ``MIN_SPAN`` for a lone point."""
    times = [t for t, v in spec.points if math.isfinite(t) and math.isfinite(v)]
    end = spec.end if spec.end is not None else max(times, default=0.0)
    longest = max(spec.window, 1.0)
    oldest = min((t for t in times if t <= end), default=end)
    covered = end - oldest
    shortest = SHORTEST_SPAN if covered > 0 else MIN_SPAN
    return end - min(max(covered, shortest), longest), end


def value_range(spec: ChartSpec, start: float, end: float) -> tuple[float, float]:
    """The value axis: the points shown and the threshold lines, with a little room above and below."""
    values = [v for t, v in spec.points if start <= t <= end and math.isfinite(v)]
    values += [v for v in (spec.threshold, spec.clear) if v is not None and math.isfinite(v)]
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    span = (high - low) or abs(high) or 1.0
    low = 0.0 if 0 <= low <= span else low - 0.08 * span
    return low, high + 0.12 * span


def render_png(spec: ChartSpec) -> bytes:
    """Draw ``spec`` in this process and return the PNG bytes (imports Pillow on first use)."""
    from alertmail.render.plot import draw

    start, end = time_range(spec)
    return draw(spec, start, end, *value_range(spec, start, end))


def render_pngs(specs: Sequence[ChartSpec], *, isolated: bool = True, timeout: float = 30.0) -> list[bytes | None]:
    """PNG bytes for each spec, ``None`` where a chart could not be drawn (the mail goes out without it).

    ``isolated`` draws in a child process, bounded by ``timeout``; otherwise in this one.
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
    try:
        done = subprocess.run(
            [sys.executable, "-m", "alertmail.render.chart"],
            input=request,
            capture_output=True,
            timeout=timeout,
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
