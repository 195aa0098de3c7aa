"""`alertmail status` asks a running agent over its control socket what fires, what waits and why."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import signal
import stat
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from alertmail.exitcodes import ExitCode
from tests.gauge import install_gauge
from tests.relay_peers import ALERTMAIL, REPO


def config_head(route: str = '"pickup"') -> str:
    """The [agent], [mail] and [notify] tables of an agent on the gauge plugin, mailing by ``route``."""
    return f"""
[agent]
state_dir = "var"
interval = "1s"
resolution = "1s"
plugin_dirs = ["plugins.d"]

[mail]
from = "alertmail@web01.test"
to = ["ops@example.test"]
route = [{route}]

[notify]
group_wait = "0s"
max_mails_per_hour = 0
"""


CONFIG = (
    config_head()
    + """
[[rules]]
name = "gauge-high"
metric = "test.gauge"
above = 50
severity = "critical"

[[rules]]
name = "gauge-slow"
metric = "test.gauge"
above = 20
for = "1h"
"""
)


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def alertmail(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*ALERTMAIL, *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=_env())


class RunningAgent:
    def __init__(self, folder: Path, text: str, value: str) -> None:
        install_gauge(folder, value=value)
        self.folder, self.config, self.log = folder, folder / "config.toml", folder / "stderr"
        self.config.write_text(textwrap.dedent(text))
        with open(self.log, "w") as err:
            self.proc = subprocess.Popen([*ALERTMAIL, "run", "--config", str(self.config)], cwd=folder, stderr=err, env=_env())

    def wait_for(self, text: str, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until ``text`` stands ``count`` times in the agent's log."""
        deadline = time.monotonic() + timeout
        while self.log.read_text().count(text) < count:
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, f"no {text!r} in:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)


@pytest.fixture
def agent(tmp_path):
    running = RunningAgent(tmp_path, CONFIG, value="80")
    try:
        running.wait_for("watching")
        yield running
    finally:
        running.stop()


def _status(agent: RunningAgent, *args: str) -> subprocess.CompletedProcess:
    # From another folder: the config path given relative to it still names the agent's state.
    return alertmail("status", "-c", "config.toml", *args, cwd=agent.folder)


def _gauge(answer: dict) -> dict:
    return next(p for p in answer["probes"] if p["name"] == "gauge")


def _wait_status(agent: RunningAgent, ready) -> dict:
    deadline = time.monotonic() + 30
    while True:
        done = _status(agent, "--json")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        if ready(answer):
            return answer
        assert time.monotonic() < deadline, json.dumps(answer, indent=2)
        time.sleep(0.3)


def test_status_json_names_the_agent_its_alerts_silences_probes_queue_and_mails(agent):
    silenced = alertmail(
        "silence", "add", "-c", "config.toml", "--rule", "gauge-slow", "--for", "2h", "--comment", "known", cwd=agent.folder
    )
    assert silenced.returncode == 0, silenced.stderr
    answer = _wait_status(
        agent,
        # The agent reads silences added from the command line at its next tick: wait for it to hold one.
        lambda a: (
            a["mails"]
            and any(x["rule"] == "gauge-high" for x in a["alerts"])
            and any(x["rule"] == "gauge-slow" and x["silenced_by"] for x in a["alerts"])
            and _gauge(a)["runs"] > 0
        ),
    )

    me = answer["agent"]
    assert me["pid"] == agent.proc.pid
    assert me["config"] == str(agent.config.resolve())
    assert me["last_reload"] is None
    assert dt.datetime.fromisoformat(me["started"]).tzinfo is not None

    by_rule = {a["rule"]: a for a in answer["alerts"]}
    high = by_rule["gauge-high"]
    assert (high["state"], high["severity"], high["value"], high["threshold"], high["comparison"]) == (
        "firing",
        "critical",
        80.0,
        50.0,
        ">",
    )
    assert dt.datetime.fromisoformat(high["since"]).tzinfo is not None
    assert high["silenced_by"] is None
    slow = by_rule["gauge-slow"]
    assert slow["state"] == "pending" and slow["threshold"] == 20.0

    (silence,) = answer["silences"]
    assert silence["matchers"] == "rule=gauge-slow" and silence["comment"] == "known"
    ends = dt.datetime.fromisoformat(silence["ends"])
    assert dt.timedelta(hours=1, minutes=55) < ends - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=2)
    assert slow["silenced_by"] == silence["id"]

    probe = _gauge(answer)
    assert probe["failures"] == 0 and probe["duration"] is not None
    assert dt.datetime.fromisoformat(probe["last_run"]).tzinfo is not None

    assert answer["queue"]["depth"] >= 0 and answer["queue"]["held"] == []
    mail = answer["mails"][0]
    assert "gauge-high" in mail["subject"] and mail["to"] == ["ops@example.test"]
    assert mail["fate"] in ("delivered", "waiting")


def test_status_text_says_for_how_long_and_what_silences_it(agent):
    alertmail("silence", "add", "-c", "config.toml", "--rule", "gauge-slow", "--for", "2h", cwd=agent.folder)
    # The agent reads silences added from the command line at its next tick: wait for it to hold one.
    _wait_status(
        agent,
        lambda a: (
            any(x["rule"] == "gauge-high" for x in a["alerts"])
            and any(x["rule"] == "gauge-slow" and x["silenced_by"] for x in a["alerts"])
        ),
    )
    done = _status(agent)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"pid {agent.proc.pid}" in text
    assert str(agent.config.resolve()) in text
    assert "FIRING   critical gauge-high {} " not in text
    line = next(x for x in text.splitlines() if "gauge-high" in x and "FIRING" in x)
    assert "test.gauge 80 > 50, for " in line
    slow = next(x for x in text.splitlines() if "gauge-slow" in x and "PENDING" in x)
    assert "silenced by " in slow
    # Asked at once after the silence was added for 2h: its end rounds to "2h", or a little later to "1h 59m".
    assert "silences: 1" in text and re.search(r"ends in (2h|1h 59m) ", text), text


def test_a_reload_and_its_outcome_show_in_status(agent):
    agent.config.write_text(textwrap.dedent(CONFIG).replace('interval = "1s"', 'interval = "ninety"'))
    agent.proc.send_signal(signal.SIGHUP)
    answer = _wait_status(agent, lambda a: a["agent"]["last_reload"] is not None)
    reload = answer["agent"]["last_reload"]
    assert reload["ok"] is False and any("interval" in p for p in reload["problems"]), reload
    assert "refused" in _status(agent).stdout


def test_the_control_socket_lets_in_the_agents_user_and_group_only(agent):
    sock = agent.folder / "var" / "control.sock"
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


def test_status_without_a_running_agent_exits_69_with_one_line(tmp_path):
    install_gauge(tmp_path)
    (tmp_path / "config.toml").write_text(textwrap.dedent(CONFIG))
    done = alertmail("status", "-c", "config.toml", cwd=tmp_path)
    assert done.returncode == ExitCode.UNAVAILABLE
    assert done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no agent runs" in done.stderr and "Traceback" not in done.stderr


def test_status_after_the_agent_stopped_exits_69(tmp_path):
    running = RunningAgent(tmp_path, CONFIG, value="10")
    try:
        running.wait_for("watching")
        assert _status(running, "--json").returncode == 0
    finally:
        running.stop()
    done = _status(running)
    assert done.returncode == ExitCode.UNAVAILABLE and "no agent runs" in done.stderr
    assert not (tmp_path / "var" / "control.sock").exists()


def test_a_deep_state_dir_still_gets_a_control_socket(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    running = RunningAgent(deep, CONFIG, value="10")
    try:
        running.wait_for("watching")
        done = _status(running, "--json")
        assert done.returncode == 0, done.stderr + running.log.read_text()
        assert json.loads(done.stdout)["agent"]["pid"] == running.proc.pid
    finally:
        running.stop()


PEER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("connect refused by the file mode")
    sys.exit(0)
s.sendall(b"status\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(data.decode()[:200])
"""


def test_another_user_is_kept_out_by_the_socket_mode_and_by_the_agent(tmp_path):
    import shutil
    import tempfile

    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to connect as another user")
    # A folder every user may enter (pytest's own is private to root), so only the socket's mode guards it.
    folder = Path(tempfile.mkdtemp(prefix="alertmail-peer-"))
    try:
        folder.chmod(0o755)
        running = RunningAgent(folder, CONFIG, value="10")
        try:
            running.wait_for("control socket")
            sock = folder / "var" / "control.sock"
            (folder / "var").chmod(0o755)

            def as_nobody() -> str:
                done = subprocess.run(
                    ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c", PEER, str(sock)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                return done.stdout + done.stderr

            assert "refused by the file mode" in as_nobody()
            sock.chmod(0o666)  # widened by hand: the agent still checks who is asking
            answer = as_nobody()
            assert "permission denied" in answer and '"agent"' not in answer, answer
        finally:
            running.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
