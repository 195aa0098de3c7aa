"""Cost of the bundled probes on this machine.

    python bench/probe_cost.py [RUNS] [MINUTES]

1. Each probe is configured as the agent does, then collected RUNS times, 0.25 s apart
   (rate probes need a span); the figure is the time inside collect(), as `alertmail
   probe` reports it. The process probe watches one name and one command-line glob.
2. Ten minutes of the default schedule (every probe at its default interval, through
   run_probe as the agent calls it, so thread start and validation are counted), played
   back without the waits: the CPU seconds this process used, and that as a share of
   one core over ten minutes.
3. In the same run, next to it, ten minutes of the probes that read other programs: a
   real node_exporter (its default collectors and a textfile folder, on a loopback port)
   scraped every 10 s, and 20 Nagios plugins from monitoring-plugins run every minute.
   Each as a share of one core: the agent's own process, the plugins (children, reaped),
   and node_exporter answering the scrapes. Skipped with a note when those programs are
   missing (Debian: prometheus-node-exporter, monitoring-plugins-basic).

MINUTES (default 10) shortens parts 2 and 3, for a smoke run; the figures quoted are of 10.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from alertmail.config.schema import typed
from alertmail.loader import load_plugins
from alertmail.probes.runner import configure_probe, run_probe

OPTIONS = {"process": {"watch": [{"name": "python", "match": "python*"}, {"name": "sh", "cmdline": "*sh*"}]}}


def configure(name: str, probe: object, **table: object) -> None:
    """``probe`` configured as the agent does, its own keys given by ``table``."""
    problems = configure_probe(name, probe, typed(getattr(probe, "options", None), table))
    assert not problems, problems


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    minutes = float(sys.argv[2]) if len(sys.argv) > 2 else 10
    # The probes the agent runs without a table of theirs; nagios and scrape are part 3.
    probes = {n: p for n, p in load_plugins().probes.items() if not getattr(p, "configured_only", False)}
    for name, probe in probes.items():
        configure(name, probe, **OPTIONS.get(name, {}))
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
    for name, probe in defaults.items():
        configure(name, probe)
    schedule(defaults, "default config", minutes)
    schedule(probes, "with the process watches above", minutes)
    ecosystem(minutes)


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


PLUGINS = Path("/usr/lib/nagios/plugins")


def nagios_checks(port: int) -> list[dict]:
    """20 checks a host might run: local state, and TCP/HTTP-ish ones against node_exporter's port."""
    base = [
        ["check_load", "-w", "100,100,100", "-c", "200,200,200"],
        ["check_disk", "-w", "5%", "-c", "2%", "-p", "/"],
        ["check_procs", "-w", "2000", "-c", "5000"],
        ["check_procs", "-s", "Z", "-w", "5", "-c", "20"],
        ["check_users", "-w", "50", "-c", "100"],
        ["check_swap", "-w", "0%", "-c", "0%"],
        ["check_tcp", "-H", "127.0.0.1", "-p", str(port)],
        ["check_http", "-H", "127.0.0.1", "-p", str(port), "-u", "/"],
        ["check_dummy", "0", "fine"],
        ["check_file_age", "-w", "999999", "-c", "9999999", "-f", "/etc/hostname"],
    ]
    checks = []
    for i in range(20):
        argv = base[i % len(base)]
        checks.append({"name": f"c{i}", "command": [str(PLUGINS / argv[0]), *argv[1:]], "timeout": "10s"})
    return checks


def ecosystem(minutes: float = 10) -> None:
    """The scrape and nagios probes' cost over ``minutes`` of their schedule, played back without the waits."""
    binary = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if binary is None or not (PLUGINS / "check_load").exists():
        print("\nnode_exporter or the Nagios plugins are not installed: no figures for the scrape and nagios probes")
        return
    import psutil

    from alertmail.plugins.probes.nagios import NagiosProbe
    from alertmail.plugins.probes.scrape import ScrapeProbe

    with tempfile.TemporaryDirectory() as folder, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        (Path(folder) / "bench.prom").write_text("# TYPE bench_value gauge\nbench_value 1\n")
        exporter = subprocess.Popen(
            [binary, f"--web.listen-address=127.0.0.1:{port}", f"--collector.textfile.directory={folder}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            scrape, nagios = ScrapeProbe(), NagiosProbe()
            configure("scrape", scrape, targets=[{"name": "node", "url": f"http://127.0.0.1:{port}/metrics"}])
            configure("nagios", nagios, checks=nagios_checks(port))
            node = psutil.Process(exporter.pid)

            async def play() -> tuple[int, int, int]:
                series = samples = 0
                runs = 0
                for tick in range(int(minutes * 6)):  # one tick is 10 s of the schedule
                    due = [scrape] + ([nagios] if tick % 6 == 0 else [])
                    done = await asyncio.gather(*(run_probe(p, 60.0) for p in due))
                    for run in done:
                        assert run.ok, run.error
                        samples += len(run.samples)
                        runs += 1
                    series = max(series, int(next(x.value for x in done[0].samples if x.metric == "scrape.series")))
                    await asyncio.sleep(0.21)
                return runs, series, samples

            own0, kids0, node0 = time.process_time(), os.times(), node.cpu_times()
            runs, series, samples = asyncio.run(play())
            own, kids, node1 = time.process_time() - own0, os.times(), node.cpu_times()
            plugins = (kids.children_user - kids0.children_user) + (kids.children_system - kids0.children_system)
            served = (node1.user - node0.user) + (node1.system - node0.system)
        finally:
            exporter.terminate()
            exporter.wait(10)
    span = minutes * 60
    print(
        f"\n{minutes:g} min of node_exporter scraped every 10 s ({series} series) and 20 Nagios checks every minute:"
        f" {runs} probe runs, {samples} samples"
    )
    print(f"{'':<34} {'CPU s':>8} {'% of one core':>14}")
    for label, used in (
        ("alertmail (scrape + nagios probes)", own),
        ("the Nagios plugins (children)", plugins),
        ("node_exporter answering", served),
        ("all of it", own + plugins + served),
    ):
        print(f"{label:<34} {used:>8.3f} {100 * used / span:>14.3f}")
    print("(the idle agent's own share is the 'default config' line above)")


if __name__ == "__main__":
    main()
