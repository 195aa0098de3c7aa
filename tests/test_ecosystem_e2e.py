"""`alertmail run` end to end with the probes that read other monitoring programs: a rule on
``nagios.status`` (a real check_smtp) fires and the mail in pickup/ says what the plugin said; one on a
series a real node_exporter serves from a textfile fires and the mail carries the series' labels."""

from __future__ import annotations

from pathlib import Path

from tests.peers import free_port
from tests.probe_agent import run_until_mailed
from tests.scrape_peers import NodeExporter, write_prom
from tests.test_nagios_probe import plugin


def run_until_mail(folder: Path, tables: str) -> tuple[object, str]:
    """The first mail of an agent run on ``tables``, and the agent's log."""
    mails, agent = run_until_mailed(folder, tables)
    return mails[0], agent.log


def test_a_rule_on_nagios_status_fires_and_the_mail_carries_the_plugins_output(tmp_path):
    closed = free_port()  # nothing listens: check_smtp is CRITICAL, "Connection refused"
    mail, log = run_until_mail(
        tmp_path,
        f"""
        [probes.nagios]
        interval = "1s"
        checks = [
          {{ name = "smtp", command = ["{plugin("check_smtp")}", "-H", "127.0.0.1", "-p", "{closed}"], timeout = "5s" }},
        ]

        [[rules]]
        name = "smtp-down"
        metric = "nagios.status"
        labels = {{ check = "smtp" }}
        above = 1
        severity = "critical"
        """,
    )
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "smtp-down" in mail["Subject"], log
    assert "The probe said:" in text
    assert "CRITICAL: " in text and "Connection refused" in text and str(closed) in text
    html = mail.get_body(("html",)).get_content()
    assert "probe said" in html and "Connection refused" in html


def test_a_rule_on_a_scraped_series_fires_and_the_mail_carries_the_series_labels(tmp_path):
    with NodeExporter(tmp_path / "textfiles") as exporter:
        write_prom(
            exporter.textfiles,
            "backup.prom",
            "# HELP backup_age_seconds Seconds since the last good backup.\n# TYPE backup_age_seconds gauge\n"
            'backup_age_seconds{job="db",site="eu"} 90000\nbackup_age_seconds{job="web",site="eu"} 60\n',
        )
        mail, log = run_until_mail(
            tmp_path,
            f"""
            [probes.scrape]
            interval = "1s"
            targets = [ {{ name = "node", url = "{exporter.url}" }} ]

            [[rules]]
            name = "backup-stale"
            metric = "scrape.backup_age_seconds"
            above = 86400
            severity = "warning"
            """,
        )
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "backup-stale" in mail["Subject"], log
    assert "labels      job=db, site=eu, target=node" in text
    assert "job=web" not in text


def test_a_scrape_over_its_limit_is_mailed_by_the_agents_self_alert_with_the_reason(tmp_path):
    big = write_prom(tmp_path / "textfiles", "big.prom", "".join(f"series_{i} {i}\n" for i in range(200)))
    mail, log = run_until_mail(
        tmp_path,
        f"""
        [probes.scrape]
        interval = "1s"
        files = ["{big}"]
        max_size = 500
        """,
    )
    text = mail.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert "agent-probe-failed" in mail["Subject"], log
    assert "labels      probe=scrape" in text
    assert f"target {big}: the file is over max_size (500 bytes): dropped this run" in text
