"""`alertmail run` with service checks: a rule on ``http.up`` fires and its mail (pickup
transport) says why the check is down; a certificate about to expire is mailed with its date."""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from tests.service_peers import HttpServer, make_certs
from tests.test_agent_e2e import pickup_mails, start_agent, stop_agent, wait_for


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(folder: Path, probes: str, rules: str) -> Path:
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent("""
        [agent]
        state_dir = "var"
        interval = "1s"
        resolution = "1s"

        [mail]
        from = "alertmail@test.example"
        to = ["ops@test.example"]
        route = ["pickup"]

        [notify]
        group_wait = "0s"
        """)
        + textwrap.dedent(probes)
        + textwrap.dedent(rules)
    )
    return config


def text_of(mail) -> str:
    return mail.get_body(preferencelist=("plain",)).get_content()


def test_a_rule_on_http_up_fires_and_the_mail_says_why_the_check_is_down(tmp_path):
    port = closed_port()
    with HttpServer() as server:
        config = write_config(
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
        )
        proc = start_agent(config)
        try:
            mails = wait_for(
                lambda: (m := pickup_mails(tmp_path)) and "HTTP 500" in "".join(map(text_of, m)) and m, 60, "the firing mails"
            )
        finally:
            log = stop_agent(proc)
    assert proc.returncode == 0, log
    text = "\n".join(text_of(m) for m in mails)
    assert {m["X-Alertmail-Kind"] for m in mails} == {"firing"}
    assert f"http://127.0.0.1:{port}/health: connection refused" in text
    assert "HTTP 500 Internal Server Error" in text
    assert "check=home" not in text and not any("home" in m["Subject"] for m in mails)


def test_a_certificate_about_to_expire_is_mailed_with_its_date(tmp_path):
    certs = make_certs(tmp_path / "tls", days=3)
    with HttpServer(certs.server_context()) as server:
        config = write_config(
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
        )
        proc = start_agent(config)
        try:
            mails = wait_for(lambda: pickup_mails(tmp_path), 60, "the firing mail")
        finally:
            log = stop_agent(proc)
    assert proc.returncode == 0, log
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
    config = write_config(tmp_path, "\n".join(blocks), "")
    result = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
