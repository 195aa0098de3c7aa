"""The agent's own metric families are reserved: a plugin's sample that takes one of their names is refused and reported."""

from __future__ import annotations

import asyncio
import subprocess

import pytest

from alertmail.exporter.collector import AgentCollector
from alertmail.exporter.exposition import text_format
from alertmail.model import MetricInfo, Sample
from alertmail.probes.runner import run_probe
from tests.fleet_peers import HOST, Prometheus, http_get
from tests.peers import free_port, need
from tests.probe_agent import PLUGIN_AGENT, agent_running, write_config
from tests.test_agent_e2e import wait_for


class Faker:
    name = "faker"

    def collect(self):
        return [
            Sample("alert", 1, {"rule": "fake", "severity": "critical", "state": "firing"}),
            Sample("agent.queue_messages", 999, {"state": "new"}),
            Sample("Agent-Probe.Failed", 1, {"probe": "cpu"}),
            Sample("faker.level", 7),
        ]


def test_a_probe_sample_named_like_the_agents_own_figures_is_refused_and_the_run_says_so():
    run = asyncio.run(run_probe(Faker(), 5))
    assert [s.metric for s in run.samples] == ["faker.level"]
    assert run.error is not None
    for metric in ("alert", "agent.queue_messages", "Agent-Probe.Failed"):
        assert metric in run.error, run.error


class Relay:
    name = "relay"

    def counters(self):
        return {"accepted": ("messages accepted", 3)}


def test_a_sample_that_maps_onto_a_services_family_is_left_out_of_metrics_and_listed_as_refused():
    infos = {
        "relay.accepted": MetricInfo("relay.accepted", "", "a plugin's look-alike"),
        "agent.probe_seconds": MetricInfo("agent.probe_seconds", "seconds", "a plugin's own help for the agent's figure"),
    }
    collector = AgentCollector(infos, states=list, services=lambda: [Relay()])
    collector.observe(
        [Sample("relay.accepted", 1000), Sample("disk.used_percent", 50, {"mount": "/"}), Sample("agent.probe_seconds", 0.1)]
    )
    text = text_format(collector.collect()).decode()
    assert text.count("# TYPE alertmail_relay_accepted") == 1
    assert "alertmail_relay_accepted_total 3.0" in text and " 1000.0" not in text
    assert 'alertmail_agent_metrics_refused{metric="relay.accepted"} 1.0' in text
    assert "alertmail_disk_used_percent" in text
    assert "how long the last run of the probe took" in text and "a plugin's own help" not in text
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


PLUGIN = """
from alertmail import Sample, hookimpl


class Faker:
    name = "faker"
    interval = 0.5

    def collect(self):
        return [
            Sample("alert", 1, {"rule": "fake", "severity": "critical", "state": "firing"}),
            Sample("agent.queue_messages", 999, {"state": "new"}),
            Sample("faker.level", 7),
        ]


@hookimpl
def register_probes(register):
    register(Faker())
"""


@pytest.mark.peers
def test_prometheus_never_stores_a_plugins_fake_alert_or_queue_depth(tmp_path):
    port = free_port()
    (tmp_path / "plugins.d").mkdir()
    (tmp_path / "plugins.d" / "faker.py").write_text(PLUGIN)
    config = write_config(
        tmp_path,
        f"""
        [exporter]
        listen = "{HOST}:{port}"
        """,
        agent=PLUGIN_AGENT,
    )
    with agent_running(config) as agent:
        with Prometheus(tmp_path / "prometheus", [f"{HOST}:{port}"]) as prometheus:
            wait_for(lambda: prometheus.query("alertmail_faker_level == 7"), timeout=30, what="the plugin's own metric")
            assert prometheus.query('up{job="alertmail"} == 1')
            assert prometheus.query('alertmail_alert{rule="fake"}') == []
            assert prometheus.query("alertmail_agent_queue_messages == 999") == []
            assert prometheus.query('alertmail_agent_queue_messages{state="new"}'), "the agent's own depth is there"
            wait_for(
                lambda: prometheus.query('alertmail_agent_probe_failures_total{probe="faker"} > 0'),
                timeout=30,
                what="the probe run that carried the fakes counted as a failure",
            )
        text = http_get(f"http://{HOST}:{port}/metrics")[2].decode()
        assert 'rule="fake"' not in text and "} 999.0" not in text
    log = agent.log
    assert agent.proc.returncode == 0, log
    assert "agent.queue_messages is refused" in log and "alert is refused" in log
