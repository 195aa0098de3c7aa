"""Cost of the bundled probes on this machine.

    python bench/probe_cost.py [RUNS]

1. Each probe is configured as the agent does, then collected RUNS times, 0.25 s apart
   (rate probes need a span); the figure is the time inside collect(), as `alertmail
   probe` reports it. The process probe watches one name and one command-line glob.
2. Ten minutes of the default schedule (every probe at its default interval, through
   run_probe as the agent calls it, so thread start and validation are counted), played
   back without the waits: the CPU seconds this process used, and that as a share of
   one core over ten minutes.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import psutil

from alertmail.loader import load_plugins
from alertmail.probes.runner import run_probe

OPTIONS = {"process": {"watch": [{"name": "python", "match": "python*"}, {"name": "sh", "cmdline": "*sh*"}]}}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    # The probes the agent runs without a table of theirs; nagios and scrape are part 3.
    probes = {n: p for n, p in load_plugins().probes.items() if not getattr(p, "configured_only", False)}
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
    defaults = {n: p for n, p in load_plugins().probes.items() if not getattr(p, "configured_only", False)}  # no watches
    for probe in defaults.values():
        if getattr(probe, "configure", None):
            probe.configure({})
    schedule(defaults, "default config")
    schedule(probes, "with the process watches above")


def schedule(probes: dict, label: str, minutes: float = 10, default_interval: float = 10.0) -> None:
    """Play back ``minutes`` of the default schedule; print the CPU it took."""

    async def play() -> int:
        runs = 0
        for tick in range(int(minutes * 60 / default_interval)):
            due = {
                name: probe
                for name, probe in probes.items()
                if tick % max(1, round((getattr(probe, "interval", None) or default_interval) / default_interval)) == 0
            }
            results = await asyncio.gather(*(run_probe(p, 5.0) for p in due.values()))
            runs += len(results)
            await asyncio.sleep(0.21)  # rate probes need a usable span; sleeping costs no CPU
        return runs

    start = time.process_time()
    runs = asyncio.run(play())
    used = time.process_time() - start
    print(
        f"\n{minutes:g} min of the default schedule, {label}: {runs} probe runs, {used:.3f} CPU s "
        f"= {100 * used / (minutes * 60):.3f} % of one core"
    )


if __name__ == "__main__":
    main()
