#!/usr/bin/env python3
"""Cost of the http probe: an agent with N http checks against a local server, next to
the idle agent on the default config, both measured over the same window of the same run.

A small HTTP server (the standard library's, in a process of its own, so its CPU is not
counted) answers every check; with --tls it speaks HTTPS with a certificate of a throwaway
CA that the checks trust through ca_file, so each run pays a full TLS handshake per check.
Both agents start from the repository's config.toml with an [exporter] on loopback (read
once, at the end, to count the checks that are up); the second adds [probes.http] with
--checks checks every --interval seconds.

    python bench/probe_cost_http.py                       # 50 checks every 10 s, 120 s window
    python bench/probe_cost_http.py --tls --seconds 300
    python bench/probe_cost_http.py --quick               # 20 s smoke run
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
from pathlib import Path

from agent_idle import measure, start_agent  # bench/agent_idle.py: the same way of measuring an agent

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.certs, for --tls

SERVER = """
import http.server, ssl, sys

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = b"ok\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 256  # all checks connect at once: no SYN left waiting for a retry

server = Server(("127.0.0.1", 0), Handler)
server.daemon_threads = True
if len(sys.argv) > 2:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def http_config(port: int, checks: int, interval: float, scheme: str, ca: Path | None) -> str:
    trust = f', ca_file = "{ca}"' if ca else ""
    lines = ",\n".join(
        f'  {{ name = "c{i}", url = "{scheme}://127.0.0.1:{port}/{i}", expect_status = [200]{trust} }}' for i in range(checks)
    )
    return f'\n[probes.http]\ninterval = "{interval:g}s"\nchecks = [\n{lines},\n]\n'


def checks_up(port: int) -> int:
    """How many http checks the measured agent has up now, read from its [exporter]: the figure is of working checks."""
    import urllib.request

    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(line.startswith("alertmail_http_up{") and line.split()[-1] == "1.0" for line in page.splitlines())


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between runs of the http probe")
    parser.add_argument("--seconds", type=float, default=120.0, help="the measured window")
    parser.add_argument("--settle", type=float, default=15.0, help="seconds to wait before measuring")
    parser.add_argument("--tls", action="store_true", help="HTTPS, with a throwaway CA the checks trust")
    parser.add_argument("--quick", action="store_true", help="20 s smoke run")
    args = parser.parse_args()
    seconds = 20.0 if args.quick else args.seconds
    settle = 5.0 if args.quick else args.settle

    folder = Path(tempfile.mkdtemp(prefix="alertmail-http-cost-"))
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    procs: list[subprocess.Popen] = []
    try:
        tls_args: list[str] = []
        ca = None
        if args.tls:
            from tests.certs import make_tls_files

            tls = make_tls_files(folder / "tls")
            tls_args, ca = [str(tls.cert), str(tls.key)], tls.ca
        server = subprocess.Popen([sys.executable, "-c", SERVER, *tls_args], stdout=subprocess.PIPE, text=True, env=env)
        procs.append(server)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        config = (ROOT / "config.toml").read_text()
        agents: dict[str, subprocess.Popen] = {}
        exporters: list[int] = []
        for name, extra in (
            ("idle agent (default config)", ""),
            (
                f"{args.checks} {'https' if args.tls else 'http'} checks / {args.interval:g}s",
                http_config(port, args.checks, args.interval, "https" if args.tls else "http", ca),
            ),
        ):
            home = folder / f"agent{len(agents)}"
            home.mkdir()
            exporter = free_port()  # both agents export, so the only difference between them is the checks
            (home / "config.toml").write_text(config + extra + f'\n[exporter]\nlisten = "127.0.0.1:{exporter}"\n')
            exporters.append(exporter)
            agents[name] = start_agent(home, env)
            procs.append(agents[name])
        print(f"measuring for {seconds:.0f} s after {settle:.0f} s of settling ...", file=sys.stderr)
        measured: dict[str, tuple[float, float, float]] = {}
        threads = [
            threading.Thread(target=lambda n=name, p=proc: measured.__setitem__(n, measure(p, seconds, settle)))
            for name, proc in agents.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name, proc in agents.items():
            if proc.poll() is not None:
                print(f"{name}: the agent exited with {proc.returncode}", file=sys.stderr)
                return 1
        up = checks_up(exporters[1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        time.sleep(0.1)
        shutil.rmtree(folder, ignore_errors=True)

    print(f"{'agent':<34} {'RSS MB':>8} {'peak MB':>8} {'CPU s':>8} {'% of a core':>12}")
    for name, (rss, cpu, peak) in ((name, measured[name]) for name in agents):
        print(f"{name:<34} {rss:8.1f} {peak:8.1f} {cpu:8.2f} {cpu / seconds * 100:11.3f}%")
    (idle_rss, idle_cpu, _), (http_rss, http_cpu, _) = (measured[name] for name in agents)
    runs = seconds / args.interval * args.checks
    extra = http_cpu - idle_cpu
    print(
        f"the checks' share: +{extra / seconds * 100:.3f}% of a core, +{http_rss - idle_rss:.1f} MB RSS;"
        f" {extra / runs * 1000:.2f} ms CPU per check run ({runs:.0f} check runs in {seconds:.0f} s)"
    )
    print(f"checks up at the end: {up} of {args.checks} (http.up = 1 on the measured agent's exporter)")
    return 0 if up == args.checks else 1


if __name__ == "__main__":
    sys.exit(main())
