"""Who may raise alerts in Alertmanager: the agent's sealed alerts only, never what relayed mail claims.

A real Alertmanager, the agent with its relay in-process, and swaks as the outsider on 127.0.0.2.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time

import pytest

from alertmail.rules.model import AlertEvent, Rule
from alertmail.rules.wire import ALERTS_HEADER, SEAL_HEADER, encode_alerts, seal
from tests.fleet_peers import Alertmanager, agent_config, http_get
from tests.peers import free_port, wait_port
from tests.relay_peers import swaks_to
from tests.test_agent_e2e import start_agent, stop_agent, wait_for

GAUGE = Rule("gauge-high", "test.level", above=50, severity="critical")
YEAR_3000 = 32503680000.0


def alert(rule: Rule, kind: str, at: float, labels=(("mount", "/data"),)) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=rule,
        labels=labels,
        value=95.0 if kind != "resolved" else 10.0,
        threshold=50.0,
        comparison=">",
        severity="critical",
        since=at - 60,
        at=at,
        incident="x" * 16,
        fired_at=at - 30,
        state="firing" if kind != "resolved" else "ok",
    )


def relay_config(tmp_path, am: Alertmanager, port: int, route: str = '["alertmanager", "pickup"]'):
    extra = f"""
[queue]
retry = ["1s"]

[transports.alertmanager]
urls = ["{am.url}"]
resend = "1s"
keys = ["fleet.key"]

[transports.pickup]
directory = "out"

[relay]
enabled = true
listen = ["127.0.0.1:{port}"]
hostname = "relay.test"
greet_pause = "0s"
workers = 0
allow = ["127.0.0.1/32"]
local_domains = ["ops.test"]
local_recipients = ["@ops.test"]
route = {route}
"""
    return agent_config(tmp_path / "agent", extra, route='["alertmanager"]')


def alertnames(am: Alertmanager) -> dict[str, dict]:
    """Alertmanager's alerts by name, from its API v2 (active ones only)."""
    alerts = json.loads(http_get(f"{am.url}/api/v2/alerts?active=true&silenced=true&inhibited=true")[2])
    return {a["labels"]["alertname"]: a for a in alerts}


@pytest.mark.peers
def test_relayed_mail_cannot_resolve_raise_or_pin_alerts_and_is_passed_on_as_mail(tmp_path):
    with Alertmanager(tmp_path / "am") as am:
        port = free_port()
        config = relay_config(tmp_path, am, port)
        fleet_key = secrets.token_bytes(32)
        (config.parent / "fleet.key").write_text(fleet_key.hex() + "\n")
        value = config.parent / "plugins.d" / "value.txt"
        value.write_text("93.5")
        agent = start_agent(config)
        try:
            wait_for(lambda: "gauge-high" in alertnames(am), timeout=30, what="the agent's own alert")
            now = time.time()
            forged = {
                "resolve": encode_alerts([alert(GAUGE, "resolved", now)], "web1.test"),
                "raise": encode_alerts([alert(Rule("fake-outage", "x", above=1), "firing", now)], "web1.test"),
                "pin": encode_alerts([alert(GAUGE, "firing", YEAR_3000)], "web1.test"),
            }
            for name, header in forged.items():
                out = swaks_to(
                    port,
                    "--to",
                    "oncall@ops.test",
                    "--header",
                    f"Subject: {name}",
                    "--header",
                    f"{ALERTS_HEADER}: {header}",
                    source="127.0.0.2",
                )
                assert "250 " in out.split("DATA", 1)[-1], out
            # A host holding a key listed in `keys` may raise alerts through the relay: the fleet's agents.
            fleet = encode_alerts([alert(Rule("fleet-disk", "x", above=1), "firing", now)], "db7.test")
            out = swaks_to(
                port,
                "--to",
                "oncall@ops.test",
                "--header",
                f"{ALERTS_HEADER}: {fleet}",
                "--header",
                f"{SEAL_HEADER}: {seal([fleet], fleet_key, now)}",
                source="127.0.0.2",
            )
            assert "250 " in out.split("DATA", 1)[-1], out
            out_dir = config.parent / "out"
            wait_for(lambda: out_dir.is_dir() and len(list(out_dir.iterdir())) >= 3, timeout=30, what="forged mail as mail")
            subjects = sorted(p.read_bytes().split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0] for p in out_dir.iterdir())
            assert subjects == [b"pin", b"raise", b"resolve"], subjects
            wait_for(lambda: "fleet-disk" in alertnames(am), timeout=30, what="the sealed fleet alert")
            listed = alertnames(am)
            assert listed["fleet-disk"]["labels"]["instance"] == "db7.test"
            assert "fake-outage" not in listed, listed
            assert "gauge-high" in listed, "an outsider resolved the agent's alert"
            # Not pinned by the year-3000 event: the real recovery ends it.
            value.write_text("12")
            wait_for(lambda: "gauge-high" not in alertnames(am), timeout=30, what="the real recovery")
        finally:
            log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "claims alerts but is not taken as alerts: not sealed" in log, log


def test_check_refuses_a_relay_route_that_ends_with_alertmanager(tmp_path):
    am = Alertmanager(tmp_path / "am")  # not started: check only reads the config
    config = relay_config(tmp_path, am, free_port(), route='["alertmanager"]')
    (config.parent / "fleet.key").write_text(secrets.token_hex(32))
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 78, out
    assert "relay.route: ends with alertmanager" in out.stderr + out.stdout
    assert '["alertmanager", "smtp"]' in out.stderr + out.stdout


def test_check_refuses_an_unreadable_key_file(tmp_path):
    am = Alertmanager(tmp_path / "am")
    config = relay_config(tmp_path, am, free_port())
    (config.parent / "fleet.key").write_text("not a key")
    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 78, out
    assert "transports.alertmanager.keys[0]: cannot read" in out.stderr + out.stdout


@pytest.mark.peers
def test_an_agent_whose_key_the_relay_lists_raises_its_alerts_through_the_relay(tmp_path):
    with Alertmanager(tmp_path / "am") as am:
        port = free_port()
        relay = relay_config(tmp_path, am, port)
        (relay.parent / "plugins.d" / "value.txt").write_text("12")  # the relay's own rule stays quiet
        # The agent: mails to the relay; its key, copied to the relay host as an operator does.
        agent_extra = f'\n[transports.smtp]\nservers = ["127.0.0.1:{port}"]\ntls = "none"\n\n[queue]\nretry = ["1s"]\n'
        web = agent_config(tmp_path / "web01", agent_extra, route='["smtp"]')
        web.write_text(web.read_text().replace('hostname = "web1.test"', 'hostname = "web01.test"'))
        (web.parent / "plugins.d" / "value.txt").write_text("93.5")
        (relay.parent / "fleet.key").write_bytes(alert_key_file(web.parent / "var"))
        relay_proc = start_agent(relay)
        web_proc = None
        try:
            wait_port("127.0.0.1", port, timeout=30)
            web_proc = start_agent(web)
            listed = wait_for(lambda: alertnames(am).get("gauge-high"), timeout=60, what="web01's alert via the relay")
            assert listed["labels"]["instance"] == "web01.test"
            (web.parent / "plugins.d" / "value.txt").write_text("12")
            wait_for(lambda: "gauge-high" not in alertnames(am), timeout=60, what="web01's recovery via the relay")
        finally:
            web_log = stop_agent(web_proc) if web_proc is not None else ""
            log = stop_agent(relay_proc)
    assert relay_proc.returncode == 0, log
    assert "not taken as alerts" not in log, log
    assert web_proc is not None and web_proc.returncode == 0, web_log


def alert_key_file(state_dir) -> bytes:
    """The agent's STATE_DIR/alerts.key, made now as the agent would make it with its first mail."""
    from alertmail.rules.wire import alert_key

    return alert_key(state_dir).hex().encode() + b"\n"
