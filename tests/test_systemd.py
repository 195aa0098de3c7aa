"""Running under systemd: the shipped unit, and the sd_notify datagrams on a real NOTIFY_SOCKET."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alertmail.cli.systemd import SYSUSERS, unit
from alertmail.sdnotify import ServiceManager

ROOT = Path(__file__).resolve().parent.parent
ALERTMAIL = [sys.executable, "-m", "alertmail"]


def test_contrib_unit_is_the_one_init_prints_with_default_paths():
    assert (ROOT / "contrib/systemd/alertmail.service").read_text() == unit()
    assert (ROOT / "contrib/systemd/alertmail.sysusers").read_text() == SYSUSERS


def test_unit_has_what_systemd_needs_of_a_mail_daemon():
    text = unit()
    keys = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert keys["Type"] == "notify" and keys["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert keys["WatchdogSec"] and keys["StateDirectory"] == "alertmail" and keys["User"] == "alertmail"
    assert keys["ProtectSystem"] == "strict" and keys["NoNewPrivileges"] == "yes" and keys["PrivateTmp"] == "yes"
    assert keys["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE" and "/var/lib/alertmail" in keys["ReadWritePaths"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_init_systemd_writes_a_unit_that_systemd_analyze_verifies(tmp_path):
    config = tmp_path / "config.toml"
    out = tmp_path / "alertmail.service"
    done = subprocess.run(
        [*ALERTMAIL, "init", "--systemd", "--config", str(config), "-o", str(out)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert f"run --config {config}" in text
    verify = subprocess.run(["systemd-analyze", "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # The check can fail: a misspelt key is reported.
    out.write_text(text.replace("ProtectHome=", "ProtectHom="))
    verify = subprocess.run(["systemd-analyze", "verify", str(out)], capture_output=True, text=True, timeout=60)
    assert "ProtectHom" in verify.stderr


def test_init_writes_to_standard_output_with_a_dash(tmp_path):
    done = subprocess.run([*ALERTMAIL, "init", "-o", "-"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "[agent]" in done.stdout and not list(tmp_path.iterdir())


@pytest.fixture
def notify_socket(tmp_path):
    path = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_service_manager_sends_each_state_as_one_datagram(notify_socket):
    path, sock = notify_socket
    manager = ServiceManager({"NOTIFY_SOCKET": str(path)})
    assert manager.enabled
    manager.ready("watching 3 rules\nqueue 0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=watching 3 rules queue 0"
    manager.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0
    manager.watchdog()
    manager.stopping()
    assert [sock.recv(4096), sock.recv(4096)] == [b"WATCHDOG=1", b"STOPPING=1"]


def test_abstract_socket_names_are_understood():
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"alertmail-test-{os.getpid()}"
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        assert ServiceManager({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_without_a_socket_nothing_is_sent_and_a_dead_socket_is_not_fatal(tmp_path, caplog):
    assert not ServiceManager({}).ready()
    gone = ServiceManager({"NOTIFY_SOCKET": str(tmp_path / "missing")})
    assert not gone.ready() and not gone.status("x")
    assert caplog.text.count("cannot notify the service manager") == 1


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "x"}, None),
        ({}, None),
    ],
)
def test_watchdog_pings_at_half_the_interval_and_only_when_meant_for_this_process(environ, interval):
    if environ.get("WATCHDOG_PID") == "1" and os.getpid() == 1:
        pytest.skip("this process is pid 1")
    assert ServiceManager(environ).watchdog_interval == interval


def run_agent_briefly(tmp_path: Path, extra: str, stderr, env: dict[str, str]) -> None:
    """Start ``alertmail run`` until it says it is watching, then stop it with SIGTERM."""
    import signal
    import time

    config = tmp_path / "config.toml"
    config.write_text(f'[agent]\nstate_dir = "var"\ninterval = "1s"\n{extra}\n[mail]\nroute = ["pickup"]\n')
    proc = subprocess.Popen([*ALERTMAIL, "run", "--config", str(config)], stderr=stderr, env={**os.environ, **env})
    log = Path(stderr.name)
    deadline = time.monotonic() + 30
    while "watching" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_json_log_format_writes_one_object_a_line(tmp_path):
    import json

    with open(tmp_path / "stderr", "w+") as stderr:
        run_agent_briefly(tmp_path, 'log_format = "json"', stderr, {})
    lines = [json.loads(line) for line in (tmp_path / "stderr").read_text().splitlines()]
    watching = next(line for line in lines if "watching" in line["message"])
    assert watching["level"] == "info" and watching["logger"] == "alertmail.agent"
    assert watching["time"].endswith("+00:00") and "T" in watching["time"]


def test_under_the_journal_lines_carry_a_priority_and_no_time_of_their_own(tmp_path):
    import re

    with open(tmp_path / "stderr", "w+") as stderr:
        st = os.fstat(stderr.fileno())
        run_agent_briefly(tmp_path, "", stderr, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    lines = (tmp_path / "stderr").read_text().splitlines()
    assert lines and all(re.match(r"<[2-7]>\S+: ", line) for line in lines), lines[:3]
    assert any(line.startswith("<6>alertmail.agent: watching") for line in lines)
    assert not any(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", line) for line in lines)


def test_agent_tells_systemd_ready_reloading_stopping_and_pings_the_watchdog(tmp_path, notify_socket):
    import signal
    import time

    path, sock = notify_socket
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\ninterval = "1s"\n[mail]\nroute = ["pickup"]\n')
    env = {**os.environ, "NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "1000000"}
    proc = subprocess.Popen([*ALERTMAIL, "run", "--config", str(config)], env=env, stderr=subprocess.DEVNULL)
    seen: list[str] = []

    def until(prefix: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            seen.append(sock.recv(4096).decode())
            if seen[-1].startswith(prefix):
                return seen[-1]
        raise AssertionError(f"no {prefix} in {seen}")

    try:
        ready = until("READY=1")
        assert "STATUS=0 alert(s) firing, " in ready and "0 message(s) in the queue" in ready
        until("WATCHDOG=1")
        started = time.monotonic()
        until("WATCHDOG=1")
        assert time.monotonic() - started < 0.9  # half of WATCHDOG_USEC, from the event loop
        proc.send_signal(signal.SIGHUP)
        reloading = until("RELOADING=1")
        assert reloading.split("\n")[1].startswith("MONOTONIC_USEC=")
        until("READY=1")
        proc.send_signal(signal.SIGTERM)
        until("STOPPING=1")
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
