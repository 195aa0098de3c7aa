"""Cost of one run of each bundled probe on this machine (median and max of N runs).

    python bench/probe_cost.py [RUNS]

Each probe is configured as the agent does, then collected RUNS times, 0.25 s apart
(rate probes need a span); the figure is the time inside collect(), as `alertmail probe`
reports it. The process probe watches one name and one command-line glob.
"""

from __future__ import annotations

import statistics
import sys
import time

import psutil

from alertmail.loader import load_plugins

OPTIONS = {"process": {"watch": [{"name": "python", "match": "python*"}, {"name": "sh", "cmdline": "*sh*"}]}}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    probes = load_plugins().probes
    for name, probe in probes.items():
        configure = getattr(probe, "configure", None)
        if configure:
            configure(OPTIONS.get(name, {}))
    times: dict[str, list[float]] = {name: [] for name in probes}
    counts: dict[str, int] = {}
    for _ in range(runs):
        time.sleep(0.25)
        for name, probe in probes.items():
            start = time.perf_counter()
            samples = list(probe.collect())
            times[name].append(time.perf_counter() - start)
            counts[name] = len(samples)
    print(f"{len(psutil.pids())} processes, {psutil.cpu_count()} CPUs, {runs} runs each")
    print(f"{'probe':<10} {'samples':>7} {'median ms':>10} {'max ms':>8}")
    total = 0.0
    for name, values in times.items():
        median = statistics.median(values) * 1000
        total += median
        print(f"{name:<10} {counts[name]:>7} {median:>10.3f} {max(values) * 1000:>8.3f}")
    print(f"{'all':<10} {sum(counts.values()):>7} {total:>10.3f}")


if __name__ == "__main__":
    main()
