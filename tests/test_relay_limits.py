"""Connection caps and the failed-AUTH rate limit (issue 8, section 6), against a real relay process."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time

import pytest

from tests.peers import SmtpSink
from tests.relay_peers import private_folder, self_signed, start_relay, users_file

pytestmark = pytest.mark.peers

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-limits-sink-") / "dump") as sink:
        yield sink


@pytest.fixture
def relay(tmp_path, sink):
    """127.0.0.1 may relay; 127.0.0.2 and .3 play outside clients; small caps."""
    cert, key = self_signed(tmp_path)
    users = users_file(tmp_path, {"alice": PASSWORD})
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users),
        "allow": ["127.0.0.1/32"],
        "max_connections": 6,
        "max_connections_per_client": 3,
        "max_auth_failures": 3,
    }
    process = start_relay(tmp_path / "relay", sink, options)
    yield process
    assert process.stop() == 0


def connect(port: int, source: str) -> tuple[socket.socket, bytes]:
    """A connection and its first reply line (the banner, or a refusal)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return conn, conn.makefile("rb").readline()


def test_connections_per_client_are_capped_with_421(relay):
    held = []
    try:
        for _ in range(3):
            conn, banner = connect(relay.port, "127.0.0.2")
            held.append(conn)
            assert banner.startswith(b"220 "), banner
        conn, reply = connect(relay.port, "127.0.0.2")
        held.append(conn)
        assert reply.startswith(b"421 4.7.0"), reply
        assert conn.recv(100) == b""  # and closed
        other, banner = connect(relay.port, "127.0.0.3")  # another client is not affected
        held.append(other)
        assert banner.startswith(b"220 "), banner
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    conn, banner = connect(relay.port, "127.0.0.2")  # closed connections free their places
    conn.close()
    assert banner.startswith(b"220 "), banner


def test_total_connections_are_capped_with_421(relay):
    held = []
    try:
        for _ in range(6):
            conn, banner = connect(relay.port, "127.0.0.1")  # allowed clients: only the total cap
            held.append(conn)
            assert banner.startswith(b"220 "), banner
        for source in ("127.0.0.1", "127.0.0.3"):
            conn, reply = connect(relay.port, source)
            held.append(conn)
            assert reply.startswith(b"421 4.7.0"), reply
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        assert client.noop()[0] == 250


def login(port: int, source: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN over STARTTLS (smtplib's login() would try a second mechanism)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20, source_address=(source, 0))
    try:
        client.starttls(context=context)
        client.ehlo()
        token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")
    finally:
        try:
            client.close()
        except OSError:
            pass


def test_failed_auth_is_rate_limited_per_client(relay):
    codes = [login(relay.port, "127.0.0.2", f"guess {i}")[0] for i in range(3)]
    assert codes == [535, 535, 421], codes
    code, reply = login(relay.port, "127.0.0.2", PASSWORD)  # even the right password, for now
    assert code == 421 and reply.startswith(b"4.7.0"), (code, reply)
    assert login(relay.port, "127.0.0.3", PASSWORD)[0] == 235  # another client is not affected
