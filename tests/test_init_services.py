"""`alertmail init` proposes http, smtp and tcp checks, commented out, for the well-known services
listening on this host (loopback or any address), and finds the listeners of this host."""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from alertmail.cli.init import _proc_net_listeners, listeners, starter_config
from tests.test_init_proposals import check

FOUND = [
    ("127.0.0.1", 8080),
    ("::1", 8080),  # the same service on both loopbacks: one check
    ("127.0.0.1", 443),
    ("::1", 22),
    ("127.0.0.1", 25),
    ("127.0.0.1", 5432),
    ("127.0.0.1", 41234),  # no well-known service: no check
]


def uncommented(text: str) -> str:
    """The starter config with the service block's TOML lines uncommented, as its comment says to."""
    head, _, block = text.partition("# Services listening on this host")
    _, _, block = block.partition("\n#\n")
    body, _, rest = block.partition("\n\n")  # the next block, the file check example, stays commented
    return head + "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines()) + "\n\n" + rest


def starter(tmp_path: Path, found: list[tuple[str, int]]) -> str:
    (tmp_path / "plugins").mkdir(exist_ok=True)
    return starter_config(tmp_path / "plugins", ("127.0.0.1", 9), found)


def test_init_proposes_commented_checks_for_well_known_listeners_that_check_accepts(tmp_path):
    text = starter(tmp_path, FOUND)
    assert "probes" not in tomllib.loads(text)  # commented out: the starter config is the same
    assert check(tmp_path, text).returncode == 0
    config = tomllib.loads(uncommented(text))
    assert config["probes"]["http"]["checks"] == [
        {"name": "http-8080", "url": "http://127.0.0.1:8080/"},
        {"name": "https-443", "url": "https://127.0.0.1:443/"},
    ]
    assert config["probes"]["smtp"]["checks"] == [{"name": "smtp-25", "host": "127.0.0.1", "port": 25}]
    assert config["probes"]["tcp"]["checks"] == [
        {"name": "ssh-22", "host": "::1", "port": 22},
        {"name": "postgresql-5432", "host": "127.0.0.1", "port": 5432},
    ]
    rules = {rule["metric"]: rule for rule in config["rules"]}
    assert {"http.up", "tcp.up", "smtp.up"} <= set(rules) and rules["tcp.up"]["below"] == 1
    assert "# [probes.file]" in uncommented(text)
    run = check(tmp_path, uncommented(text))
    assert run.returncode == 0, run.stdout + run.stderr


def test_init_proposes_no_service_block_without_a_well_known_listener(tmp_path):
    text = starter(tmp_path, [("127.0.0.1", 41234)])
    assert "Services listening" not in text and "tcp.up" not in text


@pytest.fixture
def listening():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_the_listeners_of_this_host_include_a_loopback_server(listening):
    assert ("127.0.0.1", listening) in listeners()


def test_a_bound_socket_that_does_not_listen_is_no_listener():
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        assert ("127.0.0.1", bound.getsockname()[1]) not in listeners()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc/net/tcp")
def test_proc_net_tcp_is_read_where_psutil_may_not_list_sockets(listening):
    assert ("127.0.0.1", listening) in _proc_net_listeners()


def test_an_ipv6_loopback_listener_is_found_in_proc_net_tcp6():
    try:
        server = socket.socket(socket.AF_INET6)
        server.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with server:
        server.listen()
        port = server.getsockname()[1]
        assert ("::1", port) in listeners()
        if Path("/proc/net/tcp6").exists():
            assert ("::1", port) in _proc_net_listeners()


SERVE = (
    "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
    " print(s.getsockname()[1], flush=True); sys.stdin.read()"
)


@pytest.mark.parametrize(("program", "proposed"), [("alertmail", False), ("some-daemon", True)])
def test_a_listener_of_an_alertmail_process_is_left_out(program, proposed):
    """A process whose argv[0] is alertmail (exec -a sets it) is the agent itself, e.g. its SMTP relay."""
    child = subprocess.Popen(
        ["bash", "-c", f'exec -a {program} "$0" -c "$1"', sys.executable, SERVE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        assert (("127.0.0.1", port) in listeners()) is proposed
    finally:
        child.communicate("")
