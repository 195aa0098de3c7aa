"""The relay's figures on /metrics: sessions, messages accepted, commands refused."""

from __future__ import annotations

import re
import urllib.request

import pytest

from tests.peers import free_port
from tests.relay_peers import swaks_to
from tests.test_reload import Agent, config_text

pytestmark = pytest.mark.peers


def test_relay_sessions_accepted_and_refused_are_counted_on_metrics(tmp_path):
    relay, metrics = free_port(), free_port()
    extra = (
        '\n[transports.pickup]\ndirectory = "outbox"\n'
        f'\n[relay]\nenabled = true\nlisten = ["127.0.0.1:{relay}"]\nhostname = "relay.test"\ngreet_pause = "0s"\n'
        'route = ["pickup"]\nallow = ["127.0.0.1/32"]  # 127.0.0.2 plays a client from elsewhere\n'
        f'\n[exporter]\nlisten = "127.0.0.1:{metrics}"\n'
    )
    agent = Agent(tmp_path, config_text('"pickup"', extra=extra))
    try:
        agent.wait_for(f"listening on 127.0.0.1:{relay}")
        accepted = swaks_to(relay, "--to", "ops@example.test")
        assert "queued as" in accepted, accepted
        refused = swaks_to(relay, "--to", "ops@example.test", source="127.0.0.2")  # outside allow, no AUTH
        assert "554" in refused or "550" in refused or "530" in refused, refused
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        values = dict(re.findall(r"^(alertmail_relay_\w+_total) (\S+)$", text, re.M))
        assert float(values["alertmail_relay_sessions_total"]) == 2
        assert float(values["alertmail_relay_accepted_total"]) == 1
        assert float(values["alertmail_relay_refused_total"]) >= 1
        assert float(values["alertmail_relay_sessions_refused_total"]) == 0
        assert re.search(r"^# TYPE alertmail_relay_accepted(_total)? counter$", text, re.M)
    finally:
        agent.stop()
