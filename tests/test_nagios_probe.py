"""The nagios probe against the real monitoring-plugins (Debian's monitoring-plugins-basic).

Each test runs real plugins from /usr/lib/nagios/plugins through the probe; smtp-sink is
the SMTP server check_smtp talks to; a listening socket on an ephemeral loopback port
is check_tcp's peer. Parsing of the plugin API is also checked as pure units.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alertmail.loader import load_plugins
from alertmail.plugins.probes.nagios import NagiosProbe, NagiosSettings, parse_output, parse_perfdata
from tests.peers import SmtpSink, free_port
from tests.relay_peers import REPO

PLUGINS = Path("/usr/lib/nagios/plugins")


def plugin(name: str) -> str:
    path = PLUGINS / name
    if not path.exists():
        message = f"{path} is missing (Debian: monitoring-plugins-basic); .ci/peers installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return str(path)


def probe_with(*checks: dict, **options) -> NagiosProbe:
    probe = NagiosProbe()
    probe.configure(NagiosSettings(checks=list(checks), **options))
    return probe


def by_metric(samples, metric: str) -> dict[tuple, float]:
    return {s.labels: s.value for s in samples if s.metric == metric}


@pytest.mark.parametrize(("status", "word"), [(0, "OK"), (1, "WARNING"), (2, "CRITICAL"), (3, "UNKNOWN")])
def test_check_dummy_exit_status_becomes_nagios_status_and_its_text_the_detail(status, word):
    probe = probe_with({"name": "dummy", "command": [plugin("check_dummy"), str(status), "the disk is on fire"]})
    samples = probe.collect()
    assert by_metric(samples, "nagios.status") == {(("check", "dummy"),): float(status)}
    assert probe.detail("nagios.status", {"check": "dummy"}) == f"{word}: {word}: the disk is on fire"


def test_check_load_reports_its_three_load_averages_as_perfdata():
    probe = probe_with({"name": "load", "command": [plugin("check_load"), "-w", "1000,1000,1000", "-c", "2000,2000,2000"]})
    samples = probe.collect()
    assert by_metric(samples, "nagios.status") == {(("check", "load"),): 0.0}
    perf = {dict(k)["label"]: v for k, v in by_metric(samples, "nagios.perfdata").items()}
    assert set(perf) == {"load1", "load5", "load15"}
    assert abs(perf["load1"] - os.getloadavg()[0]) < 5
    assert probe.detail("nagios.status", {"check": "load"}).startswith("OK: LOAD OK")


def test_check_disk_reports_the_used_bytes_of_root_in_bytes():
    probe = probe_with({"name": "root", "command": [plugin("check_disk"), "-w", "0%", "-c", "0%", "-p", "/"]})
    samples = probe.collect()
    perf = {dict(k)["label"]: v for k, v in by_metric(samples, "nagios.perfdata").items()}
    total = os.statvfs("/").f_blocks * os.statvfs("/").f_frsize
    # check_disk prints MB (MiB) by default: the probe turns them into bytes.
    assert 0 < perf["/"] <= total
    assert perf["/"] > 1024 * 1024


def test_check_tcp_is_ok_on_a_listening_port_and_critical_on_a_closed_one():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        closed = free_port()
        probe = probe_with(
            {"name": "open", "command": [plugin("check_tcp"), "-H", "127.0.0.1", "-p", str(port)]},
            {"name": "closed", "command": [plugin("check_tcp"), "-H", "127.0.0.1", "-p", str(closed)]},
        )
        samples = probe.collect()
    status = {dict(k)["check"]: v for k, v in by_metric(samples, "nagios.status").items()}
    assert status == {"open": 0.0, "closed": 2.0}
    perf = {tuple(sorted(dict(k).values())): v for k, v in by_metric(samples, "nagios.perfdata").items()}
    assert 0 <= perf[("open", "time")] < 5  # seconds
    assert "Connection refused" in probe.detail("nagios.status", {"check": "closed"})


def test_check_smtp_against_smtp_sink(tmp_path):
    with SmtpSink(tmp_path / "sink") as sink:
        probe = probe_with(
            {"name": "smtp", "command": [plugin("check_smtp"), "-H", sink.host, "-p", str(sink.port)], "timeout": "10s"}
        )
        samples = probe.collect()
    assert by_metric(samples, "nagios.status") == {(("check", "smtp"),): 0.0}
    assert probe.detail("nagios.status", {"check": "smtp"}).startswith("OK: SMTP OK")
    perf = {dict(k)["label"]: v for k, v in by_metric(samples, "nagios.perfdata").items()}
    assert 0 <= perf["time"] < 10


def test_a_hanging_plugin_is_unknown_at_its_timeout_and_its_whole_process_group_is_killed(tmp_path):
    pids = tmp_path / "pids"
    script = tmp_path / "check_hang"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pids}\necho $$ >> {pids}\nexec sleep 300\n")
    script.chmod(0o755)
    # 3 s: time enough for the shell to start its child and write both pids on a loaded machine.
    probe = probe_with({"name": "hang", "command": [str(script)], "timeout": "3s"})
    start = time.monotonic()
    samples = probe.collect()
    assert time.monotonic() - start < 15
    assert by_metric(samples, "nagios.status") == {(("check", "hang"),): 3.0}
    assert "timed out after 3s" in probe.detail("nagios.status", {"check": "hang"})
    assert len(pids.read_text().split()) == 2

    def state(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return "gone"

    for pid in map(int, pids.read_text().split()):
        # Gone, or a zombie of a parent that is gone too (init reaps it). SIGKILL takes effect
        # when the process next runs: on a busy machine the background sleep may still show as
        # running for a moment after the group was signalled, never for its 300 s.
        deadline = time.monotonic() + 5
        while state(pid) not in ("gone", "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert state(pid) in ("gone", "Z"), f"process {pid} of the hanging plugin still runs"


def test_the_command_runs_without_a_shell_in_a_small_environment(tmp_path):
    marker = tmp_path / "made-by-shell"
    script = tmp_path / "check_env"
    script.write_text('#!/bin/sh\necho "ENV OK - $# args: $1|count=${#SECRET}"\nenv\n')
    script.chmod(0o755)
    os.environ["SECRET"] = "agent-only"
    try:
        probe = probe_with({"name": "env", "command": [str(script), f"x; touch {marker}"], "env": {"TZ": "UTC"}})
        probe.collect()
    finally:
        del os.environ["SECRET"]
    assert not marker.exists()
    detail = probe.detail("nagios.status", {"check": "env"})
    assert detail.startswith(f"OK: ENV OK - 1 args: x; touch {marker}")
    names = {line.split("=", 1)[0] for line in detail.splitlines()[1:]}
    assert "SECRET" not in names and {"PATH", "LANG", "TZ"} <= names


def test_output_is_capped_and_the_status_still_counts(tmp_path):
    script = tmp_path / "check_chatty"
    script.write_text("#!/bin/sh\necho 'CHATTY WARNING - long|x=1'\nhead -c 3000000 /dev/zero | tr '\\0' 'a'\nexit 1\n")
    script.chmod(0o755)
    probe = probe_with({"name": "chatty", "command": [str(script)]}, max_output=4096)
    samples = probe.collect()
    assert by_metric(samples, "nagios.status") == {(("check", "chatty"),): 1.0}
    assert len(probe.results["chatty"].long_output) < 4096


def test_a_plugin_that_cannot_run_or_exits_outside_the_api_is_unknown_with_the_reason(tmp_path):
    script = tmp_path / "check_odd"
    script.write_text("#!/bin/sh\necho 'segfault-ish' >&2\nexit 139\n")
    script.chmod(0o755)
    gone = tmp_path / "check_gone"
    gone.write_text("#!/bin/sh\nexit 0\n")
    gone.chmod(0o755)
    probe = probe_with({"name": "odd", "command": [str(script)]}, {"name": "gone", "command": [str(gone)]})
    gone.unlink()  # removed after the config was checked
    samples = probe.collect()
    status = {dict(k)["check"]: v for k, v in by_metric(samples, "nagios.status").items()}
    assert status == {"odd": 3.0, "gone": 3.0}
    assert "exit status 139" in probe.detail("nagios.status", {"check": "odd"})
    assert "segfault-ish" in probe.detail("nagios.status", {"check": "odd"})
    assert "cannot run" in probe.detail("nagios.status", {"check": "gone"})


# -- the plugin API as pure units -------------------------------------------------------


def test_perfdata_with_quoted_labels_and_units_comes_in_base_units():
    perf = dict(parse_perfdata("'free space'=1.5GB;2;1;0;10 time=250ms;;; 'it''s'=3c pct=42%;80;90 odd=7zz bad=U"))
    assert perf == {"free space": 1.5 * 1024**3, "time": 0.25, "it's": 3.0, "pct": 42.0, "odd": 7.0}


def test_multiline_output_keeps_long_output_and_perfdata_of_every_line():
    text = "DISK OK - all fine | root=10MB;;;\n/ is fine\n/var is fine | var=2KB\nhome=1B\n"
    result = parse_output(text, 0)
    assert result.output == "DISK OK - all fine"
    assert result.long_output == "/ is fine\n/var is fine"
    assert dict(result.perfdata) == {"root": 10 * 1024**2, "var": 2048.0, "home": 1.0}


# -- configuration ------------------------------------------------------------------------


def test_check_names_every_bad_check_entry_with_the_fix(tmp_path):
    config = tmp_path / "config.toml"
    base = (REPO / "config.toml").read_text()
    config.write_text(
        base
        + """
[probes.nagios]
checks = [
  { name = "a", command = ["check_load"] },
  { name = "b", command = "/usr/lib/nagios/plugins/check_load -w 1" },
  { name = "c", command = ["/nonexistent/check_x"], tiemout = "5s" },
]
"""
    )
    run = subprocess.run([sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True)
    assert run.returncode == 78, run.stderr
    out = run.stdout + run.stderr
    assert "probes.nagios.checks[0].command[0]: 'check_load' is not an absolute path" in out
    assert "probes.nagios.checks[1].command: expected a list of strings" in out
    assert "probes.nagios.checks[2].command[0]: /nonexistent/check_x is not an executable file here" in out
    assert "probes.nagios.checks[2].tiemout: unknown key; did you mean 'timeout'?" in out


def test_check_refuses_a_zero_check_timeout_or_output_limit_instead_of_silently_taking_the_default(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text((REPO / "config.toml").read_text() + '\n[probes.nagios]\ncheck_timeout = "0s"\nmax_output = 0\n')
    run = subprocess.run([sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True)
    assert run.returncode == 78, run.stdout + run.stderr
    out = run.stdout + run.stderr
    assert "probes.nagios.check_timeout: must be at least" in out
    assert "probes.nagios.max_output: must be at least 1 bytes" in out


def test_without_its_table_the_nagios_probe_does_not_run_and_its_code_stays_unloaded():
    code = (
        "import sys, asyncio\n"
        "from alertmail.loader import load_plugins\n"
        "from alertmail.probes.runner import probe_settings\n"
        "plugins = load_plugins()\n"
        "settings = probe_settings(None, 'nagios', plugins.probes['nagios'])\n"
        "print(settings.enabled, 'alertmail.plugins.probes.nagios' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.stdout.split() == ["False", "False"], run.stderr
    assert "nagios" in load_plugins().probes


def test_a_plugin_killed_by_a_signal_is_unknown_naming_the_signal(tmp_path):
    script = tmp_path / "check_suicide"
    script.write_text("#!/bin/sh\necho 'OK - about to go'\nkill -9 $$\n")
    script.chmod(0o755)
    probe = probe_with({"name": "gone", "command": [str(script)]})
    assert by_metric(probe.collect(), "nagios.status") == {(("check", "gone"),): 3.0}
    assert probe.detail("nagios.status", {"check": "gone"}) == "UNKNOWN: killed by signal SIGKILL"
