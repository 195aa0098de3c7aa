#!/usr/bin/env python3
"""From the sample that crosses a threshold to the mail accepted by an SMTP server: p50 and p95.

    python bench/alert_latency.py [--crossings 20] [--modes in-process,off]

Runs ``alertmail run`` on the repository's config.toml, changed only where a benchmark
must: probes every 1 s, a gauge probe plugin this script moves, one rule per crossing on
its gauge (``above = 50``, each mailing its own recipient, so every crossing is the first
alert its recipient gets, as a new incident's is), and the smtp transport to Postfix's
smtp-sink on loopback. ``group_wait`` (30 s, on the leading edge), the storm cap and
the rest stay as shipped.

For each crossing the gauge records when it took the first sample above the threshold
(the deciding sample); smtp-sink writes each message to its own file, whose modification
time is when the message was accepted. Once per ``[mail].charts`` mode. The figure to
compare against is the probe interval: the rule cannot decide before its next sample.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import tomli_w

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers import SmtpSink  # noqa: E402

THRESHOLD = 50
LOW, HIGH = 10.0, 90.0

GAUGE = """
import json, os, time
from pathlib import Path
from alertmail import MetricInfo, Sample, hookimpl

HERE = Path(__file__).parent
VALUES, CROSSED = HERE / "values.json", HERE / "crossed.log"

class Gauge:
    name = "gauge"
    interval = 1.0
    metrics = (MetricInfo("bench.gauge", "percent", "a value the benchmark moves", ("n",)),)

    def __init__(self):
        self.high = set()

    def collect(self):
        values = json.loads(VALUES.read_text())
        taken = time.time()
        for n, value in enumerate(values):
            if value > {threshold} and n not in self.high:
                with open(CROSSED, "a") as log:  # the deciding sample of crossing n
                    log.write(f"{{n}} {{taken!r}}\\n")
            (self.high.add if value > {threshold} else self.high.discard)(n)
            yield Sample("bench.gauge", value, {{"n": str(n)}}, timestamp=taken)

@hookimpl
def register_probes(register):
    register(Gauge())
"""


def write_values(folder: Path, values: list[float]) -> None:
    tmp = folder / "values.json.tmp"
    tmp.write_text(json.dumps(values))
    os.replace(tmp, folder / "values.json")


def config(folder: Path, sink: SmtpSink, crossings: int, charts: str) -> Path:
    """The shipped config.toml with the benchmark's probe, rules and mail server."""
    cfg = tomllib.loads((ROOT / "config.toml").read_text())
    cfg["agent"].update(state_dir=str(folder / "var"), interval="1s", plugin_dirs=[str(folder / "plugins.d")])
    cfg["mail"].update(route=["smtp"], charts=charts)
    cfg.setdefault("transports", {})["smtp"] = {"servers": [sink.address], "tls": "none"}
    cfg["rules"] = [
        *cfg.get("rules", []),
        *(
            {
                "name": f"gauge-{n}",
                "metric": "bench.gauge",
                "labels": {"n": str(n)},
                "above": THRESHOLD,
                "to": [f"ops{n}@example.test"],
            }
            for n in range(crossings)
        ),
    ]
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(cfg))
    return path


def accepted(sink: SmtpSink) -> dict[int, tuple[float, bool]]:
    """For each crossing, when its first firing mail was accepted and whether it carried a chart."""
    found: dict[int, tuple[float, bool]] = {}
    for path in sorted(sink.folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        rcpts = [str(v).split(" ")[0].strip("<>") for v in msg.get_all("X-Rcpt-Args") or []]
        for rcpt in rcpts:
            if rcpt.startswith("ops") and "RESOLVED" not in str(msg["Subject"]):
                n = int(rcpt[3:].split("@")[0])
                charted = any(p.get_content_type() == "image/png" for p in msg.walk())
                found.setdefault(n, (path.stat().st_mtime_ns / 1e9, charted))
    return found


def run(charts: str, crossings: int, base: Path) -> tuple[list[float], list[float], int]:
    """Per crossing, seconds from the deciding sample and from the gauge's change to the mail; how many had a chart."""
    folder = base / charts
    plugins = folder / "plugins.d"
    plugins.mkdir(parents=True)
    (plugins / "gauge.py").write_text(GAUGE.format(threshold=THRESHOLD))
    values = [LOW] * crossings
    changed: list[float] = []
    write_values(plugins, values)
    sink = SmtpSink(base / f"sink-{charts}").start()
    log = open(folder / "agent.log", "w")  # noqa: SIM115 - open for the agent's whole run
    agent = subprocess.Popen(
        [sys.executable, "-m", "alertmail", "run", "--config", str(config(folder, sink, crossings, charts))],
        cwd=folder,
        stderr=log,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while "watching" not in (folder / "agent.log").read_text():
            if agent.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the agent did not start:\n{(folder / 'agent.log').read_text()[-3000:]}")
            time.sleep(0.1)
        time.sleep(5)  # some history for the charts
        for n in range(crossings):
            time.sleep(random.uniform(0.5, 1.5))  # cross at any point of the probe's second
            values[n] = HIGH
            changed.append(time.time())
            write_values(plugins, values)
            deadline = time.monotonic() + 30
            while n not in accepted(sink):
                if time.monotonic() > deadline:
                    raise SystemExit(f"crossing {n}: no mail within 30 s\n{(folder / 'agent.log').read_text()[-3000:]}")
                time.sleep(0.05)
            values[n] = LOW
            write_values(plugins, values)
            print(f"\r  charts {charts}: {n + 1}/{crossings}", end="", file=sys.stderr)
        print(file=sys.stderr)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(30)
        log.close()
        sink.stop()
    crossed: dict[int, float] = {}
    for line in (plugins / "crossed.log").read_text().splitlines():
        n, at = line.split()
        crossed.setdefault(int(n), float(at))
    mails = accepted(sink)
    return (
        [mails[n][0] - crossed[n] for n in range(crossings)],
        [mails[n][0] - changed[n] for n in range(crossings)],
        sum(charted for _, charted in mails.values()),
    )


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--crossings", type=int, default=20)
    parser.add_argument("--modes", default="in-process,subprocess,off", help="[mail].charts values to measure, comma-separated")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="alert-latency-") as tmp:
        for charts in args.modes.split(","):
            rows.append((charts, *run(charts, args.crossings, Path(tmp))))
    print(f"{args.crossings} threshold crossings, probe interval 1 s, default config otherwise; mail accepted by smtp-sink")
    print(f"{'':<12}{'deciding sample -> mail':^36}{'gauge changed -> mail':^20}")
    print(f"{'charts':<12}{'p50':>9}{'p95':>9}{'min':>9}{'max':>9}{'p50':>10}{'p95':>9}{'with a chart':>15}")
    for charts, latencies, perceived, charted in rows:
        print(
            f"{charts:<12}{percentile(latencies, 50) * 1000:>6.0f} ms{percentile(latencies, 95) * 1000:>6.0f} ms"
            f"{min(latencies) * 1000:>6.0f} ms{max(latencies) * 1000:>6.0f} ms"
            f"{percentile(perceived, 50) * 1000:>7.0f} ms{percentile(perceived, 95) * 1000:>6.0f} ms"
            f"{charted:>12}/{len(latencies)}"
        )
    if len(rows) > 1 and statistics.median(rows[-1][1]):
        ratio = statistics.median(rows[0][1]) / statistics.median(rows[-1][1])
        print(f"p50 with charts {rows[0][0]} / charts {rows[-1][0]}: {ratio:.2f}x")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
