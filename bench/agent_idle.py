#!/usr/bin/env python3
"""Idle cost of `alertmail run` on the default config: RSS and CPU time.

Starts the agent on a copy of the repository's config.toml in a temporary folder,
lets it run for --seconds (default 600, the figure the README quotes), and prints
its RSS and the CPU seconds it used, next to a bare Python interpreter that only
sleeps and one that has imported only the libraries the agent runs on (asyncio,
APScheduler, click, psutil, pluggy, ...): the same interpreter, measured in the same run.
The difference between that one and the agent is alertmail's own share.

    python bench/agent_idle.py --seconds 600
    python bench/agent_idle.py --quick          # 30 s smoke run
    python bench/agent_idle.py --exporter       # also the agent with [exporter] on, scraped every 15 s
    python bench/agent_idle.py --after-mail     # also agents that have sent one alert over STARTTLS (chart in
                                                # process, and in a child: [mail] charts = "subprocess")
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.certs, for the --after-mail sink's certificate

# What `alertmail run` cannot do without, whatever alertmail's own code does: the event loop
# (imported, as the agent does, without ssl: alertmail.deferssl), the scheduler (which imports
# importlib.metadata and multiprocessing), the command line, the probes' psutil, the plugin
# manager, the config and state formats.
DEPENDENCIES = (
    "import sys; sys.modules['ssl'] = None; import asyncio; del sys.modules['ssl'];"
    " import apscheduler.schedulers.asyncio, apscheduler.triggers.interval, click, psutil, pluggy,"
    " logging, dataclasses, tomllib, json, zoneinfo, email.message, time; time.sleep(100000)"
)


def measure(
    proc: subprocess.Popen, seconds: float, settle: float, ready: threading.Event | None = None
) -> tuple[float, float, float]:
    """(RSS MB after settling, CPU seconds over the window, peak RSS MB); ``ready``: wait for it first."""
    p = psutil.Process(proc.pid)
    if ready is not None and not ready.wait(120):
        raise SystemExit("the agent sent no mail within 120 s")
    time.sleep(settle)
    start = p.cpu_times()
    rss_start = p.memory_info().rss
    peak = rss_start
    deadline = time.monotonic() + seconds
    step = max(1.0, seconds / 60)
    while time.monotonic() < deadline:
        time.sleep(min(step, max(0.0, deadline - time.monotonic())))
        peak = max(peak, p.memory_info().rss)
        print(
            f"\r  {seconds - (deadline - time.monotonic()):5.0f}/{seconds:.0f} s  rss {p.memory_info().rss / 1e6:5.1f} MB",
            end="",
            file=sys.stderr,
        )
    print(file=sys.stderr)
    end = p.cpu_times()
    cpu = (end.user + end.system) - (start.user + start.system)
    return rss_start / 1e6, cpu, peak / 1e6


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def scrape_every(url: str, seconds: float, stop: threading.Event) -> None:
    """Scrape like a Prometheus with the default 15 s interval, so the figure includes serving /metrics."""
    while not stop.wait(seconds):
        try:
            urllib.request.urlopen(url, timeout=5).read()
        except OSError as exc:
            print(f"scrape failed: {exc}", file=sys.stderr)


class MailSink:
    """An aiosmtpd server on loopback that offers STARTTLS (a throwaway certificate) and counts mails."""

    def __init__(self, folder: Path) -> None:
        import ssl

        from aiosmtpd.controller import Controller
        from tests.certs import make_tls_files  # the test CA and a server certificate for 127.0.0.1

        tls = make_tls_files(folder)
        self.ca = tls.ca
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tls.cert, tls.key)
        self.received = threading.Event()
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):
                sink.received.set()
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=context)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


def mailing_config(config: str, sink: MailSink, charts: str = "in-process") -> str:
    """The shipped config, mailing through ``sink`` over STARTTLS, with a rule that fires at the first sample."""
    routed = config.replace('route = ["pickup"]', f'route = ["smtp"]\ncharts = "{charts}"', 1)
    if routed == config:
        raise SystemExit('config.toml no longer has route = ["pickup"]; update bench/agent_idle.py')
    return routed + (
        f'\n[transports.smtp]\nservers = ["127.0.0.1:{sink.port}"]\ntls = "starttls"\nca_file = "{sink.ca}"\n'
        '\n[[rules]]\nname = "always"\nmetric = "memory.used_percent"\nabove = 0\nseverity = "warning"\n'
    )


def start_agent(folder: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "alertmail", "run", "--config", "config.toml"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true", help="30 s smoke run")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait before measuring")
    parser.add_argument("--exporter", action="store_true", help="also measure the agent with [exporter] listen on loopback")
    parser.add_argument(
        "--after-mail", action="store_true", help="also measure an agent that has sent one alert (STARTTLS, with a chart)"
    )
    args = parser.parse_args()
    seconds = 30.0 if args.quick else args.seconds
    settle = 5.0 if args.quick else args.settle

    folder = Path(tempfile.mkdtemp(prefix="alertmail-idle-"))
    try:
        shutil.copy(ROOT / "config.toml", folder / "config.toml")
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
        agents = {"alertmail run (default)": start_agent(folder, env)}
        stop_scraping = threading.Event()
        if args.exporter:
            other = folder / "exporter"
            other.mkdir()
            port = free_port()
            config = (ROOT / "config.toml").read_text() + f'\n[exporter]\nlisten = "127.0.0.1:{port}"\n'
            (other / "config.toml").write_text(config)
            agents["with [exporter], scraped"] = start_agent(other, env)
            url = f"http://127.0.0.1:{port}/metrics"
            threading.Thread(target=scrape_every, args=(url, 15.0, stop_scraping), daemon=True).start()
        sinks: dict[str, MailSink] = {}
        if args.after_mail:
            for name, charts in (("after one alert mail", "in-process"), ('  same, charts = "subprocess"', "subprocess")):
                other = folder / charts
                other.mkdir()
                sinks[name] = MailSink(other)
                (other / "config.toml").write_text(mailing_config((ROOT / "config.toml").read_text(), sinks[name], charts))
                agents[name] = start_agent(other, env)
        bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(100000)"], env=env)
        floor = subprocess.Popen([sys.executable, "-c", DEPENDENCIES], env=env)
        figures = {}
        try:
            print(f"measuring for {seconds:.0f} s after {settle:.0f} s of settling ...", file=sys.stderr)
            measured = {}
            ready = {name: sink.received for name, sink in sinks.items()}
            threads = [
                threading.Thread(target=lambda n=name, p=proc: measured.__setitem__(n, measure(p, seconds, settle, ready.get(n))))
                for name, proc in agents.items()
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            figures = {name: measured[name] for name in agents}
            b_rss = psutil.Process(bare.pid).memory_info().rss / 1e6
            f_rss = psutil.Process(floor.pid).memory_info().rss / 1e6
            for name, proc in agents.items():
                if proc.poll() is not None:
                    print(f"{name}: the agent exited with {proc.returncode}", file=sys.stderr)
                    return 1
        finally:
            stop_scraping.set()
            for sink in sinks.values():
                sink.stop()
            for proc in (*agents.values(), bare, floor):
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"{'process':<28} {'RSS MB':>8} {'peak MB':>8} {'CPU s':>8} {'% of a core':>12}")
    for name, (rss, cpu, peak) in figures.items():
        print(f"{name:<28} {rss:8.1f} {peak:8.1f} {cpu:8.2f} {cpu / seconds * 100:11.3f}%")
    a_rss = figures["alertmail run (default)"][0]
    print(f"{'bare python (sleeping)':<28} {b_rss:8.1f} {'':>8} {'':>8} {'':>12}")
    print(f"{'its dependencies only':<28} {f_rss:8.1f} {'':>8} {'':>8} {'':>12}")
    print(f"agent RSS over bare interpreter: +{a_rss - b_rss:.1f} MB ({a_rss / b_rss:.2f}x); window {seconds:.0f} s")
    print(f"agent RSS over its dependencies: +{a_rss - f_rss:.1f} MB ({a_rss / f_rss:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
