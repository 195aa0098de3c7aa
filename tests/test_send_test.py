"""``alertmail send-test`` end to end: a real alert mail, marked as a test, through a real SMTP server (smtp-sink)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import SmtpSink
from tests.test_delivery import sink_folder

sink_dir_fixture = pytest.fixture(sink_folder, name="sink_dir")


def config(tmp_path: Path, sink: SmtpSink, *, charts: str = "in-process", templates: bool = False) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "var"\nhostname = "web01"\ntimezone = "Europe/Berlin"\n'
        f'[mail]\nfrom = "alerts@example.test"\nto = ["ops@example.test"]\nroute = ["smtp"]\ncharts = "{charts}"\n'
        f'subject_prefix = "[prod]"\n'
        + ('templates = "templates"\n' if templates else "")
        + f'[transports.smtp]\nservers = ["{sink.address}"]\ntls = "none"\nconnect_timeout = "5s"\n'
        '[[rules]]\nname = "cpu-busy"\nmetric = "cpu.percent"\nabove = 85\nseverity = "warning"\n'
        '[[rules]]\nname = "disk-root-full"\nmetric = "disk.used_percent"\nlabels = { mount = "/" }\nabove = 90\n'
        'clear = 85\nseverity = "critical"\nrunbook = "https://wiki.example.com/runbooks/disk-full"\n'
    )
    return path


def alertmail(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "alertmail", *map(str, args)], capture_output=True, text=True, timeout=120)


def test_send_test_sends_a_real_alert_of_a_rule_marked_as_a_test_through_the_route(tmp_path, sink_dir):
    with SmtpSink(sink_dir) as sink:
        done = alertmail("send-test", "--rule", "disk-root-full", "-c", config(tmp_path, sink))
        assert done.returncode == 0, done.stderr
        assert "ops@example.test  delivered  smtp" in done.stdout
        [received] = sink.wait_for(1)
    msg = received.message
    assert received.recipients == ["ops@example.test"] and received.sender == "alerts@example.test"
    assert str(msg["Subject"]).startswith("[TEST] [prod] [CRITICAL] web01: disk-root-full — disk.used_percent ")
    assert msg["Auto-Submitted"] == "auto-generated" and msg["Message-ID"] and msg["Date"]
    assert msg["X-Alertmail-Kind"] == "firing"
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for body in (text, " ".join(html.split())):
        assert "This is a test sent with `alertmail send-test` on web01: no rule fired." in body
    assert "FIRING: disk-root-full on web01" in text
    assert "  runbook     https://wiki.example.com/runbooks/disk-full\n" in text
    assert 'href="https://wiki.example.com/runbooks/disk-full"' in html
    [chart] = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert chart.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"cid:{chart['Content-ID'].strip('<>')}" in html
    assert 'alt="Chart of disk.used_percent on web01 (mount=/), ' in html


def test_send_test_renders_with_the_configured_templates_and_without_charts_when_they_are_off(tmp_path, sink_dir):
    folder = tmp_path / "templates"
    folder.mkdir()
    (folder / "alert.txt.j2").write_text("ON CALL: {{ notice[:24] }} | {{ alerts[0].rule }}\n")
    with SmtpSink(sink_dir) as sink:
        done = alertmail("send-test", "-c", config(tmp_path, sink, charts="off", templates=True))
        assert done.returncode == 0, done.stderr
        [received] = sink.wait_for(1)
    msg = received.message
    assert str(msg["Subject"]).startswith("[TEST] [prod] [WARNING] web01: cpu-busy — cpu.percent ")  # the first rule
    assert msg.get_body(("plain",)).get_content() == "ON CALL: This is a test sent with | cpu-busy\n"
    assert not [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert "No chart" not in msg.get_body(("html",)).get_content()


def test_send_test_names_the_rules_there_are_when_asked_for_one_that_is_not(tmp_path, sink_dir):
    with SmtpSink(sink_dir) as sink:
        done = alertmail("send-test", "--rule", "disk-root-ful", "-c", config(tmp_path, sink))
    assert done.returncode == 64
    assert "no rule named 'disk-root-ful'; did you mean 'disk-root-full'?" in done.stderr
