"""Real Prometheus and Alertmanager for the fleet tests, each on a free loopback port.

Both run from the Debian packages (prometheus, prometheus-alertmanager) with their own
storage in a temporary folder, never as the system's services; stopped on exit.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.gauge import install_gauge
from tests.peers import free_port, need
from tests.probe_agent import PLUGIN_AGENT, agent_running, wait_for, write_config

HOST = "127.0.0.1"
# Straight to loopback, whatever proxy the environment names.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    with _OPENER.open(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def wait_ready(url: str, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            if http_get(url, timeout=1)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready at {url} after {timeout}s")


@dataclass
class Prometheus:
    """A Prometheus that scrapes ``targets`` (host:port) every second."""

    folder: Path
    targets: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    job: str = ""  # more keys of the scrape job, as YAML lines (scheme, tls_config, basic_auth)

    def start(self) -> Prometheus:
        binary = need("prometheus")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(
            textwrap.dedent(f"""
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: alertmail
                scrape_interval: 1s
                static_configs:
                  - targets: {json.dumps(self.targets)}
            """)
            + textwrap.indent(self.job, "    ")
        )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_ready(f"{self.url}/-/ready", self.proc, "prometheus")
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def query(self, promql: str) -> list[dict]:
        """The result vector of an instant query through the HTTP API."""
        _, _, body = http_get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def __enter__(self) -> Prometheus:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Alertmanager:
    """A single Alertmanager (clustering off) with a receiver that sends nothing, or one that
    posts every notification to ``webhook`` (a URL on loopback) at once, resolved ones too."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    webhook: str | None = None

    def start(self) -> Alertmanager:
        binary = need("prometheus-alertmanager")
        self.folder.mkdir(parents=True, exist_ok=True)
        config = self.folder / "alertmanager.yml"
        if self.webhook is None:
            config.write_text("route:\n  receiver: quiet\nreceivers:\n  - name: quiet\n")
        else:
            config.write_text(
                textwrap.dedent(f"""
                route:
                  receiver: hook
                  group_by: [alertname, instance]
                  group_wait: 1s
                  group_interval: 1s
                  repeat_interval: 1h
                receivers:
                  - name: hook
                    webhook_configs:
                      - url: {json.dumps(self.webhook)}
                        send_resolved: true
                """)
            )
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.path={self.folder / 'data'}",
                f"--web.listen-address={HOST}:{self.port}",
                "--cluster.listen-address=",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_ready(f"{self.url}/-/ready", self.proc, "alertmanager")
        return self

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def amtool(self, *args: str) -> str:
        """amtool's output for ``args`` against this Alertmanager."""
        result = subprocess.run(
            [need("amtool"), f"--alertmanager.url={self.url}", *args], capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def alerts(self) -> list[dict]:
        """The active alerts, as the API v2 lists them."""
        return json.loads(http_get(f"{self.url}/api/v2/alerts")[2])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def __enter__(self) -> Alertmanager:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def agent_config(folder: Path, extra: str, route: str = '["pickup"]') -> Path:
    """A config whose only probe is a gauge read from ``plugins.d/value.txt`` and a rule firing above 50."""
    install_gauge(folder, metric="test.level", labels={"mount": "/data"}, unit="percent", description="a level the test sets")
    return write_config(
        folder,
        """
        [[rules]]
        name = "gauge-high"
        metric = "test.level"
        above = 50
        severity = "critical"
        description = "the test gauge is high"
        """,
        extra + "\n",
        agent=PLUGIN_AGENT,
        notify="max_mails_per_hour = 0",
        route=route,
    )


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 (a free port) that keeps every JSON body POSTed to it: Alertmanager's notifications."""

    def __init__(self) -> None:
        import http.server
        import threading

        received: list[dict] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def notifications(self, alertname: str) -> list[tuple[str, dict]]:
        """(status, alert) of every alert named ``alertname`` in the notifications so far, in order."""
        return [(a["status"], a) for body in list(self.received) for a in body["alerts"] if a["labels"]["alertname"] == alertname]

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def run_until_badmail(config: Path) -> tuple[list[Path], str]:
    """The agent on ``config`` with its gauge at 93.5 (above the rule's 50) until a mail lands in badmail/:
    the reason files there, and the agent's log."""
    (config.parent / "plugins.d" / "value.txt").write_text("93.5")
    with agent_running(config) as agent:
        reasons = wait_for(lambda: list((config.parent / "var" / "badmail").glob("*.bdr")), timeout=60, what="badmail")
    return reasons, agent.log
