"""Flap detection as Nagios Core's ``flapping.c`` does it: weighted percent state change over 21 evaluations.

Each recorded evaluation is one bit, "firing or not". The 20 transitions between the 21
newest bits are weighted linearly from 0.75 (oldest) to 1.25 (newest), so a recent
change counts more than an old one; the weighted number of changes, as a percent of
the 20 possible, is the "percent state change". The sum is taken oldest first with
Nagios's own expression, so the figure is the very number Nagios computes, to the last
bit. A series starts flapping when it reaches the high threshold (``>=``, 20 % by
default) and stops when it falls to the low one (``<=``, 5 %): the gap between the two
keeps it from flapping about flapping.

Like Nagios, the history starts as 21 ok evaluations, which also makes a quiet series
and a fresh one the same, so a snapshot can leave quiet series out and a restart
changes nothing. Which evaluations are recorded is the engine's business: as Nagios
records hard states and recoveries but not soft problem states, the engine records
every evaluation except those of a pending alert (condition met, ``for`` not yet over).

One difference remains: Nagios records the state itself (OK, WARNING, CRITICAL), so a
warning turning critical counts as a change there; here only firing or not counts.
"""

from __future__ import annotations

HISTORY = 21  # MAX_STATE_HISTORY_ENTRIES
LOW_WEIGHT = 0.75  # low_curve_value
HIGH_WEIGHT = 1.25  # high_curve_value
START_PERCENT = 20.0  # high_service_flap_threshold: flapping from this percent on (>=)
STOP_PERCENT = 5.0  # low_service_flap_threshold: no longer flapping at or below it (<=)

_TRANSITIONS = HISTORY - 1
# _WEIGHTS[x - 1] weighs the x-th transition counted from the oldest, as flapping.c computes it.
_WEIGHTS = tuple(((x - 1) * (HIGH_WEIGHT - LOW_WEIGHT)) / (HISTORY - 2) + LOW_WEIGHT for x in range(1, HISTORY))
_MASK = (1 << HISTORY) - 1


class FlapHistory:
    """The last 21 recorded evaluations of one series as bits (newest in bit 0): 16 bytes of state, not a list.

    ``count`` says how many were recorded (at most 21); the others count as ok, as the
    history Nagios starts with.
    """

    __slots__ = ("bits", "count")

    def __init__(self, bits: int = 0, count: int = HISTORY) -> None:
        self.bits = bits & _MASK
        self.count = min(max(count, 0), HISTORY)

    def record(self, firing: bool) -> None:
        self.bits = ((self.bits << 1) | int(firing)) & _MASK
        if self.count < HISTORY:
            self.count += 1

    def percent(self) -> float:
        """Weighted percent state change over the history (0-100), as Nagios computes it."""
        changes = (self.bits ^ (self.bits >> 1)) & ((1 << _TRANSITIONS) - 1)
        if not changes:
            return 0.0
        curved = 0.0
        for x in range(1, HISTORY):  # oldest transition first: the order of Nagios's sum
            if changes >> (_TRANSITIONS - x) & 1:
                curved += _WEIGHTS[x - 1]
        return curved * 100.0 / _TRANSITIONS

    def states(self) -> list[bool]:
        """The recorded evaluations, oldest first (for tests and snapshots)."""
        return [bool(self.bits >> i & 1) for i in range(self.count - 1, -1, -1)]
