"""The agent's clock: wall-clock times for mails, monotonic durations for alerts.

The wall clock can be stepped at any moment (an NTP step, ``date -s``, a VM restored);
the monotonic clock only runs forward. The agent reads the wall clock, because mails,
logs and saved states speak in wall-clock times, and checks it against the monotonic
clock each time: when the difference between the two moved by ``STEP_TOLERANCE`` or
more since the last check, the wall clock was stepped, and ``WallClock.check`` says by
how much. The agent then moves every time it keeps by the step (``RuleEngine.shift``,
``Notifier.shift``, ``History.shift``) and moves its scheduled probe runs
(``reschedule``), so every duration keeps counting on the monotonic clock.

A slow drift (NTP slewing the clock by at most 0.5 ms a second) is followed, never
reported. A machine that was suspended reads as a step forward: the monotonic clock
does not count the time asleep.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

# A change of the wall clock against the monotonic one smaller than this is not a step.
STEP_TOLERANCE = 1.0


class WallClock:
    """The wall clock, checked against the monotonic clock for steps."""

    def __init__(
        self,
        tolerance: float = STEP_TOLERANCE,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tolerance = tolerance
        self._wall = wall
        self._monotonic = monotonic
        self.offset = self._offset()  # wall minus monotonic, at the last check
        self.stepped = 0.0  # the sum of the steps seen so far

    def _offset(self) -> float:
        """Wall minus monotonic, read so that a thread switch between the two reads does not count."""
        best: tuple[float, float] | None = None
        for _ in range(3):
            before = self._monotonic()
            wall = self._wall()
            after = self._monotonic()
            if best is None or after - before < best[0]:
                best = (after - before, wall - (before + after) / 2)
            if after - before < 0.001:
                break
        assert best is not None
        return best[1]

    def check(self) -> float:
        """How far the wall clock was stepped since the last check; 0.0 when it was not."""
        offset = self._offset()
        step = offset - self.offset
        self.offset = offset  # a drift below the tolerance is followed, never reported
        if abs(step) < self.tolerance:
            return 0.0
        self.stepped += step
        return step

    def now(self) -> float:
        return self._wall()


def describe(step: float) -> str:
    """ "−600 s", "+3600 s": the step as the warning line writes it."""
    sign = "+" if step > 0 else "\u2212"
    return f"{sign}{abs(step):.0f} s"


def reschedule(scheduler: Any, step: float) -> int:
    """Move the interval jobs of an APScheduler 3 ``scheduler`` after a step of the wall clock; how many moved.

    APScheduler 3 keeps its run times on the wall clock: after a step back of ten minutes
    an interval job would wait ten minutes more. Each interval job's next run is moved by
    the step, unless it is already within one interval of now (computed after the step);
    a run that would still fall outside is due at once. Jobs at wall-clock times (a daily
    heartbeat at 08:00) keep their time; the scheduler is woken up to wait for it anew.
    """
    from apscheduler.triggers.interval import IntervalTrigger

    now = dt.datetime.now(dt.UTC)
    moved = 0
    for job in scheduler.get_jobs():
        when = job.next_run_time
        if when is None or not isinstance(job.trigger, IntervalTrigger):
            continue
        interval = job.trigger.interval
        shifted = when + dt.timedelta(seconds=step)
        for candidate in (shifted, when):
            if now - interval <= candidate <= now + interval:
                break
        else:
            candidate = now
        if candidate != when:
            job.modify(next_run_time=candidate)
            moved += 1
    scheduler.wakeup()
    return moved
