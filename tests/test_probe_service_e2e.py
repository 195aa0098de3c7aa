"""`alertmail run` with service checks: a rule on ``http.up`` fires and its mail (pickup
transport) says why the check is down; a certificate about to expire is mailed with its date."""

from __future__ import annotations

from pathlib import Path

from tests.peers import free_port
from tests.probe_agent import pickup_mails, run_until_mailed, text_of, write_config
from tests.service_peers import HttpServer, make_certs


def test_a_rule_on_http_up_fires_and_the_mail_says_why_the_check_is_down(tmp_path):
    port = free_port()  # nothing listens there
    with HttpServer() as server:
        mails, agent = run_until_mailed(
            tmp_path,
            f"""
            [probes.http]
            checks = [
              {{ name = "shop", url = "http://127.0.0.1:{port}/health" }},
              {{ name = "api", url = "{server.url("/broken")}" }},
              {{ name = "home", url = "{server.url("/")}" }},
            ]
            """,
            """
            [[rules]]
            name = "site-down"
            metric = "http.up"
            below = 1
            severity = "critical"
            """,
            until=lambda: (m := pickup_mails(tmp_path)) and "HTTP 500" in "".join(map(text_of, m)) and m,
            what="the firing mails",
        )
    assert agent.proc.returncode == 0, agent.log
    text = "\n".join(text_of(m) for m in mails)
    assert {m["X-Alertmail-Kind"] for m in mails} == {"firing"}
    assert f"http://127.0.0.1:{port}/health: connection refused" in text
    assert "HTTP 500 Internal Server Error" in text
    assert "check=home" not in text and not any("home" in m["Subject"] for m in mails)


def test_a_certificate_about_to_expire_is_mailed_with_its_date(tmp_path):
    certs = make_certs(tmp_path / "tls", days=3)
    with HttpServer(certs.server_context()) as server:
        mails, agent = run_until_mailed(
            tmp_path,
            f"""
            [probes.tcp]
            checks = [{{ name = "web-tls", host = "127.0.0.1", port = {server.port}, tls = true, ca_file = "{certs.ca}" }}]
            """,
            """
            [[rules]]
            name = "certificate-expiring"
            metric = "tls.cert_days_left"
            below = 14
            severity = "warning"
            """,
            what="the firing mail",
        )
    assert agent.proc.returncode == 0, agent.log
    text = text_of(mails[0])
    assert "certificate-expiring" in mails[0]["Subject"]
    assert f"certificate valid, expires in 3.0 days ({certs.not_after:%Y-%m-%d}" in text


def test_the_documented_service_check_examples_pass_check(tmp_path):
    import re
    import subprocess
    import sys

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    section = doc.split("## Service probes", 1)[1]
    blocks = re.findall(r"```toml\n(.*?)```", section, re.S)
    assert len(blocks) >= 3
    config = write_config(tmp_path, "\n".join(blocks))
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
