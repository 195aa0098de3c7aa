"""What evaluating rules costs: time per tick for N series, and memory per series.

    python bench/rule_engine.py [--series 1000] [--ticks 300]

Four rules watch N series each tick (a plain threshold with hysteresis, a glob
matcher with `for`, a 5-minute average window, a 5-minute counter rate), as a
10-second probe interval would feed them. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
import tracemalloc

from alertmail.model import Sample
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import Rule

RULES = [
    Rule("plain", "gauge", above=90, clear=80, repeat=3600),
    Rule("glob", "gauge", labels={"disk": "sd*"}, above=95, for_=60),
    Rule("avg", "load", above=4, over=300, agg="avg"),
    Rule("rate", "bytes", above=1e6, over=300, agg="rate"),
]


def batches(series: int, ticks: int, interval: float):
    """Per tick: `series` samples spread over the three metrics, values that cross now and then."""
    rng = random.Random(1)
    counters = [0.0] * series
    labels = [{"disk": f"sd{i}"} if i % 2 else {"disk": f"nvme{i}"} for i in range(series)]
    for n in range(ticks):
        now = n * interval
        batch = []
        for i in range(series):
            kind = i % 3
            if kind == 0:
                batch.append(Sample("gauge", rng.uniform(70, 100), labels[i], now))
            elif kind == 1:
                batch.append(Sample("load", rng.uniform(0, 6), labels[i], now))
            else:
                counters[i] += rng.uniform(0, 2e7)
                batch.append(Sample("bytes", counters[i], labels[i], now))
        yield now, batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=300)
    args = parser.parse_args()

    feed = list(batches(args.series, args.ticks, 10.0))  # built first: sample creation is the probes' cost
    engine = RuleEngine(RULES)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    timings = []
    events = 0
    for now, batch in feed:
        start = time.perf_counter()
        events += len(engine.observe(batch, now)) + len(engine.tick(now))
        timings.append(time.perf_counter() - start)
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()

    # Time again without tracemalloc, which slows allocation down.
    engine = RuleEngine(RULES)
    timings = []
    for now, batch in feed:
        start = time.perf_counter()
        engine.observe(batch, now)
        engine.tick(now)
        timings.append(time.perf_counter() - start)
    steady = sorted(timings[len(timings) // 2 :])
    median = statistics.median(steady)
    print(f"series per tick      {args.series} ({len(engine.states(0))} rule/label states)")
    print(f"ticks                {args.ticks} at 10 s (windows of 300 s fill after 30)")
    print(f"events               {events}")
    print(f"tick, median         {median * 1000:.2f} ms  ({median / args.series * 1e6:.2f} us per series)")
    print(f"tick, p95            {steady[int(len(steady) * 0.95) - 1] * 1000:.2f} ms")
    print(f"memory held          {held / 1024:.0f} KiB  ({held / args.series:.0f} B per series, windows full)")


if __name__ == "__main__":
    main()
