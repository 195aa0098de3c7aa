"""The scrape probe against a real node_exporter on a loopback port and textfile-collector files."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest

from alertmail.plugins.probes.scrape import ScrapeProbe, ScrapeSettings
from alertmail.probes.runner import run_probe
from alertmail.render.context import probe_details
from tests.peers import free_port
from tests.relay_peers import REPO
from tests.scrape_peers import NodeExporter, write_prom

TEXTFILE = """\
# HELP backup_age_seconds Seconds since the last good backup.
# TYPE backup_age_seconds gauge
backup_age_seconds{job="db",site="eu"} 90000
# TYPE jobs_done_total counter
jobs_done_total{queue="mail"} 5
# TYPE req_seconds histogram
req_seconds_bucket{le="0.1"} 3
req_seconds_bucket{le="+Inf"} 4
req_seconds_sum 0.5
req_seconds_count 4
# TYPE lat summary
lat{quantile="0.5"} 0.2
lat_sum 1
lat_count 5
stray{target="somewhere"} 1
"""


@pytest.fixture
def node_exporter(tmp_path):
    with NodeExporter(tmp_path / "textfiles") as exporter:
        yield exporter


def probe_with(**options) -> ScrapeProbe:
    probe = ScrapeProbe()
    probe.configure(ScrapeSettings(**options))
    return probe


def values(samples, metric: str) -> dict[frozenset, float]:
    return {frozenset(s.labels): s.value for s in samples if s.metric == metric}


def one(samples, metric: str, **labels) -> float:
    found = [s.value for s in samples if s.metric == metric and all(dict(s.labels).get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (metric, labels, found)
    return found[0]


def test_node_exporter_series_come_as_scrape_metrics_with_their_labels_and_target(node_exporter):
    write_prom(node_exporter.textfiles, "backup.prom", TEXTFILE)
    probe = probe_with(targets=[{"name": "node", "url": node_exporter.url}])
    samples = probe.collect()
    assert one(samples, "scrape.up", target="node") == 1.0
    assert abs(one(samples, "scrape.node_load1", target="node") - os.getloadavg()[0]) < 5
    assert one(samples, "scrape.backup_age_seconds", target="node", job="db", site="eu") == 90000
    # A scraped "target" label does not hide which target the series came from.
    assert one(samples, "scrape.stray", target="node", exported_target="somewhere") == 1
    assert one(samples, "scrape.series", target="node") > 100
    assert one(samples, "scrape.limited", target="node") == 0


def test_histograms_and_summaries_come_as_their_series(tmp_path):
    path = write_prom(tmp_path, "x.prom", TEXTFILE)
    samples = probe_with(files=[str(tmp_path / "*.prom")]).collect()
    target = str(path)
    assert one(samples, "scrape.req_seconds_bucket", target=target, le="0.1") == 3
    assert one(samples, "scrape.req_seconds_bucket", target=target, le="+Inf") == 4
    assert one(samples, "scrape.req_seconds_count", target=target) == 4
    assert one(samples, "scrape.lat", target=target, quantile="0.5") == 0.2
    assert one(samples, "scrape.lat_sum", target=target) == 1
    # The file's mtime comes from the kernel's clock: compared with this process's (faketime moves only the latter).
    assert abs(one(samples, "scrape.age_seconds", target=target) - (time.time() - path.stat().st_mtime)) < 60


def test_counters_are_also_offered_as_per_second_rates_and_a_reset_starts_again(tmp_path):
    write_prom(tmp_path, "jobs.prom", "# TYPE jobs_done_total counter\njobs_done_total 5\n")
    probe = probe_with(files=[str(tmp_path / "jobs.prom")])
    first = probe.collect()
    assert one(first, "scrape.jobs_done_total") == 5
    assert values(first, "scrape.jobs_done_total_per_second") == {}
    time.sleep(0.5)
    write_prom(tmp_path, "jobs.prom", "# TYPE jobs_done_total counter\njobs_done_total 105\n")
    start = time.monotonic()
    rate = one(probe.collect(), "scrape.jobs_done_total_per_second")
    assert 100 / (0.5 + (time.monotonic() - start) + 1.0) < rate <= 100 / 0.5
    time.sleep(0.3)
    write_prom(tmp_path, "jobs.prom", "# TYPE jobs_done_total counter\njobs_done_total 2\n")  # the job restarted
    assert values(probe.collect(), "scrape.jobs_done_total_per_second") == {}


def test_a_target_that_does_not_answer_is_down_without_being_a_probe_failure():
    probe = probe_with(targets=[{"name": "gone", "url": f"http://127.0.0.1:{free_port()}/metrics"}])
    run = asyncio.run(run_probe(probe, 10))
    assert run.ok, run.error
    assert one(run.samples, "scrape.up", target="gone") == 0
    assert one(run.samples, "scrape.limited", target="gone") == 0


def test_a_target_over_max_size_or_max_series_is_dropped_and_the_run_reports_it(node_exporter):
    big = probe_with(targets=[{"name": "node", "url": node_exporter.url}], max_size=1000)
    run = asyncio.run(run_probe(big, 10))
    assert one(run.samples, "scrape.up", target="node") == 0
    assert one(run.samples, "scrape.limited", target="node") == 1
    assert not [s for s in run.samples if s.metric.startswith("scrape.node_")]
    assert "target node: the response" in run.error and "max_size (1000" in run.error
    # The self-alert's mail (agent.probe_failed{probe=scrape}) says the same.
    event = type("E", (), {"rule": type("R", (), {"metric": "agent.probe_failed"})(), "labels": (("probe", "scrape"),)})()
    assert "max_size" in next(iter(probe_details([event], {"scrape": big}).values()))

    many = probe_with(targets=[{"name": "node", "url": node_exporter.url}], max_series=10)
    run = asyncio.run(run_probe(many, 10))
    assert one(run.samples, "scrape.limited", target="node") == 1
    assert "more than max_series (10) series" in run.error


def test_a_target_that_accepts_but_never_answers_is_cut_at_its_timeout():
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/metrics"
        probe = probe_with(targets=[{"name": "stuck", "url": url, "timeout": "0.5s"}])
        start = time.monotonic()
        run = asyncio.run(run_probe(probe, 10))
    assert time.monotonic() - start < 5
    assert one(run.samples, "scrape.up", target="stuck") == 0
    assert one(run.samples, "scrape.limited", target="stuck") == 1
    assert "no answer within its timeout" in run.error


def _check(tmp_path, extra: str) -> subprocess.CompletedProcess:
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.toml").read_text() + extra)
    return subprocess.run([sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True)


def test_check_accepts_rules_on_scraped_names_and_warns_when_the_scrape_probe_is_not_configured(tmp_path):
    rule = '\n[[rules]]\nname = "load"\nmetric = "scrape.node_load1"\nabove = 10\n'
    run = _check(tmp_path, rule)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "comes only from scrape, which runs only when configured; add [probes.scrape]" in run.stdout + run.stderr
    run = _check(tmp_path, '\n[probes.scrape]\ntargets = [{ name = "node", url = "http://127.0.0.1:9/metrics" }]\n' + rule)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "[probes.scrape]" not in run.stdout + run.stderr


def test_check_names_bad_targets(tmp_path):
    run = _check(tmp_path, '\n[probes.scrape]\ntargets = [{ name = "node", url = "127.0.0.1:9100" }, { nam = "x" }]\n')
    assert run.returncode == 78
    out = run.stdout + run.stderr
    assert "probes.scrape.targets[0].url: expected an http:// or https:// URL" in out
    assert "probes.scrape.targets[1].nam: unknown key; did you mean 'name'?" in out


def test_check_refuses_a_zero_timeout_or_size_instead_of_silently_taking_the_default(tmp_path):
    run = _check(tmp_path, '\n[probes.scrape]\nfiles = ["/x/*.prom"]\nscrape_timeout = "0s"\nmax_size = 0\n')
    assert run.returncode == 78, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "probes.scrape.scrape_timeout: must be at least" in out
    assert "probes.scrape.max_size: must be at least 1 bytes" in out


def test_alertmail_probe_shows_both_and_names_a_misspelt_scraped_metric_with_the_right_one(tmp_path, node_exporter):
    config = tmp_path / "config.toml"
    config.write_text(
        (REPO / "config.toml").read_text()
        + f"""
[probes.nagios]
checks = [{{ name = "dummy", command = ["/usr/lib/nagios/plugins/check_dummy", "1", "half broken"] }}]

[probes.scrape]
targets = [{{ name = "node", url = "{node_exporter.url}" }}]

[[rules]]
name = "load"
metric = "scrape.node_lod1"
above = 1000
"""
    )
    run = subprocess.run(
        [sys.executable, "-m", "alertmail", "probe", "--config", str(config)], capture_output=True, text=True, cwd=tmp_path
    )
    out = run.stdout
    assert "nagios check=dummy said:\n    WARNING: WARNING: half broken" in out, out + run.stderr
    assert "scrape.node_load1" in out
    assert "rule load: no sample of scrape.node_lod1 in this run; did you mean 'scrape.node_load1'?" in out


def test_metric_catalogue_documents_every_nagios_and_scrape_metric_with_its_unit():
    from alertmail.cli.probe import catalogue
    from alertmail.loader import load_plugins

    doc = (REPO / "docs" / "metrics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")
    }
    listed = [(p, info) for p, info in catalogue(load_plugins().probes) if p in ("nagios", "scrape")]
    assert len(listed) >= 8
    for _, info in listed:
        name = "scrape.<name>" if info.name == "scrape.*" else info.name
        assert rows.get(name) == (info.unit or "—"), f"docs/metrics.md: {name} ({info.unit}) missing or stale"


def test_a_proxy_in_the_agents_environment_is_not_used_for_scrapes(node_exporter, monkeypatch):
    dead = free_port()  # a proxy that is not there: a scrape through it would fail
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    samples = probe_with(targets=[{"name": "node", "url": node_exporter.url}]).collect()
    assert one(samples, "scrape.up", target="node") == 1
