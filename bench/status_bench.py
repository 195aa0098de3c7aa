#!/usr/bin/env python3
"""How long ``alertmail status`` takes with many series firing: p50, p95 and the largest.

    python bench/status_bench.py [--series 1000] [--asks 50]

Runs ``alertmail run`` with a gauge probe plugin that reports ``--series`` series of
``bench.gauge`` (label ``n``), all above the one rule's threshold, and the pickup transport.
Once every series fires, it asks the agent ``--asks`` times over its control socket
(``alertmail.control.ask``: connect, request, the whole JSON answer read and parsed) and
then runs the ``alertmail status --json`` command a few times (which adds Python's start).
With ``--page``, the ``[exporter]`` is on and the status page (``GET /``, charts of the first
10 alerts included) is fetched ``--asks`` times too. With ``--login``, the exporter asks for a
Basic login (``web_config``: one user, a bcrypt hash of cost 10), and ``/metrics`` is scraped
``--asks`` times with it: the first scrape pays the bcrypt check, the others find the login
remembered.
The figure to hold against is 100 ms for the socket answer with 1,000 series firing.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from alertmail.control import NoAgent, ask  # noqa: E402

GAUGE = """
from alertmail import MetricInfo, Sample, hookimpl

class Gauge:
    name = "gauge"
    interval = 1.0
    metrics = (MetricInfo("bench.gauge", "percent", "a value the benchmark holds high", ("n",)),)

    def collect(self):
        for n in range({series}):
            yield Sample("bench.gauge", 90.0, {{"n": str(n)}})

@hookimpl
def register_probes(register):
    register(Gauge())
"""

CONFIG = """
[agent]
state_dir = "var"
interval = "1s"
resolution = "1s"
plugin_dirs = ["plugins.d"]

[mail]
from = "alertmail@bench.test"
to = ["ops@bench.test"]
route = ["pickup"]

[[rules]]
name = "gauge-high"
metric = "bench.gauge"
above = 50
"""


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def timed_gets(url: str, headers: dict[str, str], count: int) -> tuple[list[float], bytes]:
    """GET ``url`` ``count`` times, one after another: each one's time in ms, and the last body."""
    import urllib.request

    took, body = [], b""
    for _ in range(count):
        start = time.perf_counter()
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as reply:
            body = reply.read()
        took.append((time.perf_counter() - start) * 1000)
    return took, body


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1000, help="series firing (default 1000)")
    parser.add_argument("--asks", type=int, default=50, help="status requests over the socket (default 50)")
    parser.add_argument("--commands", type=int, default=3, help="runs of the alertmail status command (default 3)")
    parser.add_argument("--page", action="store_true", help="also time the status page on the exporter's server")
    parser.add_argument("--login", action="store_true", help="the exporter asks for a Basic login; time /metrics with it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="status-bench-") as tmp:
        folder = Path(tmp)
        (folder / "plugins.d").mkdir()
        (folder / "plugins.d" / "gauge.py").write_text(GAUGE.format(series=args.series))
        config = folder / "config.toml"
        text = textwrap.dedent(CONFIG)
        headers = {}
        if args.page or args.login:
            from tests.peers import free_port

            port = free_port()
            text += f'\n[exporter]\nlisten = "127.0.0.1:{port}"\n'
        if args.login:
            import base64

            import bcrypt

            hashed = bcrypt.hashpw(b"bench-password", bcrypt.gensalt(10)).decode()
            (folder / "web.yml").write_text(f"basic_auth_users:\n  bench: {hashed}\n")
            text += 'web_config = "web.yml"\n'
            headers["Authorization"] = "Basic " + base64.b64encode(b"bench:bench-password").decode()
        config.write_text(text)
        log = folder / "stderr"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as err:
            agent = subprocess.Popen(
                [sys.executable, "-m", "alertmail", "run", "-c", str(config)], cwd=folder, stderr=err, env=env
            )
        try:
            deadline = time.monotonic() + 120
            firing = 0
            while firing < args.series:
                if agent.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(), file=sys.stderr)
                    print(f"the agent never had {args.series} series firing (last seen: {firing})", file=sys.stderr)
                    return 1
                try:
                    answer = ask(folder / "var")
                    firing = sum(1 for a in answer["alerts"] if a["state"] == "firing")
                except NoAgent:
                    pass
                time.sleep(0.5)

            times = []
            size = 0
            for _ in range(args.asks):
                start = time.perf_counter()
                answer = ask(folder / "var")
                times.append(time.perf_counter() - start)
                size = len(answer["alerts"])
            ms = [t * 1000 for t in times]
            print(f"{args.series} series firing; {size} alerts in each answer")
            print(
                f"socket answer ({args.asks} asks): p50 {statistics.median(ms):.1f} ms, "
                f"p95 {percentile(ms, 0.95):.1f} ms, max {max(ms):.1f} ms"
            )
            if args.login:
                scrape_ms, _ = timed_gets(f"http://127.0.0.1:{port}/metrics", headers, args.asks)
                rest = scrape_ms[1:] or scrape_ms
                print(
                    f"/metrics with a Basic login ({args.asks} scrapes): the first {scrape_ms[0]:.0f} ms (bcrypt, cost 10), "
                    f"then p50 {statistics.median(rest):.1f} ms, p95 {percentile(rest, 0.95):.1f} ms (remembered)"
                )
            if args.page:
                page_ms, body = timed_gets(f"http://127.0.0.1:{port}/", headers, args.asks)
                print(
                    f"status page ({args.asks} GETs, {len(body) // 1024} KiB): p50 {statistics.median(page_ms):.0f} ms, "
                    f"p95 {percentile(page_ms, 0.95):.0f} ms"
                )
            command = []
            for _ in range(args.commands):
                start = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, "-m", "alertmail", "status", "--json", "-c", str(config)],
                    capture_output=True,
                    env=env,
                    timeout=60,
                )
                command.append((time.perf_counter() - start) * 1000)
                if done.returncode != 0:
                    print(done.stderr.decode(), file=sys.stderr)
                    return 1
            if command:
                median = statistics.median(command)
                print(f"alertmail status --json ({args.commands} runs, with Python's start): median {median:.0f} ms")
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
