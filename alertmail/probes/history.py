"""Recent samples of the series that rules watch, for charts in alert mails, kept across restarts.

Bounded: at most ``window`` seconds and ``max_points`` points per series, and only
series some rule matches are kept, so memory does not grow with what probes emit.
A series that stops reporting is dropped by ``forget_idle`` once its newest point is
older than the window; the agent calls it from its tick.

``save`` writes the history to one JSON file atomically (at most ``MAX_SAVED_POINTS``
points, the newest of each series kept first); ``load`` reads it back at start, dropping
points older than the window (or from the future: a clock set back), and ignores a file
it cannot read with a warning. The agent saves now and then and at stop, so a restart
leaves no gap in the charts.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from alertmail.fsutil import write_atomic
from alertmail.model import Labels, Sample, freeze_labels

log = logging.getLogger("alertmail.history")

FORMAT_VERSION = 1
# About 25 bytes a point in the file: a few MB at most, written in well under a second.
MAX_SAVED_POINTS = 100_000

Points = list[tuple[float, float]]


class History:
    def __init__(self, window: float = 3600.0, max_points: int = 720) -> None:
        self.window = window
        self.max_points = max_points
        self._series: dict[tuple[str, Labels], deque[tuple[float, float]]] = {}

    def add(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            points = self._series.get(sample.series)
            if points is None:
                points = self._series[sample.series] = deque(maxlen=self.max_points)
            points.append((sample.timestamp, sample.value))
            horizon = sample.timestamp - self.window
            while points and points[0][0] < horizon:
                points.popleft()

    def get(self, metric: str, labels: Labels) -> list[tuple[float, float]]:
        return list(self._series.get((metric, labels), ()))

    def forget_idle(self, now: float) -> None:
        """Drop series that sent nothing within the window (a process that went away)."""
        horizon = now - self.window
        for key in [k for k, v in self._series.items() if not v or v[-1][0] < horizon]:
            del self._series[key]

    def shift(self, delta: float) -> None:
        """The wall clock was stepped by ``delta`` seconds: move every point's time by it, so the
        charts stay in order and ``forget_idle`` keeps counting on the same clock as the samples."""
        if not delta:
            return
        for key, points in self._series.items():
            self._series[key] = deque(((t + delta, v) for t, v in points), maxlen=points.maxlen)

    def __len__(self) -> int:
        return len(self._series)

    # -- across restarts -----------------------------------------------------

    def copy(self, max_points: int | None = None) -> list[tuple[str, Labels, Points]]:
        """Every series and its points (at most ``max_points``, as ``bounded`` keeps them), copied:
        safe to encode in another thread while samples keep coming."""
        return bounded(((metric, labels, points) for (metric, labels), points in self._series.items()), max_points)

    def save(self, path: Path, series: list[tuple[str, Labels, Points]] | None = None) -> None:
        """Write the history (or ``series``, a ``copy()``) to ``path`` atomically; OSError when it cannot."""
        write_atomic(path, encode(self.copy(MAX_SAVED_POINTS) if series is None else series))

    def load(self, path: Path, now: float, keep: Callable[[str, Labels], bool] = lambda metric, labels: True) -> int:
        """Take back the points saved in ``path`` that are within the window before ``now``, for series
        ``keep`` accepts; how many points. A missing file is no history; an unreadable one, a warning."""
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("chart history %s cannot be read (%s); charts start empty", path, exc.strerror or exc)
            return 0
        try:
            saved = decode(data)
        except ValueError as exc:
            log.warning("chart history %s is damaged (%s); ignored, charts start empty", path, exc)
            return 0
        horizon = now - self.window
        count = 0
        for metric, labels, points in saved:
            if not keep(metric, labels):
                continue
            fresh = [(t, v) for t, v in points if horizon <= t <= now]
            if not fresh:
                continue
            target = self._series.setdefault((metric, labels), deque(maxlen=self.max_points))
            merged = sorted({*fresh, *target})  # points that arrived before the load stay, in time order
            target.clear()
            target.extend(merged)
            count += len(fresh)
        return count


def bounded(
    series: Iterable[tuple[str, Labels, Sequence[tuple[float, float]]]], max_points: int | None
) -> list[tuple[str, Labels, Points]]:
    """The series as lists, at most ``max_points`` points in all (None: no bound).

    Over the bound every series keeps its newest points, an equal share each; when there
    are more series than points to share, those that reported last are kept.
    """
    series = [s for s in series if s[2]]
    total = sum(len(points) for _, _, points in series)
    if max_points is None or total <= max_points:
        return [(metric, labels, list(points)) for metric, labels, points in series]
    series.sort(key=lambda s: s[2][-1][0], reverse=True)
    share = max(max_points // len(series), 1)
    kept, room = [], max_points
    for metric, labels, points in series:
        if room <= 0:
            break
        take = min(len(points), share, room)
        kept.append((metric, labels, list(itertools.islice(points, len(points) - take, None))))
        room -= take
    return kept


def encode(series: Iterable[tuple[str, Labels, Sequence[tuple[float, float]]]], max_points: int = MAX_SAVED_POINTS) -> bytes:
    """The saved form, ``{"version": 1, "series": [{"metric", "labels", "points": [[t, v], ...]}]}``,
    of at most ``max_points`` points (see ``bounded``)."""
    series = bounded(series, max_points)
    out = {
        "version": FORMAT_VERSION,
        "series": [
            {
                "metric": metric,
                "labels": [list(pair) for pair in labels],
                "points": [[round(t, 3), _saved_value(v)] for t, v in points],
            }
            for metric, labels, points in series
        ],
    }
    return json.dumps(out, separators=(",", ":"), allow_nan=False).encode()


def _saved_value(v: float) -> float | str | None:
    """JSON has no NaN or infinities: NaN is saved as null, +-Inf as "+Inf" / "-Inf" (Prometheus's spelling)."""
    if math.isfinite(v):
        return v
    return None if math.isnan(v) else ("+Inf" if v > 0 else "-Inf")


def decode(data: bytes) -> list[tuple[str, Labels, Points]]:
    """The series of a saved history; ValueError saying what is wrong with it."""
    try:
        saved = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(saved, dict) or saved.get("version") != FORMAT_VERSION or not isinstance(saved.get("series"), list):
        raise ValueError(f"expected a version {FORMAT_VERSION} history object")
    out = []
    for i, entry in enumerate(saved["series"]):
        try:
            metric, labels, points = entry["metric"], entry["labels"], entry["points"]
            if not isinstance(metric, str) or not isinstance(labels, list) or not isinstance(points, list):
                raise TypeError
            frozen = freeze_labels(tuple((str(k), str(v)) for k, v in labels))
            values = [(float(t), math.nan if v is None else float(v)) for t, v in points]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"series {i} is not a metric, its labels and [time, value] points") from None
        out.append((metric, frozen, values))
    return out
