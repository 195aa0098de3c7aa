"""`alertmail init` proposes the nagios probe when Nagios plugins are installed and the scrape
probe when a Prometheus exporter answers on node_exporter's port; the config passes check."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib

from alertmail.cli.init import starter_config
from tests.scrape_peers import NodeExporter
from tests.test_nagios_probe import PLUGINS, plugin


def check(tmp_path, text: str) -> subprocess.CompletedProcess:
    config = tmp_path / "config.toml"
    config.write_text(text)
    return subprocess.run([sys.executable, "-m", "alertmail", "check", "--config", str(config)], capture_output=True, text=True)


def test_init_proposes_installed_nagios_plugins_and_a_listening_exporter(tmp_path):
    plugin("check_procs")
    with NodeExporter(tmp_path / "textfiles") as exporter:
        text = starter_config(PLUGINS, ("127.0.0.1", exporter.port))
    config = tomllib.loads(text)
    checks = config["probes"]["nagios"]["checks"]
    assert {"name": "zombies", "command": [str(PLUGINS / "check_procs"), "-s", "Z", "-w", "5", "-c", "20"]} in checks
    assert config["probes"]["scrape"]["targets"] == [{"name": "node", "url": f"http://127.0.0.1:{exporter.port}/metrics"}]
    metrics = {rule["metric"] for rule in config["rules"]}
    assert {"nagios.status", "scrape.up"} <= metrics
    run = check(tmp_path, text)
    assert run.returncode == 0, run.stdout + run.stderr


def test_init_proposes_neither_without_plugins_or_with_a_port_that_is_no_exporter(tmp_path):
    (tmp_path / "plugins").mkdir()
    with socket.socket() as other:  # something listens, but answers no /metrics
        other.bind(("127.0.0.1", 0))
        other.listen()
        text = starter_config(tmp_path / "plugins", other.getsockname())
    config = tomllib.loads(text)
    assert "probes" not in config
    assert not {"nagios.status", "scrape.up"} & {rule["metric"] for rule in config["rules"]}
    assert check(tmp_path, text).returncode == 0
