"""`alertmail probe` runs a probe a second time only when it misses a rate or percentage, which
needs two readings; a failed service check misses metrics too, but runs once."""

from __future__ import annotations

import json
import socket
import textwrap

from click.testing import CliRunner

from alertmail.cli import cli
from alertmail.loader import load_plugins


def only_tcp_config(tmp_path, port: int, also: str = "") -> str:
    """A config where the tcp probe, checking a closed loopback port, is the only probe enabled (and ``also``)."""
    others = [name for name in load_plugins().probes if name not in ("tcp", also)]
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        state_dir = "var"

        [mail]
        to = ["ops@example.com"]

        [probes.tcp]
        checks = [{{ name = "closed", host = "127.0.0.1", port = {port} }}]
        """)
        + "".join(f"\n[probes.{name}]\nenabled = false\n" for name in others)
    )
    return str(config)


def closed_port() -> socket.socket:
    """A loopback port bound but not listening: a connection to it is refused, and no other test takes it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def test_a_failed_tcp_check_runs_once_and_speaks_of_no_second_reading(tmp_path):
    with closed_port() as sock:
        config = only_tcp_config(tmp_path, sock.getsockname()[1])
        text = CliRunner().invoke(cli, ["probe", "--config", config])
        doc = json.loads(CliRunner().invoke(cli, ["probe", "--json", "--config", config]).stdout)
    assert "tcp.up" in text.stdout and "refused" in text.stdout, text.output
    assert "two readings" not in text.stdout and "second run" not in text.stdout
    (tcp,) = doc["probes"]
    assert tcp["name"] == "tcp" and not tcp["second_run"] and doc["warmup_seconds"] == 0.0
    assert [s["metric"] for s in tcp["samples"]] == ["tcp.up"] and tcp["samples"][0]["value"] == 0


def test_the_cpu_probe_still_gets_its_second_reading(tmp_path):
    with closed_port() as sock:
        config = only_tcp_config(tmp_path, sock.getsockname()[1], also="cpu")
        doc = json.loads(CliRunner().invoke(cli, ["probe", "--json", "--config", config]).stdout)
    runs = {p["name"]: p for p in doc["probes"]}
    assert runs["cpu"]["second_run"] and not runs["tcp"]["second_run"]
    assert "cpu.percent" in {s["metric"] for s in runs["cpu"]["samples"]}
