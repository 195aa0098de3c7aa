"""Every benchmark script still runs: a smoke run of each with small numbers.

The figures themselves are not judged here (the machines are shared and noisy);
the scripts print them, and the docs quote runs made by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.peers import need

BENCH = Path(__file__).resolve().parent.parent / "bench"

RUNS = {
    "alert_latency.py": ["--crossings", "2", "--modes", "in-process"],
    "agent_idle.py": ["--seconds", "4", "--settle", "3", "--exporter", "--after-mail"],
    "exporter_scrape.py": ["--series", "500", "--seconds", "1"],
    "probe_cost.py": ["2", "1"],
    "probe_cost_http.py": ["--checks", "5", "--interval", "1", "--seconds", "3", "--settle", "2", "--tls"],
    "queue_bench.py": ["-n", "100"],
    "relay_bench.py": ["--quick"],
    "relay_crash.py": ["--messages", "200", "--clients", "4", "--kill-after", "60"],
    "relay_data_memory.py": ["--sessions", "3", "--size", "0.5", "--finish"],
    "relay_profile.py": ["-m", "100", "-s", "2", "--top", "5"],
    "render_mail.py": ["off", "--runs", "2"],
    "replay_storm.py": ["--hours", "1", "--burst", "50"],
    "rule_engine.py": ["--series", "50", "--ticks", "5"],
    "sendmail_bench.py": ["-n", "20"],
    "status_bench.py": ["--series", "20", "--asks", "3", "--commands", "1"],
    "transport_smtp.py": ["100", "1"],
}
NEEDS = {
    "alert_latency.py": ["smtp-sink"],
    "queue_bench.py": ["smtp-sink"],
    "relay_bench.py": ["smtp-sink", "smtp-source", "postfix"],
    "relay_crash.py": ["smtp-sink"],
    "relay_profile.py": ["smtp-sink", "smtp-source"],
    "sendmail_bench.py": ["smtp-sink", "postfix"],
    "transport_smtp.py": ["smtp-sink"],
}


def test_every_benchmark_script_has_a_smoke_run():
    assert sorted(p.name for p in BENCH.glob("*.py")) == sorted(RUNS)


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_script_runs_and_prints_figures(script):
    for binary in NEEDS.get(script, []):
        need(binary)
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *RUNS[script]], capture_output=True, text=True, timeout=240, cwd=BENCH.parent
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert any(ch.isdigit() for ch in result.stdout), result.stdout
