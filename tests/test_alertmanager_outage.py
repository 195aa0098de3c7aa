"""Alertmanager unreachable for a while: what waited goes within one resend of its return, and an
incident that began and ended meanwhile still reaches a receiver.

A real Alertmanager whose webhook receiver is an HTTP server of the test's own on loopback; the agent
runs with a 15-minute queue retry, so only the transport's own watch can bring the messages out early.
"""

from __future__ import annotations

import json

import pytest

from tests.fleet_peers import Alertmanager, WebhookReceiver, agent_config
from tests.test_agent_e2e import start_agent, stop_agent, wait_for


def outage_config(tmp_path, am: Alertmanager):
    extra = f"""
[queue]
retry = ["15m"]

[transports.alertmanager]
urls = ["{am.url}"]
resend = "1s"
missed_for = "3s"
"""
    return agent_config(tmp_path / "agent", extra, route='["alertmanager"]')


def queued(config) -> list[dict]:
    """The queue's entries as `alertmail queue list --json` shows them."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "alertmail", "queue", "list", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=config.parent,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.peers
def test_an_incident_that_began_and_ended_while_alertmanager_was_down_reaches_its_receiver(tmp_path):
    with WebhookReceiver() as hook:
        am = Alertmanager(tmp_path / "am", webhook=hook.url)
        config = outage_config(tmp_path, am)
        value = config.parent / "plugins.d" / "value.txt"
        value.write_text("12")
        agent = start_agent(config)
        try:
            # Alertmanager is down: the alert fires and resolves; both mails wait in the queue for 15 min.
            value.write_text("93.5")
            wait_for(lambda: len(queued(config)) >= 1, timeout=30, what="the firing mail queued")
            value.write_text("12")
            wait_for(lambda: len(queued(config)) >= 2, timeout=30, what="the recovery mail queued")
            with am:
                # Within one resend (1 s) of its return both go; the incident arrives as firing, then resolves.
                wait_for(lambda: not queued(config), timeout=20, what="the queue emptied")
                firing = wait_for(
                    lambda: [a for s, a in hook.notifications("gauge-high") if s == "firing"], timeout=20, what="firing"
                )
                assert "while Alertmanager could not be reached" in firing[0]["annotations"]["missed"], firing
                assert firing[0]["labels"]["instance"] == "web1.test"
                wait_for(lambda: [a for s, a in hook.notifications("gauge-high") if s == "resolved"], timeout=30, what="resolved")
        finally:
            log = stop_agent(agent)
    assert agent.returncode == 0, log
    assert "no Alertmanager answers" in log and "Alertmanager answers again after" in log, log


@pytest.mark.peers
def test_an_alert_that_fired_during_the_outage_goes_within_one_resend_and_is_heard_once(tmp_path):
    with WebhookReceiver() as hook:
        am = Alertmanager(tmp_path / "am", webhook=hook.url)
        config = outage_config(tmp_path, am)
        value = config.parent / "plugins.d" / "value.txt"
        value.write_text("93.5")
        agent = start_agent(config)
        try:
            wait_for(lambda: len(queued(config)) >= 1, timeout=30, what="the firing mail queued")
            with am:
                wait_for(lambda: not queued(config), timeout=20, what="the queue emptied")
                firing = wait_for(
                    lambda: [a for s, a in hook.notifications("gauge-high") if s == "firing"], timeout=20, what="firing"
                )
                assert "missed" not in firing[0]["annotations"], firing
                value.write_text("12")
                wait_for(lambda: [a for s, a in hook.notifications("gauge-high") if s == "resolved"], timeout=30, what="resolved")
        finally:
            log = stop_agent(agent)
    assert agent.returncode == 0, log
