"""The idle agent on the default config keeps what only a mail or a command needs unloaded.

`bench/agent_idle.py` measures the footprint (RSS, CPU); this pins its main cause without
timing: which modules `alertmail run` has imported once it is up and every probe has run.
The agent runs in a child process whose SIGUSR2 handler writes `sys.modules` and the names
of the live threads to a file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.gauge import install_gauge
from tests.relay_peers import REPO

DUMPING_AGENT = """
import os, signal, sys, threading

path = sys.argv[1]

def dump(signum, frame):
    with open(path + ".part", "w") as out:
        out.write(" ".join(sorted(sys.modules)) + "\\n")
        out.write(" ".join(t.name.replace(" ", "_") for t in threading.enumerate()) + "\\n")
    os.replace(path + ".part", path)

signal.signal(signal.SIGUSR2, dump)
from alertmail.cli import main
sys.argv[:] = ["alertmail", "run", "--config", "config.toml"]
main()
"""

# Loaded with the first mail, the first digest, a chart, a command, or a transport or
# service the default config does not use: never by the agent that only watches.
NOT_WHILE_IDLE = (
    "alertmail.render.chart",
    "alertmail.render.context",
    "alertmail.render.digest",
    "alertmail.render.heartbeat",
    "alertmail.render.templating",
    "alertmail.render.format",
    "alertmail.render.mail",
    "alertmail.render.plot",
    "alertmail.render.view",
    "alertmail.exporter.server",
    "alertmail.exporter.web",  # [exporter] web_config: web.yml, PyYAML and bcrypt
    "alertmail.exporter.auth",
    "yaml",
    "bcrypt",
    "alertmail.plugins.relay.server",
    "alertmail.plugins.relay.watcher",
    "alertmail.cli.probe",
    "alertmail.plugins.probes.nagios",  # [probes.nagios] and [probes.scrape] load their code when configured
    "alertmail.plugins.probes.scrape",
    "prometheus_client",
    "alertmail.plugins.probes.file",  # the host probes: loaded when a [probes.NAME] table configures one
    "alertmail.plugins.probes.logfile",
    "alertmail.plugins.probes.sensors",
    "alertmail.plugins.probes.pressure",
    "alertmail.cli.queue",
    "alertmail.replay",
    "jinja2",
    "markupsafe",
    "PIL",
    "aiosmtplib",
    "aiosmtpd",
    "dns",
    # The service probes' checks (and the http probe's client): loaded with a first configured check.
    "alertmail.plugins.probes.http_check",
    "alertmail.plugins.probes.tcp_check",
    "alertmail.plugins.probes.smtp_check",
    "alertmail.plugins.probes.dns_check",
    "httpx",
    "httpcore",
    "anyio",
    "h11",
    "cryptography",
    "dkim",
    "difflib",
    "email.mime",
    "ctypes.util",
    "http.server",
    "ssl",  # OpenSSL: 4 MB, loaded by the first TLS session (alertmail.deferssl)
    "_ssl",
)


def _idle_agent_modules(folder: Path, *, with_file_plugin: bool = False) -> set[str]:
    config = (REPO / "config.toml").read_text()
    if with_file_plugin:
        install_gauge(folder)
        config = config.replace('# plugin_dirs = ["plugins.d"]', 'plugin_dirs = ["plugins.d"]', 1)
        assert 'plugin_dirs = ["plugins.d"]' in config
    (folder / "config.toml").write_text(config)
    dump = folder / "modules.txt"
    log = folder / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", DUMPING_AGENT, str(dump)],
            cwd=folder,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    try:
        deadline = time.monotonic() + 60
        while "watching" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        probes = int(log.read_text().split(" with ", 1)[1].split(" probes", 1)[0])
        # Idle means: started, and every probe has run (its worker thread exists).
        while True:
            dump.unlink(missing_ok=True)
            proc.send_signal(signal.SIGUSR2)
            while not dump.exists():
                assert proc.poll() is None, log.read_text()
                time.sleep(0.05)
            modules, threads = dump.read_text().splitlines()
            if sum(name.startswith("probe_") for name in threads.split()) >= probes:
                return set(modules.split())
            assert time.monotonic() < deadline, f"probes that ran: {threads}\n{log.read_text()}"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_idle_agent_on_the_default_config_loads_no_rendering_transport_or_command_code(tmp_path):
    modules = _idle_agent_modules(tmp_path)
    assert "alertmail.agent" in modules and "alertmail.notify.notifier" in modules  # the dump is of a running agent
    loaded = sorted(m for m in modules if any(m == heavy or m.startswith(heavy + ".") for heavy in NOT_WHILE_IDLE))
    assert loaded == []


def test_an_agent_with_a_third_party_plugin_has_ssl_loaded_from_the_start(tmp_path):
    # The plugin may hand asyncio ssl=True without importing ssl; asyncio must then have it.
    modules = _idle_agent_modules(tmp_path, with_file_plugin=True)
    assert "alertmail_plugin_gauge" in modules
    assert "ssl" in modules
