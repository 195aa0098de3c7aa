"""Flap detection as Nagios does it: weighted percent state change over the last 21 evaluations.

Each evaluation records one bit, "firing or not". The 20 transitions between the 21
newest bits are weighted linearly from 0.8 (oldest) to 1.2 (newest), so a recent
change counts more than an old one; the weighted number of changes, as a percent of
the 20 possible, is the "percent state change". A series starts flapping above 20 %
and stops below 5 % (the gap between the two keeps it from flapping about flapping).

A new series starts with a history of ok evaluations, as Nagios seeds it with the
current state; that also makes a quiet series and a fresh one the same, so a snapshot
can leave quiet series out and a restart changes nothing.
"""

from __future__ import annotations

HISTORY = 21
LOW_WEIGHT = 0.8
HIGH_WEIGHT = 1.2
START_PERCENT = 20.0
STOP_PERCENT = 5.0

_TRANSITIONS = HISTORY - 1
# _WEIGHTS[j] weighs the transition j steps back from the newest one.
_WEIGHTS = tuple(HIGH_WEIGHT - (HIGH_WEIGHT - LOW_WEIGHT) * j / (_TRANSITIONS - 1) for j in range(_TRANSITIONS))
_MASK = (1 << HISTORY) - 1


class FlapHistory:
    """The last 21 evaluations of one series as bits (newest in bit 0): 16 bytes of state, not a list."""

    __slots__ = ("bits", "count")

    def __init__(self, bits: int = 0, count: int = HISTORY) -> None:
        self.bits = bits & _MASK
        self.count = min(max(count, 0), HISTORY)

    def record(self, firing: bool) -> None:
        self.bits = ((self.bits << 1) | int(firing)) & _MASK
        if self.count < HISTORY:
            self.count += 1

    def percent(self) -> float:
        """Weighted percent state change over the recorded evaluations (0-100)."""
        if self.count < 2:
            return 0.0
        changes = (self.bits ^ (self.bits >> 1)) & ((1 << (self.count - 1)) - 1)
        total = 0.0
        j = 0
        while changes:
            if changes & 1:
                total += _WEIGHTS[j]
            changes >>= 1
            j += 1
        return total * 100.0 / _TRANSITIONS

    def states(self) -> list[bool]:
        """The recorded evaluations, oldest first (for tests and snapshots)."""
        return [bool(self.bits >> i & 1) for i in range(self.count - 1, -1, -1)]
