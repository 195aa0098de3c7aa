"""The [exporter]: Prometheus names, the exposition formats, and a real Prometheus scraping the agent."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.exporter import SECTION as EXPORTER
from alertmail.model import MetricInfo
from tests.fleet_peers import HOST, Prometheus, agent_config, http_get
from tests.peers import free_port, need
from tests.test_agent_e2e import start_agent, stop_agent, wait_for


@pytest.mark.parametrize(
    ("info", "name"),
    [
        (MetricInfo("disk.used_percent", "percent"), "alertmail_disk_used_percent"),
        (MetricInfo("memory.total_bytes", "bytes"), "alertmail_memory_total_bytes"),
        (MetricInfo("net.recv_bytes_per_s", "bytes/s", kind="rate"), "alertmail_net_recv_bytes_per_second"),
        (MetricInfo("diskio.reads_per_s", "ops/s", kind="rate"), "alertmail_diskio_reads_per_second"),
        (MetricInfo("queue.age", "seconds"), "alertmail_queue_age_seconds"),
        (MetricInfo("processes.total", "count"), "alertmail_processes"),
        (MetricInfo("mail.sent", "mails", kind="counter"), "alertmail_mail_sent_total"),
        (MetricInfo("load.1", ""), "alertmail_load_1"),
    ],
)
def test_metric_names_follow_prometheus_conventions(info, name):
    from alertmail.exporter.collector import metric_name

    assert metric_name(info)[0] == name


def test_label_names_are_made_valid():
    from alertmail.exporter.collector import label_name

    assert label_name("mount") == "mount"
    assert label_name("cpu-core") == "cpu_core"
    assert label_name("1st") == "_1st"
    assert label_name("__name__") == "x__name__"


def test_exporter_is_off_by_default_and_its_address_is_checked(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("")
    assert load_config(config).section(EXPORTER).listen is None
    config.write_text('[exporter]\nlisten = "localhost"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(p.startswith("exporter.listen: ") for p in caught.value.problems), caught.value.problems


def test_agent_without_exporter_does_not_import_it(tmp_path):
    config = agent_config(tmp_path, "")
    code = (
        "import asyncio, sys\n"
        "from alertmail.config.load import load_config\n"
        "from alertmail.loader import load_plugins\n"
        "from alertmail.agent import Agent\n"
        f"cfg = load_config({str(config)!r})\n"
        "agent = Agent(cfg, load_plugins(cfg.plugin_dirs))\n"
        "async def main():\n"
        "    await agent.start()\n"
        "    await agent.stop()\n"
        "asyncio.run(main())\n"
        "print(any(m.startswith('alertmail.exporter.') for m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "False", out.stderr


@pytest.mark.peers
def test_prometheus_scrapes_probe_values_and_firing_alerts(tmp_path):
    promtool = need("promtool")
    port = free_port()
    config = agent_config(tmp_path / "agent", f'[exporter]\nlisten = "{HOST}:{port}"\n')
    value = tmp_path / "agent" / "plugins.d" / "value.txt"
    value.write_text("93.5")
    agent = start_agent(config)
    try:
        url = f"http://{HOST}:{port}/metrics"
        delivered = 'alertmail_agent_deliveries_total{outcome="delivered",transport="pickup"} 1.0'
        text = wait_for(lambda: _scrape(url, delivered), timeout=30, what="a mail delivered")
        # The Prometheus text format passes promtool's checks (names, HELP, TYPE, conventions).
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "# HELP alertmail_test_level_percent a level the test sets" in text
        assert "# TYPE alertmail_test_level_percent gauge" in text
        assert 'alertmail_test_level_percent{mount="/data"} 93.5' in text
        assert 'alertmail_alert{mount="/data",rule="gauge-high",severity="critical",state="firing"} 1.0' in text
        assert 'alertmail_agent_probe_runs_total{probe="gauge"}' in text
        assert 'alertmail_agent_queue_messages{state="new"}' in text
        assert 'alertmail_agent_mails_total{kind="alert"}' in text
        # OpenMetrics when the scraper asks for it.
        status, headers, body = http_get(url, headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert status == 200 and headers["Content-Type"].startswith("application/openmetrics-text")
        assert body.endswith(b"# EOF\n") and b"# UNIT alertmail_test_level_percent percent" in body

        with Prometheus(tmp_path / "prometheus", [f"{HOST}:{port}"]) as prometheus:
            gauge = wait_for(
                lambda: prometheus.query('alertmail_test_level_percent{mount="/data"}'), timeout=30, what="a scraped gauge"
            )
            assert float(gauge[0]["value"][1]) == 93.5
            assert gauge[0]["metric"]["job"] == "alertmail"
            firing = wait_for(
                lambda: prometheus.query('alertmail_alert{rule="gauge-high", state="firing"}'), timeout=30, what="a firing alert"
            )
            assert firing[0]["metric"]["mount"] == "/data" and firing[0]["metric"]["severity"] == "critical"
            print("scrape excerpt:\n" + "\n".join(line for line in text.splitlines() if "level" in line or "alert{" in line))
            print("PromQL:", gauge, firing)
            value.write_text("12")
            wait_for(
                lambda: not prometheus.query('alertmail_alert{rule="gauge-high"}'),
                timeout=30,
                what="the alert gone after recovery",
            )
    finally:
        log = stop_agent(agent)
    assert agent.returncode == 0, log


def _scrape(url: str, needle: str) -> str | None:
    """The text on /metrics once it holds ``needle``."""
    try:
        text = http_get(url)[2].decode()
    except OSError:
        time.sleep(0.2)
        return None
    return text if needle in text else None


def test_both_formats_read_back_with_the_client_library_parsers():
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
    from prometheus_client.parser import text_string_to_metric_families as text

    from alertmail.exporter.exposition import Family, openmetrics_format, text_format

    gauge = Family("alertmail_disk_used_percent", "gauge", 'space in use, "quoted" \\ and\nnew line', "percent")
    gauge.add({"mount": '/we"ird\\path\nx'}, 93.5)
    gauge.add({"mount": "/"}, float("nan"))
    counter = Family("alertmail_agent_mails", "counter", "mails queued")
    counter.add({"kind": "alert"}, 3)
    for parse, encoded in ((text, text_format), (openmetrics, openmetrics_format)):
        families = {f.name: f for f in parse(encoded([gauge, counter]).decode())}
        disk = families["alertmail_disk_used_percent"]
        assert disk.documentation == gauge.help
        values = {s.labels["mount"]: s.value for s in disk.samples}
        assert values['/we"ird\\path\nx'] == 93.5
        mails = families.get("alertmail_agent_mails") or families["alertmail_agent_mails_total"]
        assert mails.type == "counter" and mails.samples[0].name == "alertmail_agent_mails_total" and mails.samples[0].value == 3
    assert openmetrics_format([gauge]).endswith(b"# EOF\n")
    assert b"# UNIT alertmail_disk_used_percent percent" in openmetrics_format([gauge])
