"""Many agents, one relay: each agent authenticates over STARTTLS to one alertmail relay,
which hands everything to the smart host; every alert arrives there once.

All on loopback: two `alertmail run` processes with their own state folders, one
`alertmail relay`, and Postfix's smtp-sink as the smart host.
"""

from __future__ import annotations

import os
import signal
import subprocess
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.certs import make_tls_files
from tests.gauge import install_gauge
from tests.peers import SmtpSink
from tests.relay_peers import ALERTMAIL, REPO, private_folder, start_relay, users_file

pytestmark = pytest.mark.peers
PASSWORD = "fleet horse battery"


def agent_config(folder: Path, host: str, relay_port: int, ca: Path) -> Path:
    install_gauge(folder)
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        state_dir = "var"
        interval = "1s"
        resolution = "1s"
        plugin_dirs = ["plugins.d"]
        hostname = "{host}"

        [mail]
        from = "alertmail@{host}"
        to = ["ops@example.test"]
        route = ["smtp"]

        [notify]
        group_wait = "0s"

        [queue]
        retry = ["1s"]

        [transports.smtp]
        servers = ["127.0.0.1:{relay_port}"]
        tls = "starttls"
        ca_file = "{ca}"
        username = "{host}"
        password_env = "FLEET_PASSWORD"

        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        severity = "critical"
        """)
    )
    return config


def test_two_agents_through_one_authenticating_relay_reach_the_smart_host_once_each(tmp_path):
    tls = make_tls_files(tmp_path / "tls")
    users = users_file(tmp_path, dict.fromkeys(("web01.test", "db01.test"), PASSWORD))
    with SmtpSink(private_folder("fleet-sink-") / "dump") as sink:
        relay = start_relay(
            tmp_path / "relay",
            sink,
            {
                "tls_cert": str(tls.cert),
                "tls_key": str(tls.key),
                "users_file": str(users),
                "allow": ["127.0.0.9/32"],  # nobody: every agent must authenticate
                "require_tls": True,
            },
        )
        agents = []
        try:
            for host in ("web01.test", "db01.test"):
                folder = tmp_path / host
                config = agent_config(folder, host, relay.port, tls.ca)
                log = open(folder / "stderr", "w")  # noqa: SIM115  closed when the agent ends
                proc = subprocess.Popen(
                    [*ALERTMAIL, "run", "--config", str(config)],
                    cwd=folder,
                    stderr=log,
                    env={**os.environ, "PYTHONPATH": str(REPO), "FLEET_PASSWORD": PASSWORD},
                )
                agents.append((folder, proc, log))
            time.sleep(2)
            for folder, _, _ in agents:
                (folder / "plugins.d" / "value.txt").write_text("93")
            deadline = time.monotonic() + 60
            while len({m.message["X-Alertmail-Host"] or m.message["From"] for m in sink.messages()}) < 2:
                assert time.monotonic() < deadline, [(f / "stderr").read_text()[-2000:] for f, _, _ in agents]
                time.sleep(0.2)
            time.sleep(2)  # anything sent twice would arrive by now
        finally:
            for _, proc, log in agents:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
                log.close()
            assert relay.stop() == 0
        messages = [m.message for m in sink.messages()]
    firing = Counter(m["From"].addresses[0].addr_spec for m in messages if "gauge-high" in str(m["Subject"]))
    assert firing == {"alertmail@web01.test": 1, "alertmail@db01.test": 1}, [str(m["Subject"]) for m in messages]
    for message in messages:
        trace = " ".join(message.get_all("Received"))
        assert "with ESMTPSA" in trace  # authenticated over TLS at the relay
    # The relay's W3C log names each agent's user on its sessions, and never the password.
    w3c = "".join(path.read_text() for path in (relay.state_dir / "logs").glob("*.log"))
    assert " web01.test " in w3c and " db01.test " in w3c
    assert PASSWORD not in w3c + relay.output()
