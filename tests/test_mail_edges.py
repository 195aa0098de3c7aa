"""What a new user trips over in an alert mail: the subject names the incident, the silence command names the config."""

from __future__ import annotations

import datetime as dt
import shlex
from pathlib import Path

from alertmail.agent import render_options
from alertmail.render.digest import render_digest_mail
from alertmail.render.mail import render_alert
from alertmail.render.view import RenderContext, subject
from alertmail.rules.model import AlertEvent, Rule

SINCE = dt.datetime(2025, 1, 15, 13, 3, tzinfo=dt.UTC).timestamp()
DISK = Rule(name="disk-full", metric="disk.used_percent", above=95, severity="critical")
DISK_LABELS = (("device", "/dev/sdb1"), ("fstype", "ext4"), ("mount", "/srv/db"))


def event(rule: Rule = DISK, labels=DISK_LABELS, value: float = 96.0) -> AlertEvent:
    return AlertEvent(
        kind="firing",
        rule=rule,
        labels=tuple(labels),
        value=value,
        threshold=rule.above,
        comparison=">",
        severity=rule.severity,
        since=SINCE,
        at=SINCE,
        incident="i1",
    )


def ctx(**fields) -> RenderContext:
    return RenderContext(hostname="vm", charts="off", **fields)


def test_a_single_alert_subject_names_the_mount_the_probe_declares_first():
    names = {"disk.used_percent": ("mount", "device", "fstype")}
    assert subject([event()], ctx(label_names=names)) == "[CRITICAL] vm: disk-full /srv/db — disk.used_percent 96 > 95"


def test_subjects_of_one_rule_over_two_mounts_differ_without_declared_labels():
    a = subject([event()], ctx())
    b = subject([event(labels=(("device", "/dev/sdc1"), ("fstype", "ext4"), ("mount", "/srv/logs")))], ctx())
    assert a != b
    assert "disk-full /dev/sdb1 ext4 /srv/db —" in a


def test_a_label_the_rule_pins_is_not_repeated_in_the_subject():
    pinned = Rule(name="root-full", metric="disk.used_percent", labels={"mount": "/"}, above=95, severity="critical")
    names = {"disk.used_percent": ("mount", "device", "fstype")}
    only_root = event(pinned, labels=(("mount", "/"),))
    assert subject([only_root], ctx(label_names=names)) == "[CRITICAL] vm: root-full — disk.used_percent 96 > 95"


def test_the_agent_declares_the_probes_label_order_for_subjects(tmp_path):
    from alertmail.cli.options import load

    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\n[mail]\nroute = ["pickup"]\n')
    cfg, plugins = load(config)
    options = render_options(cfg, plugins)
    assert options["label_names"]["disk.used_percent"][0] == "mount"
    assert options["config_path"] == str(config.resolve())


def _texts(msg) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def test_the_silence_command_in_a_mail_names_the_absolute_config_path():
    path = "/etc/alert mail/config.toml"
    text, html = _texts(render_alert([event()], ctx(config_path=path)))
    command = f"alertmail silence add -c {shlex.quote(path)} --rule disk-full --for 2h"
    assert command in text
    assert "alertmail silence add -c &#39;/etc/alert mail/config.toml&#39; --rule disk-full" in html


def test_the_silence_command_in_a_digest_names_the_absolute_config_path():
    msg = render_digest_mail([event()], ctx(config_path="/etc/alertmail/config.toml"), notice="n", journal="j", since=SINCE - 900)
    text, html = _texts(msg)
    assert "alertmail silence add -c /etc/alertmail/config.toml --rule disk-full --for 2h" in text
    assert "alertmail silence add -c /etc/alertmail/config.toml --rule disk-full" in html


def test_the_pasted_silence_command_silences_the_agent_of_that_config(tmp_path):
    """The command printed in the mail, run from another folder, lands in that config's state_dir."""
    import subprocess

    from tests.relay_peers import ALERTMAIL

    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.toml"
    config.write_text('[agent]\nstate_dir = "state"\n[mail]\nroute = ["pickup"]\n')
    text, _ = _texts(render_alert([event()], ctx(config_path=str(config))))
    line = next(x.strip() for x in text.splitlines() if x.strip().startswith("alertmail silence add"))
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    done = subprocess.run([*ALERTMAIL, *shlex.split(line)[1:]], cwd=elsewhere, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (etc / "state" / "silences.toml").exists()
    assert not Path(elsewhere / "var").exists()
