"""The relay's limits as units: failed-AUTH warnings, the agent's count of outside sessions, their config keys."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from alertmail import ConfigError
from alertmail.config.load import load_config
from alertmail.plugins.relay.listener import AuthWarnings
from alertmail.plugins.relay.policy import RelayPolicy
from alertmail.plugins.relay.receivers import Anvil
from alertmail.plugins.relay.service import RelaySettings, reserved_connections


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_failed_auth_warnings_stop_at_the_limit_and_the_rest_are_counted(caplog):
    caplog.set_level(logging.WARNING, logger="alertmail.relay")
    clock = Clock()
    limiter = AuthWarnings(3, 60.0, clock)
    for i in range(500):
        ip = "192.0.2.1" if i < 400 else f"198.51.100.{i % 7}"
        limiter.warn(ip, "relay: failed AUTH from %s for user %r", ip, "alice")
    assert len(warnings(caplog)) == 3  # not 500
    clock.now += 61
    limiter.warn("192.0.2.9", "relay: failed AUTH from %s for user %r", "192.0.2.9", "bob")
    lines = warnings(caplog)
    assert lines[3] == (
        "relay: 497 more failed AUTH not logged one by one in 60s, from 8 client(s)"
        " (most: 192.0.2.1 397, 198.51.100.1 15, 198.51.100.2 15)"
    ), lines[3]
    assert lines[4] == "relay: failed AUTH from 192.0.2.9 for user 'bob'"  # a new window writes again


def test_failed_auth_warnings_with_nothing_left_out_write_no_count(caplog):
    caplog.set_level(logging.WARNING, logger="alertmail.relay")
    clock = Clock()
    limiter = AuthWarnings(3, 60.0, clock)
    limiter.warn("192.0.2.1", "one")
    clock.now += 61
    limiter.flush()
    assert warnings(caplog) == ["one"]


def test_anvil_keeps_the_reserved_sessions_from_outside_clients():
    anvil = Anvil(RelayPolicy(hostname="relay.test", max_connections=5, reserved_connections=2, max_connections_per_client=2))
    answers = [anvil.answer(i % 2, f"admit 192.0.2.{i}") for i in range(4)]
    assert answers == ["yes", "yes", "yes", "full"]  # 5 - 2 reserved: 3 outside sessions, from any process
    anvil.answer(0, "release 192.0.2.0")
    assert anvil.answer(1, "admit 2001:db8:1:2::/64") == "yes"
    assert anvil.answer(1, "admit 2001:db8:1:2::/64") == "full"


def test_reserved_connections_defaults_to_a_sixth_of_max_connections():
    assert reserved_connections(RelaySettings(max_connections=300)) == 50
    assert reserved_connections(RelaySettings(max_connections=4)) == 0
    assert reserved_connections(RelaySettings(max_connections=300, reserved_connections=0)) == 0
    assert RelayPolicy(hostname="relay.test").outside_connections == 250


def problems(folder: Path, relay: dict[str, Any]) -> list[str]:
    config = {
        "agent": {"state_dir": str(folder / "var"), "hostname": "relay.test"},
        "mail": {"route": ["mx"]},
        "transports": {"mx": {"mode": "smarthost", "smart_host": "[127.0.0.1]:2500", "tls": "none"}},
        "relay": {"enabled": True, **relay},
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []


@pytest.mark.parametrize(
    "relay, keypath, says",
    [
        ({"reserved_connections": 300}, "relay.reserved_connections", "less than max_connections (300)"),
        ({"max_connections": 20, "reserved_connections": 25}, "relay.reserved_connections", "raise max_connections"),
        ({"reserved_connections": -1}, "relay.reserved_connections", "0 or more"),
        ({"ipv6_prefix": 0}, "relay.ipv6_prefix", "between 1 and 128"),
        ({"ipv6_prefix": 129}, "relay.ipv6_prefix", "between 1 and 128"),
        ({"max_session_time": "0s"}, "relay.max_session_time", "more than 0"),
        ({"max_auth_warnings": -1}, "relay.max_auth_warnings", "0 or more"),
    ],
)
def test_limit_keys_out_of_range_are_reported_at_check_time(tmp_path, relay, keypath, says):
    found = problems(tmp_path, relay)
    assert any(p.startswith(f"{keypath}: ") and says in p for p in found), found


def test_limit_keys_in_range_pass(tmp_path):
    relay = {"max_connections": 20, "reserved_connections": 19, "ipv6_prefix": 48, "max_session_time": "10m"}
    assert problems(tmp_path, relay) == []
