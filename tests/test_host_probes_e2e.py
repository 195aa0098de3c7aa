"""`alertmail run` end to end with the host probes: a rule on ``logfile.matches`` fires when a
matching line is written to a log that logrotate has just rotated, and the mail in pickup/
carries that line; a rule on ``file.exists`` mails why the file is missing."""

from __future__ import annotations

from tests.probe_agent import agent_running, firing, pickup_mails, run_until_mailed, text_of, wait_for, write_config
from tests.test_logfile_probe import logrotate


def test_a_rule_on_logfile_matches_fires_after_rotation_and_the_mail_carries_the_matching_line(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("ERROR from before the agent started: not news\n")
    config = write_config(
        tmp_path,
        f"""
        [probes.logfile]
        interval = "1s"
        checks = [{{ name = "app", path = "{log}", pattern = "ERROR|CRITICAL" }}]

        [[rules]]
        name = "app-errors"
        metric = "logfile.matches"
        labels = {{ check = "app" }}
        above = 0
        severity = "critical"
        """,
    )
    with agent_running(config) as agent:
        # Until the probe follows the log, a line is not news: write one at each look until one mails.
        def warmed_up():
            with open(log, "a") as out:
                out.write("ERROR warm-up\n")
            return firing(tmp_path)

        wait_for(warmed_up, timeout=60, what="a first firing mail")
        wait_for(lambda: [m for m in pickup_mails(tmp_path) if m["X-Alertmail-Kind"] == "resolved"], what="its recovery")
        logrotate(tmp_path, log, "create")
        with open(log, "a") as out:
            out.write("INFO all fine\nCRITICAL payment gateway refused: 503 from 127.0.0.1:8443\n")
        mails = wait_for(lambda: [m for m in firing(tmp_path) if "payment gateway" in text_of(m)], what="the mail of the line")
    mail = mails[0]
    assert "app-errors" in mail["Subject"], agent.log
    text = text_of(mail)
    assert "The probe said:" in text, text
    assert "CRITICAL payment gateway refused: 503 from 127.0.0.1:8443" in text
    assert "from before the agent started" not in text
    html = mail.get_body(("html",)).get_content()
    assert "CRITICAL payment gateway refused" in html


def test_a_rule_on_file_exists_mails_why_the_file_is_missing(tmp_path):
    mails, agent = run_until_mailed(
        tmp_path,
        f"""
        [probes.file]
        interval = "1s"
        checks = [{{ name = "backup", path = "{tmp_path}/backups/db-*.sql.gz" }}]

        [[rules]]
        name = "backup-missing"
        metric = "file.exists"
        labels = {{ check = "backup" }}
        below = 1
        """,
    )
    text = text_of(mails[0])
    assert "backup-missing" in mails[0]["Subject"], agent.log
    assert f"no such folder: {tmp_path}/backups" in text
