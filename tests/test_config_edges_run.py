"""What `alertmail check` accepts, `alertmail run` runs: the edge values of every bounded key.

The largest and the smallest values each key takes, all at once, in a real `alertmail run`:
it must pass `check`, start, reach its first probe run (a rule on the agent's own probe
timing fires at once and its mail is written), and stop on SIGTERM with exit 0 and no
traceback. test_config_refusals.py holds the values one step past these edges.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from alertmail.config.schema import INT_MAX
from alertmail.units import DURATION_MAX
from tests.peers import free_port

ALERTMAIL = [sys.executable, "-m", "alertmail"]
LONGEST = "3650d"
assert DURATION_MAX == 3650 * 86400


def first_tick_rule() -> dict[str, Any]:
    """Fires on the first probe run: the agent times every probe, and no run takes -1 s."""
    return {"name": "first-tick", "metric": "agent.probe_seconds", "labels": {"probe": "cpu"}, "above": -1}


def longest(tmp_path: Path) -> dict[str, Any]:
    return {
        "agent": {"state_dir": "var", "interval": LONGEST, "resolution": "60s", "probe_timeout": LONGEST},
        "mail": {"from": "alerts@example.test", "to": ["ops@example.test"], "route": ["pickup"]},
        "notify": {"group_wait": LONGEST, "digest_interval": LONGEST, "max_mails_per_hour": 1_000_000},
        "queue": {
            "retry": [LONGEST],
            "route_retry": {"pickup": [LONGEST]},
            "delay_notice": LONGEST,
            "expire": LONGEST,
            "send_timeout": LONGEST,
            "scan_interval": LONGEST,
            "concurrency": 1000,
        },
        "heartbeat": {"every": LONGEST},
        "exporter": {"listen": f"127.0.0.1:{free_port()}", "stale_after": LONGEST},
        "probes": {"cpu": {"interval": LONGEST, "timeout": LONGEST}},
        "transports": {
            "pickup": {"directory": "out"},
            "smtp": {
                "servers": ["127.0.0.1:25"],
                **dict.fromkeys(("connect_timeout", "command_timeout", "data_timeout", "idle_timeout"), LONGEST),
            },
        },
        "relay": {
            "enabled": True,
            "listen": [f"127.0.0.1:{free_port()}"],
            "route": ["smtp"],
            "workers": 0,
            "max_size": "1024GiB",
            **dict.fromkeys(
                ("max_recipients", "max_commands", "max_connections", "max_connections_per_client", "max_auth_failures"),
                INT_MAX,
            ),
            **dict.fromkeys(("rate_window", "pickup_interval", "greet_pause", "timeout", "stop_timeout"), LONGEST),
        },
        "silences": [{"rule": "never-*", "cron": "0 2 * * 6", "duration": LONGEST}],
        "rules": [
            first_tick_rule(),
            {
                "name": "never-long",
                "metric": "never.sampled",
                "undeclared": True,
                "above": 1e308,
                "for": LONGEST,
                "repeat": LONGEST,
                "keep_firing_for": LONGEST,
                "over": LONGEST,
                "absent": LONGEST,
            },
        ],
    }


def shortest(tmp_path: Path) -> dict[str, Any]:
    return {
        "agent": {"state_dir": "var", "interval": "100ms", "resolution": "100ms", "probe_timeout": "1ms"},
        "mail": {"from": "alerts@example.test", "to": ["ops@example.test"], "route": ["pickup"]},
        "notify": {"group_wait": 0, "digest_interval": "1s", "max_mails_per_hour": 0},
        "queue": {"retry": ["100ms"], "expire": "1s", "send_timeout": "1ms", "scan_interval": "10ms", "concurrency": 1},
        "exporter": {
            "listen": f"[::1]:{free_port('::1')}" if socket.has_ipv6 else f"127.0.0.1:{free_port()}",
            "stale_after": "1s",
        },
        "probes": {"cpu": {"interval": "100ms", "timeout": "1s"}},
        "transports": {"pickup": {"directory": "out"}},
        "rules": [first_tick_rule()],
    }


@pytest.mark.parametrize("edge", [longest, shortest])
def test_run_takes_every_edge_value_check_accepts(tmp_path, edge):
    config = tmp_path / "config.toml"
    config.write_text(tomli_w.dumps(edge(tmp_path)))
    checked = subprocess.run([*ALERTMAIL, "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    out = tmp_path / "out"
    with open(tmp_path / "stderr", "w+") as stderr:
        agent = subprocess.Popen([*ALERTMAIL, "run", "--config", str(config)], stderr=stderr, cwd=tmp_path)
        try:
            deadline = time.monotonic() + 60
            while not (out.is_dir() and any(out.glob("*.eml"))):
                assert agent.poll() is None, f"run stopped ({agent.returncode}):\n{Path(stderr.name).read_text()}"
                assert time.monotonic() < deadline, f"no first probe run within 60 s:\n{Path(stderr.name).read_text()}"
                time.sleep(0.1)
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
            code = agent.wait(30)
        log = Path(stderr.name).read_text()
    assert code == 0, log
    assert "Traceback" not in log, log  # a probe timing out after 1ms is an ERROR line, not a failure
    assert "first-tick" in next(out.glob("*.eml")).read_text(errors="replace")
    if os.environ.get("ALERTMAIL_SHOW_EDGE_LOG"):
        print(log)
