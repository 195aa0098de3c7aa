"""``alertmail check`` sees every problem of ``[relay]`` that would stop ``run`` (issue 8, section 8)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from alertmail import ConfigError
from alertmail.config.load import load_config
from tests.relay_peers import ALERTMAIL, REPO, self_signed


def write_config(folder: Path, relay: dict[str, Any], transports: dict[str, Any] | None = None) -> Path:
    config = {
        "agent": {"state_dir": str(folder / "var"), "hostname": "relay.test"},
        "mail": {"route": ["mx"]},
        "transports": transports or {"mx": {"mode": "smarthost", "smart_host": "[127.0.0.1]:2500", "tls": "none"}},
        "relay": {"enabled": True, **relay},
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def problems(folder: Path, relay: dict[str, Any], transports: dict[str, Any] | None = None) -> list[str]:
    try:
        load_config(write_config(folder, relay, transports))
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_good_relay_table_passes(tmp_path):
    self_signed(tmp_path)
    assert problems(tmp_path, {"allow": ["10.0.0.0/8", "fd00::/8"], "tls_cert": "cert.pem", "tls_key": "key.pem"}) == []


def test_a_certificate_that_does_not_load_is_reported(tmp_path):
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    found = problems(tmp_path, {"tls_cert": "cert.pem", "tls_key": "key.pem"})
    assert any(p.startswith("relay.tls_cert: cannot load") for p in found), found


@pytest.mark.parametrize(
    "relay, keypath, says",
    [
        ({"allow": ["10.0.0.0/33"]}, "relay.allow[0]", "10.0.0.0/33"),
        ({"allow": ["::1", "fd00::/129"]}, "relay.allow[1]", "fd00::/129"),
        ({"allow": ["fd00::g/64"]}, "relay.allow[0]", "fd00::g/64"),
        ({"listen": ["127.0.0.1:99999"]}, "relay.listen[0]", "99999"),
        ({"listen": ["127.0.0.1:2525", "::1:2525"]}, "relay.listen[1]", "[::1]:2525"),
        ({"max_recipients": -1}, "relay.max_recipients", "at least 1"),
        ({"max_commands": 0}, "relay.max_commands", "at least 1"),
        ({"max_size": -5}, "relay.max_size", ""),
        ({"pickup_interval": "0s"}, "relay.pickup_interval", "more than 0"),
        ({"tls_cert": "missing-cert.pem", "tls_key": "missing-key.pem"}, "relay.tls_cert", "missing-cert.pem"),
        ({"tls_cert": "missing-cert.pem", "tls_key": "missing-key.pem"}, "relay.tls_key", "missing-key.pem"),
        ({"tls_cert": "cert.pem"}, "relay.tls_key", "set both"),
        ({"require_tls": True}, "relay.require_tls", "tls_cert"),
        ({"route": ["smtp"]}, "relay.route", "[transports.smtp]"),
    ],
)
def test_relay_problems_are_reported_at_check_time(tmp_path, relay, keypath, says):
    (tmp_path / "cert.pem").write_text("x")
    found = problems(tmp_path, relay)
    assert any(p.startswith(f"{keypath}: ") and says in p for p in found), found


def test_route_into_the_relays_own_pickup_folder_is_a_loop(tmp_path):
    found = problems(tmp_path, {"route": ["pickup"]}, {"pickup": {}})
    assert any(p.startswith("relay.route: ") and "loop" in p for p in found), found
    found = problems(tmp_path, {"route": ["pickup"]}, {"pickup": {"directory": str(tmp_path / "var" / "pickup")}})
    assert any("loop" in p for p in found), found


def test_a_config_without_relay_table_is_not_checked_for_it(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(tomli_w.dumps({"agent": {"state_dir": str(tmp_path / "var")}, "mail": {"route": ["pickup"]}}))
    load_config(path)


def test_alertmail_check_exits_78_naming_each_key(tmp_path):
    path = write_config(
        tmp_path, {"allow": ["10.0.0.0/33"], "listen": ["127.0.0.1:99999"], "tls_cert": "c.pem", "tls_key": "k.pem"}
    )
    result = subprocess.run(
        [*ALERTMAIL, "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 78, result.stdout + result.stderr
    for key in ("relay.allow[0]", "relay.listen[0]", "relay.tls_cert", "relay.tls_key"):
        assert key in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_queued_relayed_mail_follows_the_relay_route_the_config_names(tmp_path):
    """[relay] route is one of the routes delivery resolves queued mail by, so a reload that changes it reroutes relayed mail."""
    from alertmail.delivery.delivery import configured_routes

    smtp = {"servers": ["127.0.0.1:2500"], "tls": "none"}
    cfg = load_config(write_config(tmp_path, {"route": ["smtp"]}, {"mx": {}, "smtp": smtp}))
    assert configured_routes(cfg) == {"mail.route": ["mx"], "relay.route": ["smtp"]}
    (tmp_path / "config.toml").write_text(tomli_w.dumps({"agent": {"state_dir": str(tmp_path / "var")}}))
    assert "relay.route" not in configured_routes(load_config(tmp_path / "config.toml"))  # no [relay]: no relay route
