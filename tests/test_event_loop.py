"""Which event loop ``alertmail run`` takes: uvloop only where a service takes load."""

from __future__ import annotations

import textwrap

import pytest
import uvloop

from alertmail.agent import loop_factory
from alertmail.cli.options import load

BASE = """
[agent]
state_dir = "var"
{agent}

[mail]
to = ["ops@example.com"]

[relay]
enabled = {relay}
listen = ["127.0.0.1:2525"]
route = ["smtp"]

[transports.smtp]
servers = ["127.0.0.1:2526"]
"""


def factory(tmp_path, relay: bool, agent: str = ""):
    path = tmp_path / "config.toml"
    path.write_text(textwrap.dedent(BASE.format(agent=agent, relay=str(relay).lower())))
    cfg, plugins = load(path)
    return loop_factory(cfg, plugins)


def test_the_idle_agent_stays_on_asyncio(tmp_path):
    assert factory(tmp_path, relay=False) is None


def test_an_agent_with_the_relay_runs_on_uvloop(tmp_path):
    assert factory(tmp_path, relay=True) is uvloop.new_event_loop


@pytest.mark.parametrize(("choice", "relay", "expected"), [("asyncio", True, None), ("uvloop", False, uvloop.new_event_loop)])
def test_agent_event_loop_overrides_the_choice(tmp_path, choice, relay, expected):
    assert factory(tmp_path, relay=relay, agent=f'event_loop = "{choice}"') is expected


def test_an_unknown_event_loop_is_a_config_error(tmp_path):
    from alertmail.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"agent\.event_loop"):
        factory(tmp_path, relay=False, agent='event_loop = "trio"')
