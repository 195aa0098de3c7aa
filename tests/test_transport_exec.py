"""The exec transport: a real program per alert mail, its exit status deciding delivery."""

from __future__ import annotations

import asyncio
import email.message
import json
import sys
import textwrap
from pathlib import Path

import pytest

from alertmail.model import Envelope, Status, TransportContext
from alertmail.rules.wire import ALERTS_HEADER, encode_alerts
from tests.fleet_peers import agent_config, run_until_badmail
from tests.test_agent_e2e import wait_for
from tests.test_transport_alertmanager import event, sealed

ENVELOPE = Envelope("alertmail@web1.test", ("ops@web1.test", "dba@web1.test"))


def program(tmp_path: Path, body: str) -> list[str]:
    """A Python program (run directly, no shell) that writes what it got into tmp_path/got.json, then runs ``body``."""
    path = tmp_path / "notify.py"
    path.write_text(
        "import json, os, sys\n"
        f"with open({str(tmp_path / 'got.json')!r}, 'w') as fh:\n"
        "    json.dump({'stdin': sys.stdin.read(), 'env': dict(os.environ), 'argv': sys.argv[1:]}, fh)\n" + textwrap.dedent(body)
    )
    return [sys.executable, str(path)]


def transport(tmp_path: Path, command: list[str], **options):
    from alertmail.plugins.transports.exec import ExecSettings, ExecTransport

    settings = ExecSettings(**{"command": command, **options})
    return ExecTransport(settings, TransportContext(state_dir=tmp_path, hostname="web1.test"))


def send(tmp_path: Path, command: list[str], message: bytes | None = None, **options):
    message = sealed(tmp_path, [event("firing")]) if message is None else message
    result = asyncio.run(transport(tmp_path, command, **options).send(message, ENVELOPE))
    statuses = set(result.recipients.values())
    assert len(statuses) == 1
    return statuses.pop()


def test_the_program_gets_the_alert_as_webhook_json_on_stdin_and_alertmail_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("SMTP_PASSWORD", "not for the program")
    command = [*program(tmp_path, "sys.exit(0)"), "two words", "$HOME;`id`"]
    status = send(tmp_path, command, env={"TEAM": "ops"})
    assert status.status is Status.DELIVERED
    got = json.loads((tmp_path / "got.json").read_text())
    assert got["argv"] == ["two words", "$HOME;`id`"]  # no shell in between
    body = json.loads(got["stdin"])
    assert body["version"] == "4" and body["status"] == "firing"
    assert body["alerts"][0]["labels"]["alertname"] == "disk-full"
    env = got["env"]
    assert env["ALERTMAIL_STATUS"] == "firing" and env["ALERTMAIL_ALERTS"] == "1"
    assert env["ALERTMAIL_ALERTNAME"] == "disk-full" and env["ALERTMAIL_SEVERITY"] == "critical"
    assert env["ALERTMAIL_HOST"] == "web1.test" and env["ALERTMAIL_SUBJECT"] == "alert"
    assert env["ALERTMAIL_RECIPIENTS"] == "ops@web1.test,dba@web1.test"
    assert env["TEAM"] == "ops" and "SMTP_PASSWORD" not in env


def test_exit_75_is_tried_again_and_another_exit_is_permanent_with_the_program_s_stderr(tmp_path):
    later = send(tmp_path, program(tmp_path, "sys.stderr.write('pager busy'); sys.exit(75)"))
    assert later.status is Status.TEMPORARY and "pager busy" in later.message
    refused = send(tmp_path, program(tmp_path, "sys.stderr.write('no such team: ops\\n'); sys.exit(3)"))
    assert refused.status is Status.PERMANENT
    assert "exited 3" in refused.message and "no such team: ops" in refused.message


def test_at_the_timeout_the_program_s_whole_process_group_is_killed_and_it_is_tried_again(tmp_path):
    body = """
    import subprocess, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    open(os.path.join(os.path.dirname(sys.argv[0]), "child.pid"), "w").write(str(child.pid))
    time.sleep(600)
    """
    status = send(tmp_path, program(tmp_path, body), timeout=3.0)
    assert status.status is Status.TEMPORARY and "killed" in status.message
    child = int((tmp_path / "child.pid").read_text())

    def gone() -> bool:
        try:
            with open(f"/proc/{child}/stat") as fh:
                return fh.read().split(") ", 1)[1].startswith("Z")  # killed, not yet reaped by init
        except FileNotFoundError:
            return True

    assert wait_for(gone, timeout=10, what="the program's child killed")


def test_mail_the_agent_did_not_seal_never_runs_the_program(tmp_path):
    forged = email.message.EmailMessage()
    forged["Subject"] = "relayed"
    forged[ALERTS_HEADER] = encode_alerts([event("firing")], "web1.test")
    forged.set_content("text")
    status = send(tmp_path, program(tmp_path, "sys.exit(0)"), forged.as_bytes())
    assert status.status is Status.TEMPORARY and "not an alert of this agent" in status.message
    assert not (tmp_path / "got.json").exists()


def test_an_empty_command_is_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"^transports\.exec\.command: "):
        transport(tmp_path, [])


@pytest.mark.peers
def test_an_agent_s_alert_runs_the_program_and_a_failing_one_sends_the_mail_to_badmail_with_its_stderr(tmp_path):
    folder = tmp_path / "agent"
    folder.mkdir()
    command = program(tmp_path, "sys.stderr.write('pager refused the page'); sys.exit(2)")
    config = agent_config(folder, f"[transports.exec]\ncommand = {json.dumps(command)}\n", route='["exec"]')
    reasons, log = run_until_badmail(config)
    assert "pager refused the page" in reasons[0].read_text(), log
    got = json.loads((tmp_path / "got.json").read_text())
    assert json.loads(got["stdin"])["alerts"][0]["labels"]["alertname"] == "gauge-high"
