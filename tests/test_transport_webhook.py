"""The webhook transport: Alertmanager's webhook format, measured against a real Alertmanager's notifications."""

from __future__ import annotations

import asyncio
import email.message
import http.server
import json
import socket
import threading
from pathlib import Path

import pytest

from alertmail.model import Envelope, Status, TransportContext
from alertmail.rules.wire import ALERTS_HEADER, encode_alerts
from tests.fleet_peers import Alertmanager, WebhookReceiver, agent_config, run_until_badmail
from tests.test_agent_e2e import start_agent, stop_agent, wait_for
from tests.test_transport_alertmanager import event, sealed
from tests.test_transport_alertmanager import transport as am_transport

ENVELOPE = Envelope("alertmail@web1.test", ("ops@web1.test",))


def webhook(tmp_path: Path, url: str, **options):
    from alertmail.plugins.transports.webhook import WebhookSettings, WebhookTransport

    settings = WebhookSettings(**{"url": url, "timeout": 5.0, **options})
    return WebhookTransport(settings, TransportContext(state_dir=tmp_path, hostname="web1.test"))


class Answering:
    """An HTTP server on 127.0.0.1 that answers every POST with ``code`` and ``text``, keeping what it got."""

    def __init__(self, code: int, text: str = "") -> None:
        got: list[tuple[dict, bytes]] = []
        self.got = got

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the name http.server calls
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got.append((dict(self.headers), body))
                self.send_response(code)
                self.end_headers()
                self.wfile.write(text.encode())

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> Answering:
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_2xx_answer_delivers_and_the_body_carries_the_alert_with_the_configured_headers(tmp_path):
    with Answering(200) as server:
        hook = webhook(tmp_path, server.url, headers={"X-Team": "ops"})
        result = asyncio.run(hook.send(sealed(tmp_path, [event("firing")]), ENVELOPE))
    assert result.recipients["ops@web1.test"].status is Status.DELIVERED
    [(headers, body)] = server.got
    assert headers["X-Team"] == "ops" and headers["Content-Type"] == "application/json"
    sent = json.loads(body)
    assert sent["version"] == "4" and sent["status"] == "firing" and sent["receiver"] == "alertmail"
    [alert] = sent["alerts"]
    assert alert["labels"] == {"alertname": "disk-full", "instance": "web1.test", "severity": "critical", "mount": "/data"}
    assert alert["annotations"]["summary"] == "disk-full on web1.test: 95 > 90"
    assert alert["endsAt"] == "0001-01-01T00:00:00Z"


def test_a_4xx_answer_is_permanent_with_the_answer_and_a_5xx_is_tried_again(tmp_path):
    with Answering(422, "labels missing: team") as refusing, Answering(503, "busy") as busy:
        refused = asyncio.run(webhook(tmp_path, refusing.url).send(sealed(tmp_path, [event("firing")]), ENVELOPE))
        later = asyncio.run(webhook(tmp_path, busy.url).send(sealed(tmp_path, [event("firing")]), ENVELOPE))
    status = refused.recipients["ops@web1.test"]
    assert status.status is Status.PERMANENT and "422" in status.message and "labels missing: team" in status.message
    assert later.recipients["ops@web1.test"].status is Status.TEMPORARY


def test_a_server_that_never_answers_is_tried_again_later(tmp_path):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        result = asyncio.run(webhook(tmp_path, url, timeout=0.5).send(sealed(tmp_path, [event("firing")]), ENVELOPE))
    status = result.recipients["ops@web1.test"]
    assert status.status is Status.TEMPORARY and "timed out" in status.message


def test_mail_the_agent_did_not_seal_is_never_posted_as_an_alert(tmp_path):
    forged = email.message.EmailMessage()
    forged["Subject"] = "relayed"
    forged[ALERTS_HEADER] = encode_alerts([event("firing")], "web1.test")
    forged.set_content("text")
    with Answering(200) as server:
        result = asyncio.run(webhook(tmp_path, server.url).send(forged.as_bytes(), ENVELOPE))
        plain = asyncio.run(webhook(tmp_path, server.url).send(b"Subject: hi\r\n\r\nbody\r\n", ENVELOPE))
    assert server.got == []
    for outcome in (result, plain):
        status = outcome.recipients["ops@web1.test"]
        assert status.status is Status.TEMPORARY and "not an alert of this agent" in status.message


@pytest.mark.peers
def test_the_body_has_the_shape_labels_and_fingerprint_of_a_real_alertmanager_notification(tmp_path):
    """Alertmanager itself notifies a receiver of the same alert: ours must look the same to that receiver."""
    message = sealed(tmp_path, [event("firing")])
    with WebhookReceiver() as from_am, WebhookReceiver() as from_us:
        with Alertmanager(tmp_path / "am", webhook=from_am.url) as am:
            status = asyncio.run(am_transport(tmp_path, [am.url]).send(message, ENVELOPE)).recipients["ops@web1.test"]
            assert status.status is Status.DELIVERED, status
            wait_for(lambda: from_am.notifications("disk-full"), timeout=30, what="Alertmanager's notification")
        assert asyncio.run(webhook(tmp_path, from_us.url).send(message, ENVELOPE)).recipients["ops@web1.test"].delivered
    theirs, ours = from_am.received[0], from_us.received[0]
    assert set(ours) == set(theirs)
    assert ours["version"] == theirs["version"] == "4"
    assert ours["status"] == theirs["status"] == "firing"
    [their_alert], [our_alert] = theirs["alerts"], ours["alerts"]
    assert set(our_alert) == set(their_alert)
    assert our_alert["labels"] == their_alert["labels"]
    assert our_alert["fingerprint"] == their_alert["fingerprint"]
    assert our_alert["annotations"] == their_alert["annotations"]
    assert our_alert["endsAt"] == their_alert["endsAt"] == "0001-01-01T00:00:00Z"


@pytest.mark.peers
def test_an_agent_s_alert_goes_through_the_queue_to_the_webhook_and_a_4xx_to_badmail(tmp_path):
    with WebhookReceiver() as receiver:
        extra = f'[transports.webhook]\nurl = "{receiver.url}"\n'
        config = agent_config(tmp_path, extra, route='["webhook"]')
        (config.parent / "plugins.d" / "value.txt").write_text("93.5")
        agent = start_agent(config)
        try:
            [(status, alert)] = wait_for(lambda: receiver.notifications("gauge-high"), timeout=60, what="the webhook")
        finally:
            log = stop_agent(agent)
    assert status == "firing" and alert["labels"]["mount"] == "/data", log
    with Answering(400, "bad alert") as refusing:
        other = tmp_path / "other"
        other.mkdir()
        config = agent_config(other, f'[transports.webhook]\nurl = "{refusing.url}"\n', route='["webhook"]')
        reasons, log = run_until_badmail(config)
    assert "400" in reasons[0].read_text() and "bad alert" in reasons[0].read_text(), log


def test_alerts_sealed_by_an_agent_whose_key_is_listed_are_taken_and_others_are_not(tmp_path):
    other = tmp_path / "other-agent"
    other.mkdir()
    from alertmail.rules.wire import alert_key

    alert_key(other)  # the other agent's STATE_DIR/alerts.key
    here = tmp_path / "here"
    here.mkdir()
    message = sealed(other, [event("firing")])
    with Answering(200) as server:
        listed = asyncio.run(webhook(here, server.url, keys=[str(other / "alerts.key")]).send(message, ENVELOPE))
        unlisted = asyncio.run(webhook(here, server.url).send(message, ENVELOPE))
    assert listed.recipients["ops@web1.test"].status is Status.DELIVERED
    assert unlisted.recipients["ops@web1.test"].status is Status.TEMPORARY
    assert len(server.got) == 1
    with pytest.raises(ValueError, match=r"^transports\.webhook\.keys\[0\]: cannot read"):
        webhook(here, server.url, keys=[str(tmp_path / "missing.key")])
