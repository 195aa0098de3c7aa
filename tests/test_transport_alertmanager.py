"""The alertmanager transport against real Alertmanagers on loopback, through the agent and its durable queue."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import subprocess
import sys
import time

import pytest

from alertmail.model import Envelope, Status, TransportContext
from alertmail.rules.model import AlertEvent, Rule
from alertmail.rules.wire import ALERTS_HEADER, SEAL_HEADER, alert_key, alerts_in, encode_alerts, seal, sealed_alerts
from tests.fleet_peers import Alertmanager, agent_config
from tests.test_agent_e2e import start_agent, stop_agent, wait_for

RULE = Rule("disk-full", "disk.used_percent", above=90, severity="critical", description="the disk is nearly full")


def event(kind: str, labels=(("mount", "/data"),), **more) -> AlertEvent:
    fields = {"value": 95.0, "threshold": 90.0, "comparison": ">", "severity": "critical", "since": 1000.0, "at": 1010.0}
    fields.update(incident="abc", fired_at=1005.0, state="firing" if kind != "resolved" else "ok")
    fields.update(more)
    return AlertEvent(kind=kind, rule=RULE, labels=labels, **fields)


def test_alert_header_survives_folding_whatever_the_labels_hold():
    hostile = (("mount", "/data\r\nBcc: evil@example.com " + "é" * 200),)
    msg = email.message.EmailMessage()
    msg["Subject"] = "x"
    msg[ALERTS_HEADER] = encode_alerts([event("firing", hostile)] * 20)
    msg.set_content("text")
    data = msg.as_bytes(policy=email.policy.SMTP)
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    alerts = alerts_in(data)
    assert len(alerts) == 20 and alerts[0]["labels"] == dict(hostile)
    assert alerts[0]["rule"] == "disk-full" and alerts[0]["fired_at"] == 1005.0


def test_mail_without_alerts_carries_none():
    assert alerts_in(b"From: a@b\r\nSubject: delivery report\r\n\r\nbody\r\n") is None


def transport(tmp_path, urls, **options):
    from alertmail.plugins.transports.alertmanager import AlertmanagerSettings, AlertmanagerTransport

    settings = AlertmanagerSettings(**{"urls": urls, "timeout": 5.0, "resend": 0.0, **options})
    return AlertmanagerTransport(settings, TransportContext(state_dir=tmp_path, hostname="web1.test"))


def test_alert_becomes_an_api_v2_alert(tmp_path):
    am = transport(
        tmp_path,
        ["http://127.0.0.1:9"],
        labels={"env": "prod", "severity": "ignored"},
        generator_url="http://grafana/{rule}",
        missed_for=0.0,
    )
    [(_, body, active)] = am._converted(json.loads(json.dumps(alerts_in_event(event("firing")))))
    assert active
    assert body["labels"] == {
        "alertname": "disk-full",
        "instance": "web1.test",
        "severity": "critical",
        "mount": "/data",
        "env": "prod",
    }
    assert body["annotations"]["summary"] == "disk-full on web1.test: 95 > 90"
    assert body["annotations"]["description"] == "the disk is nearly full"
    assert body["startsAt"] == 1005.0  # made RFC 3339 on Alertmanager's clock when sent
    assert body["generatorURL"] == "http://grafana/disk-full"
    payload, _ = am._payload([alerts_in_event(event("resolved", at=2000.0))], now=3000.0)
    assert payload[0]["endsAt"] == 2000.0
    assert "runbook_url" not in body["annotations"]  # the rule has none


def test_a_rules_runbook_becomes_the_runbook_url_annotation(tmp_path):
    import dataclasses

    with_runbook = dataclasses.replace(RULE, runbook="https://wiki.example.com/runbooks/disk")
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    firing = dataclasses.replace(event("firing"), rule=with_runbook)
    [(_, body, _)] = am._converted(json.loads(json.dumps(alerts_in_event(firing))))
    assert body["annotations"]["runbook_url"] == "https://wiki.example.com/runbooks/disk"


def test_instance_is_the_host_that_saw_the_alert_also_through_a_relay(tmp_path):
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    [(_, body, _)] = am._converted(alerts_in_event(event("firing"), host="db7.test"))
    assert body["labels"]["instance"] == "db7.test" and "on db7.test:" in body["annotations"]["summary"]


def test_escalation_ends_the_alert_at_the_old_severity(tmp_path):
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    converted = am._converted(alerts_in_event(event("escalated", severity="critical", previous_severity="warning")))
    assert [(c[1]["labels"]["severity"], c[2]) for c in converted] == [("critical", True), ("warning", False)]


def alerts_in_event(e: AlertEvent, host: str = "") -> dict:
    msg = email.message.EmailMessage()
    msg[ALERTS_HEADER] = encode_alerts([e], host)
    return alerts_in(msg.as_bytes())[0]


def sealed(tmp_path, events=(), key=None) -> bytes:
    """A mail as the agent's notifier seals it, with the key of STATE_DIR ``tmp_path`` (or ``key``)."""
    msg = email.message.EmailMessage()
    msg["From"] = "alertmail@web1.test"
    msg["Subject"] = "alert"
    value = encode_alerts(list(events), "web1.test") if events else None
    if value is not None:
        msg[ALERTS_HEADER] = value
    msg[SEAL_HEADER] = seal([value] if value else [], key or alert_key(tmp_path), time.time())
    msg.set_content("text")
    return msg.as_bytes(policy=email.policy.SMTP)


def test_the_agents_own_mail_without_alerts_is_delivered_as_nothing_to_do(tmp_path):
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    result = asyncio.run(am.send(sealed(tmp_path), Envelope("a@b", ("ops@x",))))
    status = result.recipients["ops@x"]
    assert status.status is Status.DELIVERED and "no alerts" in status.message


def test_mail_the_agent_did_not_seal_is_left_to_the_next_transport_whatever_its_headers_say(tmp_path):
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    forged = email.message.EmailMessage()
    forged["Subject"] = "hello"
    forged[ALERTS_HEADER] = encode_alerts([event("resolved")], "web1.test")
    forged.set_content("text")
    other = sealed(tmp_path, [event("firing")], key=b"k" * 32)  # sealed, but with a key nobody listed
    # A real sealed mail with one more alerts header slipped in: the seal no longer matches.
    extra = f"{ALERTS_HEADER}: {encode_alerts([event('resolved')])}\r\n".encode()
    tampered = sealed(tmp_path, [event("firing")]).replace(b"Subject: alert\r\n", b"Subject: alert\r\n" + extra)
    assert tampered.count(ALERTS_HEADER.encode()) == 2
    for data in (b"From: a@b\r\nSubject: hi\r\n\r\nbody\r\n", forged.as_bytes(), other, tampered):
        status = asyncio.run(am.send(data, Envelope("a@b", ("ops@x",)))).recipients["ops@x"]
        assert status.status is Status.TEMPORARY and "next transport" in status.message, status
    assert not am.known  # nothing was taken as an alert


def test_a_resolved_incident_alertmanager_never_had_firing_is_sent_as_firing_for_missed_for(tmp_path):
    am = transport(tmp_path, ["http://127.0.0.1:9"], missed_for=300.0)
    payload, records = am._payload([alerts_in_event(event("resolved", at=2000.0))], now=3000.0)
    [alert] = payload
    assert alert["endsAt"] == 3300.0 and "while Alertmanager could not be reached" in alert["annotations"]["missed"]
    # Told of it firing before it ended: a plain recovery.
    am.known.update({key: {**record, "at": 1005.0, "active": True, "told": 1500.0} for key, record in records.items()})
    [alert] = am._payload([alerts_in_event(event("resolved", at=2000.0))], now=3000.0)[0]
    assert alert["endsAt"] == 2000.0 and "missed" not in alert["annotations"]
    # Kept by a version that did not note when Alertmanager took it: counts as told, a plain recovery.
    [(key, body, _)] = am._converted(alerts_in_event(event("firing")))
    (tmp_path / "alertmanager.json").write_text(json.dumps({key: {"at": 1010.0, "active": True, "alert": body}}))
    am = transport(tmp_path, ["http://127.0.0.1:9"], missed_for=300.0)
    [alert] = am._payload([alerts_in_event(event("resolved", at=2000.0))], now=3000.0)[0]
    assert alert["endsAt"] == 2000.0 and "missed" not in alert["annotations"]


def am_config(tmp_path, urls, extra=""):
    table = f"""
[queue]
retry = ["1s"]

[transports.alertmanager]
urls = {json.dumps(urls)}
resend = "1s"
labels = {{ env = "test" }}
generator_url = "http://grafana.test/d/{{rule}}"
{extra}
"""
    return agent_config(tmp_path / "agent", table, route='["alertmanager"]')


def amtool_alerts(am: Alertmanager) -> str:
    return am.amtool("alert", "query", "-o", "extended", "alertname=gauge-high")


@pytest.mark.peers
def test_firing_alert_reaches_every_alertmanager_stays_while_firing_and_resolves(tmp_path):
    # Under .ci/next-year the agent's clock is a year ahead of Alertmanager's (Go ignores libfaketime):
    # the alert still resolves only because its times are sent on Alertmanager's clock.
    with Alertmanager(tmp_path / "am1") as am1, Alertmanager(tmp_path / "am2") as am2:
        config = am_config(tmp_path, [am1.url, am2.url])
        value = config.parent / "plugins.d" / "value.txt"
        value.write_text("93.5")
        agent = start_agent(config)
        try:
            for am in (am1, am2):
                listed = wait_for(
                    lambda am=am: "gauge-high" in amtool_alerts(am) and amtool_alerts(am), timeout=30, what="the alert"
                )
                for label in (
                    'alertname="gauge-high"',
                    'instance="web1.test"',
                    'severity="critical"',
                    'mount="/data"',
                    'env="test"',
                ):
                    assert label in listed, listed
            print("amtool alert query -o extended:\n" + listed)
            [alert] = am1.alerts()
            assert alert["annotations"]["summary"] == "gauge-high on web1.test: 93.5 > 50"
            assert alert["generatorURL"] == "http://grafana.test/d/gauge-high"
            # Firing on and on: re-sent every second with endsAt 4 s ahead, so Alertmanager keeps it.
            time.sleep(8)
            assert "gauge-high" in amtool_alerts(am1)
            value.write_text("12")
            for am in (am1, am2):
                wait_for(lambda am=am: "gauge-high" not in amtool_alerts(am), timeout=30, what="the alert resolved")
        finally:
            log = stop_agent(agent)
        assert agent.returncode == 0, log


@pytest.mark.peers
def test_alertmanager_down_the_alert_waits_in_the_queue_and_arrives_when_it_starts(tmp_path):
    am = Alertmanager(tmp_path / "am")
    config = am_config(tmp_path, [am.url])
    (config.parent / "plugins.d" / "value.txt").write_text("93.5")
    agent = start_agent(config)
    try:
        queue = config.parent / "var" / "queue"
        wait_for(lambda: any(b'"attempts":2' in p.read_bytes() for p in queue.rglob("*.json")), timeout=30, what="retries")
        with am:
            wait_for(lambda: "gauge-high" in amtool_alerts(am), timeout=30, what="the queued alert delivered")
    finally:
        log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "deferred" in log and "ConnectionRefusedError" in log, log


@pytest.mark.peers
def test_a_4xx_answer_sends_the_message_to_badmail_with_the_reply(tmp_path):
    with Alertmanager(tmp_path / "am") as am:
        config = am_config(tmp_path, [am.url + "/no-such-prefix"])
        (config.parent / "plugins.d" / "value.txt").write_text("93.5")
        agent = start_agent(config)
        try:
            badmail = config.parent / "var" / "badmail"
            reasons = wait_for(lambda: list(badmail.glob("*.bdr")), timeout=30, what="a badmail reason")
        finally:
            log = stop_agent(agent)
        reason = reasons[0].read_text()
        assert "404" in reason and "/no-such-prefix/api/v2/alerts" in reason, reason
        assert am.alerts() == []
    assert agent.returncode == 0, log


def test_loading_the_transport_leaves_urllib_for_its_first_request():
    # Every agent loads the bundled plugins; urllib.request (with ssl and http.client) would cost 1.4 MB of RSS.
    code = "import sys, alertmail.plugins.transports.alertmanager; print('urllib.request' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.peers
def test_a_cluster_member_that_was_down_gets_the_firing_alert_with_the_next_resend(tmp_path):
    with Alertmanager(tmp_path / "am1") as am1:
        am2 = Alertmanager(tmp_path / "am2")
        config = am_config(tmp_path, [am1.url, am2.url])
        (config.parent / "plugins.d" / "value.txt").write_text("93.5")
        agent = start_agent(config)
        try:
            wait_for(lambda: "gauge-high" in amtool_alerts(am1), timeout=30, what="the alert at the member that is up")
            with am2:
                wait_for(lambda: "gauge-high" in amtool_alerts(am2), timeout=30, what="the alert re-sent to the member back up")
        finally:
            log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "via alertmanager" in log and "deferred" not in log, "one member taking it is a delivery"


def test_the_sealing_key_is_made_once_private_and_kept(tmp_path):
    key = alert_key(tmp_path / "state")
    assert len(key) == 32 and alert_key(tmp_path / "state") == key
    assert (tmp_path / "state" / "alerts.key").stat().st_mode & 0o777 == 0o600


def test_a_sealed_message_is_taken_only_while_young_and_its_events_are_never_later_than_its_seal(tmp_path):
    data = sealed(tmp_path, [event("firing", at=4_000_000_000.0)])  # an event dated after its own seal
    key = alert_key(tmp_path)
    alerts, why = sealed_alerts(data, [key], time.time())
    assert why == "" and alerts[0]["sealed_at"] <= time.time()
    assert sealed_alerts(data, [key], time.time() + 4 * 86400)[0] is None
    am = transport(tmp_path, ["http://127.0.0.1:9"])
    _, records = am._payload(alerts, now=time.time())
    assert all(r["at"] <= time.time() + 10 for r in records.values())  # a far-future time cannot pin the alert
