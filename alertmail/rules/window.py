"""Sliding time windows for `over` + `agg` rules, with memory bounded per series.

A window of span S keeps its samples in buckets of width S / WINDOW_BUCKETS. Sparse
samples (the usual case: a 10 s probe and a 5 min window) get a bucket each, so the
aggregate is exact; dense samples are folded into their bucket (count, sum, min, max,
first and last), so a series never holds more than ``WINDOW_BUCKETS + 1`` buckets,
however fast it reports. The price is that the oldest bucket may reach up to one
bucket width past the window's start.

Time is the samples' own: at the newest sample's timestamp t the window is (t - span, t].

Coverage: a window decides only once its samples span at least ``min_coverage`` of it,
counted from the first sample after the series began (or came back from a gap at
least as long as the window, which leaves nothing in it). Until then ``value`` says
None ("not enough to say"): a fresh or restarted series does not fire on two samples.

Infinities (docs/rules.md, "NaN and infinities"): the caller keeps NaN out; +Inf and -Inf
are values. ``max``, ``min`` and ``last`` carry them as they are; ``avg`` is +Inf (-Inf)
while the window holds a +Inf (-Inf) and undecided (None) while it holds both; ``rate`` is
undecided while the window holds either (a counter has no infinite reading), and an
infinite sample is not a counter value: the next finite one counts from the last finite
one. Infinities are counted apart from the running sum, so one that leaves the window
leaves no trace in the aggregate.
"""

from __future__ import annotations

import math

WINDOW_BUCKETS = 60
AGGREGATES = ("avg", "min", "max", "last", "rate")


class _Bucket:
    __slots__ = (
        "count",
        "first_delta",
        "first_ts",
        "high",
        "increase",
        "last",
        "last_ts",
        "low",
        "neg",
        "pos",
        "start",
        "total",
    )

    def reset(self, start: float, ts: float, value: float, delta: float) -> _Bucket:
        self.start = start
        self.first_ts = self.last_ts = ts
        self.count = 1
        self.low = self.high = self.last = value
        finite = math.isfinite(value)
        self.total = value if finite else 0.0  # finite values only: an infinity is counted in pos / neg
        self.pos = int(value == math.inf)
        self.neg = int(value == -math.inf)
        self.increase = self.first_delta = delta
        return self


class Window:
    """The samples of one series over the last ``span`` seconds, aggregated on demand."""

    __slots__ = (
        "_evicted",
        "_spare",
        "buckets",
        "count",
        "increase",
        "min_coverage",
        "neg",
        "pos",
        "previous",
        "since",
        "span",
        "total",
        "width",
    )

    def __init__(self, span: float, buckets: int = WINDOW_BUCKETS, *, min_coverage: float = 0.0) -> None:
        if span <= 0:
            raise ValueError("a window needs a positive span")
        if not 0 <= min_coverage <= 1:
            raise ValueError(f"min_coverage is a fraction of the window, 0 to 1; got {min_coverage}")
        self.span = float(span)
        self.min_coverage = float(min_coverage)
        self.since: float | None = None  # the first sample of the series' current unbroken run
        self.width = self.span / buckets
        self.buckets: list[_Bucket] = []
        self.previous: float | None = None  # last value seen, for counter deltas across evictions
        # Running sums make avg and rate O(1); they are recomputed now and then so
        # subtracting evicted buckets cannot let rounding error pile up.
        self.count = 0
        self.total = 0.0  # of the finite values
        self.pos = 0  # how many +Inf the window holds
        self.neg = 0  # how many -Inf
        self.increase = 0.0
        self._spare: _Bucket | None = None  # an evicted bucket, reused to spare an allocation
        self._evicted = 0

    def __len__(self) -> int:
        return len(self.buckets)

    def add(self, ts: float, value: float) -> None:
        """Fold one sample in and drop what fell out of the window."""
        finite = math.isfinite(value)
        # A counter that went down was reset (restart, wrap): it counted `value` since.
        if self.previous is None or not finite:
            delta = 0.0  # an infinity is no counter reading: the next finite value counts from the last one
        elif value >= self.previous:
            delta = value - self.previous
        else:
            delta = value
        if finite:
            self.previous = value
        if self.buckets and ts < self.buckets[-1].last_ts - self.span:
            # The clock went back further than the window: what it holds is no longer "recent".
            self.buckets.clear()
            self.count, self.total, self.increase, self.pos, self.neg = 0, 0.0, 0.0, 0, 0
            delta = 0.0
        if not self.buckets or ts - self.buckets[-1].last_ts >= self.span or self.since is None:
            # A gap as long as the window leaves nothing of before in it: coverage starts again.
            self.since = ts
        elif ts < self.since:
            self.since = ts
        pos, neg = int(value == math.inf), int(value == -math.inf)
        self.count += 1
        self.total += value if finite else 0.0
        self.pos += pos
        self.neg += neg
        self.increase += delta
        buckets = self.buckets
        if buckets and ts < buckets[-1].start + self.width:
            # Same bucket, or a late sample: fold it into the newest bucket.
            b = buckets[-1]
            b.count += 1
            b.total += value if finite else 0.0
            b.pos += pos
            b.neg += neg
            b.low = min(b.low, value)
            b.high = max(b.high, value)
            if ts >= b.last_ts:
                b.last_ts = ts
                b.last = value
            b.increase += delta
        else:
            bucket = self._spare or _Bucket()
            self._spare = None
            buckets.append(bucket.reset(math.floor(ts / self.width) * self.width, ts, value, delta))
        horizon = buckets[-1].last_ts - self.span
        drop = 0
        while drop < len(buckets) - 1 and buckets[drop].last_ts <= horizon:
            drop += 1
        if drop:
            for b in buckets[:drop]:
                self.count -= b.count
                self.total -= b.total
                self.pos -= b.pos
                self.neg -= b.neg
                self.increase -= b.increase
            self._spare = buckets[drop - 1]
            del buckets[:drop]
            self._evicted += drop
            if self._evicted >= len(buckets):
                self._evicted = 0
                self.count = sum(b.count for b in buckets)
                self.total = math.fsum(b.total for b in buckets)
                self.increase = math.fsum(b.increase for b in buckets)

    def shift(self, delta: float) -> None:
        """Move every stored time by ``delta`` seconds (the wall clock was stepped); the aggregates stay."""
        if self.since is not None:
            self.since += delta
        for b in self.buckets:
            b.start += delta
            b.first_ts += delta
            b.last_ts += delta

    @property
    def covered(self) -> float:
        """Seconds of the window the samples span, counted from the start of the series' unbroken run."""
        if not self.buckets or self.since is None:
            return 0.0
        return min(self.buckets[-1].last_ts - self.since, self.span)

    def value(self, agg: str) -> float | None:
        """The aggregate over the window; None when there is not enough to say: the samples span
        less than ``min_coverage`` of the window, or a rate has a single sample."""
        buckets = self.buckets
        if not buckets or self.covered < self.min_coverage * self.span:
            return None
        if agg == "last":
            return buckets[-1].last
        if agg == "avg":
            if self.pos or self.neg:
                # +Inf and -Inf together have no mean: undecided, as NaN.
                return None if self.pos and self.neg else (math.inf if self.pos else -math.inf)
            # The running sum keeps the rounding of values that left the window: after a
            # large one, a window of zeros could average -2e-12 and fire a `below = 0` rule.
            # A mean never lies outside its values.
            mean = self.total / self.count
            return min(max(mean, min(b.low for b in buckets)), max(b.high for b in buckets))
        if agg == "min":
            return min(b.low for b in buckets)
        if agg == "max":
            return max(b.high for b in buckets)
        if agg == "rate":
            if self.pos or self.neg:
                return None  # a counter has no infinite reading
            elapsed = buckets[-1].last_ts - buckets[0].first_ts
            if elapsed <= 0:
                return None
            # The first sample's delta came from before the window.
            return (self.increase - buckets[0].first_delta) / elapsed
        raise ValueError(f"unknown aggregate {agg!r}; expected one of {', '.join(AGGREGATES)}")
