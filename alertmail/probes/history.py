"""Recent samples of the series that rules watch, for charts in alert mails.

Bounded: at most ``window`` seconds and ``max_points`` points per series, and only
series some rule matches are kept, so memory does not grow with what probes emit.
A series that stops reporting is dropped by ``forget_idle`` once its newest point is
older than the window; the agent calls it from its tick.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from alertmail.model import Labels, Sample


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

    def __len__(self) -> int:
        return len(self._series)
