"""`alertmail run` end to end: a single-file probe plugin drives a rule; mails land in pickup/."""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.gauge import install_gauge
from tests.source_tree import copy_source

# A hostile label: a probe may return anything; no header may carry it raw.
HOSTILE = {"mount": "/data\r\nBcc: evil@example.com"}


def write_config(folder: Path, extra: str = "") -> Path:
    install_gauge(folder, labels=HOSTILE)
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        state_dir = "var"
        interval = "1s"
        resolution = "1s"
        plugin_dirs = ["plugins.d"]
        timezone = "Europe/Berlin"

        [mail]
        from = "alertmail@test.example"
        to = ["ops@test.example", "oncall@test.example"]
        route = ["pickup"]

        [notify]
        group_wait = "0s"
        max_mails_per_hour = 0       # reminders every 3 s would otherwise reach the storm cap

        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        labels = {{ mount = "/data*" }}
        above = 50
        clear = 40
        repeat = "3s"
        severity = "critical"
        {extra}
    """)
    )
    return config


def pickup_mails(folder: Path) -> list[email.message.EmailMessage]:
    pickup = folder / "var" / "pickup"
    if not pickup.is_dir():
        return []
    files = sorted(p for p in pickup.iterdir() if p.suffix == ".eml")
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in files]


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_agent(config: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "alertmail", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=config.parent,
    )


def stop_agent(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.stderr.read().decode(errors="replace") if proc.stderr else ""


def kinds(mails):
    return [m["X-Alertmail-Kind"] for m in mails]


def test_firing_reminder_and_threaded_recovery_land_in_pickup(tmp_path):
    config = write_config(tmp_path)
    value = tmp_path / "plugins.d" / "value.txt"
    proc = start_agent(config)
    try:
        time.sleep(2)
        assert pickup_mails(tmp_path) == [], "no mail while the value is fine"
        value.write_text("93.4")
        wait_for(lambda: "reminder" in kinds(pickup_mails(tmp_path)), what="firing mail and a reminder")
        value.write_text("45")  # inside the hysteresis band: no recovery yet
        time.sleep(2)
        assert "resolved" not in kinds(pickup_mails(tmp_path))
        value.write_text("12")
        wait_for(lambda: "resolved" in kinds(pickup_mails(tmp_path)), what="recovery mail")
    finally:
        log = stop_agent(proc)
    assert proc.returncode == 0, log

    mails = pickup_mails(tmp_path)
    firing = next(m for m in mails if m["X-Alertmail-Kind"] == "firing")
    reminder = next(m for m in mails if m["X-Alertmail-Kind"] == "reminder")
    resolved = next(m for m in mails if m["X-Alertmail-Kind"] == "resolved")
    for mail in (firing, reminder, resolved):
        for header in ("Date", "From", "To", "Message-ID", "Subject"):
            assert mail[header], f"{header} missing"
        assert mail["Auto-Submitted"] == "auto-generated"
        assert mail["X-Sender"] == "alertmail@test.example"
        assert sorted(mail.get_all("X-Receiver")) == ["oncall@test.example", "ops@test.example"]
        assert [a.addr_spec for a in mail["To"].addresses] == ["ops@test.example", "oncall@test.example"]
        assert mail["To"] == "ops <ops@test.example>, oncall <oncall@test.example>"
        assert mail["Bcc"] is None, "a hostile label must not become a header"
        for name, value in mail.items():
            assert "\r" not in str(value) and "\n" not in str(value), f"{name} carries a line break"
    assert firing["Subject"].startswith("[CRITICAL] ")
    assert "gauge-high" in firing["Subject"] and "test.gauge 93.4 > 50" in firing["Subject"]
    assert "RESOLVED" in resolved["Subject"]
    root = firing["Message-ID"]
    assert len({firing["Message-ID"], reminder["Message-ID"], resolved["Message-ID"]}) == 3
    for follow_up in (reminder, resolved):
        assert follow_up["In-Reply-To"] == root
        assert root in follow_up["References"]
    body = firing.get_body(("plain",)).get_content()
    assert "93.4" in body and "gauge-high" in body
    assert "CET" in body or "CEST" in body, "times are shown in the configured timezone"


def test_agent_refuses_to_start_on_a_bad_config(tmp_path):
    config = write_config(tmp_path, extra="above_x = 3")
    proc = start_agent(config)
    proc.wait(30)
    err = proc.stderr.read().decode()
    assert proc.returncode == 78, err
    assert "rules[0].above_x: unknown key" in err
    assert not (tmp_path / "var" / "pickup").exists()


def test_check_reports_every_mistake_with_its_key_path(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent("""
        [agent]
        intervall = "10s"
        timezone = "Mars/Olympus"

        [mail]
        to = ["ops@example.com\\nBcc: x@y"]
        route = ["pikup"]

        [transports.smtp]
        password = "hunter2"

        [probes.process]
        watch = [{ name = "web" }]

        [[rules]]
        name = "disk"
        metric = "disk.used_percent"
        above = "ninety"
        for = "soon"
    """)
    )
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 78
    err = result.stderr
    for expected in (
        "agent.intervall: unknown key; did you mean 'interval'?",
        "agent.timezone: unknown IANA timezone",
        "mail.to[0]: not a valid mail address",
        "mail.route[0]: no transport named 'pikup'; did you mean 'pickup'?",
        "transports.smtp.password: secrets are never written inline",
        "rules[0].above: expected a number, got 'ninety'",
        "rules[0].for: expected a duration",
        "probes.process.watch[0]: needs match",
    ):
        assert expected in err, f"{expected!r} not in:\n{err}"
    assert "hunter2" not in err
    assert all(line.startswith(str(config)) for line in err.splitlines()[:-1])


def test_check_accepts_the_default_config():
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(root / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_init_writes_a_config_that_check_accepts(tmp_path):
    out = tmp_path / "config.toml"
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "init", "-o", str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    import tomllib

    data = tomllib.loads(out.read_text())
    assert any(r["labels"].get("mount") == "/" for r in data["rules"] if "labels" in r)
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.skipif(os.environ.get("ALERTMAIL_SKIP_INSTALL_TEST") == "1", reason="asked to skip")
def test_non_editable_install_lists_bundled_plugins(tmp_path):
    source = copy_source(tmp_path / "source")  # its own build/ folder: the wheel test builds at the same time
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stderr
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.util as u; print(u.find_spec('plugins'))"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert site.stdout.strip() == "None", "no top-level package called plugins may be installed"
    listed = subprocess.run(
        [str(venv / "bin" / "alertmail"), "plugins"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert listed.returncode == 0, listed.stdout + listed.stderr
    for name in ("system", "pickup"):
        assert f"\n{name} " in listed.stdout
    assert "bundled" in listed.stdout and "disk" in listed.stdout


def test_alert_waiting_for_its_group_survives_kill_9(tmp_path):
    config = write_config(tmp_path)
    # group_wait 10 s: the kill comes about 3 s after the firing mail, so a busy machine has 7 s of margin
    # before the recovery would leave ahead of it.
    config.write_text(config.read_text().replace('group_wait = "0s"', 'group_wait = "10s"').replace('repeat = "3s"', ""))
    value = tmp_path / "plugins.d" / "value.txt"
    proc = start_agent(config)
    try:
        time.sleep(2)
        value.write_text("93.4")
        wait_for(lambda: pickup_mails(tmp_path), what="the firing mail")  # nothing waited: at once
        value.write_text("10")
        time.sleep(3)  # recovered, but the mail waits one group_wait after the firing mail
        assert kinds(pickup_mails(tmp_path)) == ["firing"]
    finally:
        proc.kill()
        proc.wait(10)
    proc = start_agent(config)
    try:
        mails = wait_for(lambda: pickup_mails(tmp_path)[1:], timeout=40, what="the recovery after the restart")
        mails = pickup_mails(tmp_path)
    finally:
        stop_agent(proc)
    assert kinds(mails) == ["firing", "resolved"]
    assert mails[1]["In-Reply-To"] == mails[0]["Message-ID"]


def test_restart_neither_repeats_the_firing_mail_nor_forgets_the_recovery(tmp_path):
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('repeat = "3s"', ""))
    value = tmp_path / "plugins.d" / "value.txt"
    proc = start_agent(config)
    try:
        time.sleep(2)
        value.write_text("93.4")
        wait_for(lambda: pickup_mails(tmp_path), what="the firing mail")
        time.sleep(1)
    finally:
        proc.kill()
        proc.wait(10)
    proc = start_agent(config)
    try:
        time.sleep(4)
        assert kinds(pickup_mails(tmp_path)) == ["firing"], "the restarted agent must not mail the incident again"
        value.write_text("12")
        wait_for(lambda: "resolved" in kinds(pickup_mails(tmp_path)), what="recovery mail")
    finally:
        stop_agent(proc)
    firing, resolved = pickup_mails(tmp_path)
    assert resolved["In-Reply-To"] == firing["Message-ID"]


def write_gauge_config(folder: Path, rules: str, *, disk: str = "sda", interval: str = "1s") -> Path:
    """The gauge plugin (label ``disk``) read every ``interval``, mails to pickup/ without charts, then ``rules``."""
    install_gauge(folder, labels={"disk": disk})
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        state_dir = "var"
        resolution = "1s"
        plugin_dirs = ["plugins.d"]

        [probes.gauge]
        interval = "{interval}"

        [mail]
        from = "alertmail@test.example"
        to = ["ops@test.example"]
        route = ["pickup"]
        charts = "off"

        [notify]
        group_wait = "0s"
        max_mails_per_hour = 0
        """)
        + textwrap.dedent(rules)
    )
    return config


def _absent_config(folder: Path, disk: str) -> tuple[Path, Path]:
    rules = """
        [[rules]]
        name = "gauge-gone"
        metric = "test.gauge"
        absent = "5s"

        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        """
    return write_gauge_config(folder, rules, disk=disk), folder / "plugins.d" / "value.txt"


def test_a_probe_reading_nan_is_reporting_and_mails_nothing(tmp_path):
    # docs/rules.md "NaN and infinities": NaN is "no reading", as in replay: seen (no absent), not compared.
    config, value = _absent_config(tmp_path, "sda")
    value.write_text("nan")
    proc = start_agent(config)
    try:
        time.sleep(10)
        mails = pickup_mails(tmp_path)
    finally:
        log = stop_agent(proc)
    assert proc.returncode == 0, log
    assert kinds(mails) == [], [m["Subject"] for m in mails]
    assert [line for line in log.splitlines() if " ERROR " in line and "gauge" in line] == [], log


def test_a_series_that_stopped_while_the_agent_was_down_is_reported_absent_with_its_labels(tmp_path):
    from alertmail.rules.wire import alerts_in

    config, _ = _absent_config(tmp_path, "sda")
    proc = start_agent(config)
    try:
        time.sleep(4)
    finally:
        log = stop_agent(proc)
    assert proc.returncode == 0, log
    stopped = time.time()
    _absent_config(tmp_path, "sdb")  # disk sda is gone while the agent is down; sdb reports instead
    time.sleep(2)
    proc = start_agent(config)
    try:
        mails = wait_for(lambda: pickup_mails(tmp_path), timeout=40, what="the absent mail of disk sda")
    finally:
        log = stop_agent(proc)
    assert kinds(mails) == ["firing"], log
    (alert,) = alerts_in(bytes(mails[0]))
    assert (alert["rule"], alert["comparison"], alert["labels"]) == ("gauge-gone", "absent", {"disk": "sda"})
    # Absent since its last sample before the stop, not since the restart.
    assert stopped - 3 < alert["since"] <= stopped
    assert alert["at"] - alert["since"] >= 5
