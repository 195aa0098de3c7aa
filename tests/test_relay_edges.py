"""The relay at its edges (issue 8): a full log disk, routing syntax, floods, NUL bytes, TLS suites.

Each test runs the relay as a real process against real peers over loopback.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.peers import SmtpSink, need
from tests.relay_peers import message_id, private_folder, received, self_signed, start_relay, swaks_to

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-edge-sink-") / "dump") as sink:
        yield sink


@pytest.fixture(scope="module")
def relay(tmp_path_factory, sink):
    """127.0.0.1 may relay; 127.0.0.2 plays an outside client; local.example and the relay's own name are local."""
    folder = tmp_path_factory.mktemp("relay-edges")
    cert, key = self_signed(folder)
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "allow": ["127.0.0.1/32"],
        "local_domains": ["local.example", "relay.test"],
        "local_recipients": ["user@local.example", "@relay.test"],
    }
    process = start_relay(folder, sink, options)
    yield process
    assert process.stop() == 0


def send(port: int, *args: str, source: str = "127.0.0.1", mid: str | None = None) -> str:
    return swaks_to(port, *args, mid=mid, source=source)


def transaction(port: int, data: bytes, source: str = "127.0.0.1") -> list[bytes]:
    """One raw SMTP transaction with ``data`` as the message; every reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as conn:
        reader = conn.makefile("rb")
        replies = [reader.readline()]
        conn.sendall(b"HELO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(4):
            replies.append(reader.readline())
        conn.sendall(data + b"\r\n.\r\nQUIT\r\n")
        replies += reader.readlines()
    return replies


# -- §7 a NUL byte in DATA; TLS 1.2 suites -------------------------------------------


def test_nul_byte_in_data_is_refused_and_nothing_is_queued(relay, sink):
    mid = message_id()
    replies = transaction(relay.port, f"Message-Id: {mid}\r\n\r\nbefore\x00after".encode())
    assert replies[5].startswith(b"554 5.6.0"), replies
    assert received(sink, mid, timeout=1.0) == []


def s_client(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [need("openssl"), "s_client", "-connect", f"127.0.0.1:{port}", "-starttls", "smtp", "-tls1_2", *args],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=20,
    )


@pytest.mark.parametrize("cipher", ["ECDHE-ECDSA-AES128-SHA256", "ECDHE-ECDSA-AES256-SHA384", "ECDHE-ECDSA-AES128-SHA"])
def test_tls12_refuses_cbc_suites(relay, cipher):
    result = s_client(relay.port, "-cipher", cipher)
    assert f"Cipher is {cipher}" not in result.stdout, result.stdout
    assert result.returncode != 0 or "Cipher is (NONE)" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize(
    "cipher", ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"]
)
def test_tls12_offers_aead_suites(relay, cipher):
    result = s_client(relay.port, "-cipher", cipher)
    assert f"Cipher is {cipher}" in result.stdout, result.stdout + result.stderr


def test_tls13_is_offered_as_is(relay):
    result = subprocess.run(
        [need("openssl"), "s_client", "-connect", f"127.0.0.1:{relay.port}", "-starttls", "smtp", "-tls1_3"],
        input="QUIT\n",
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert "TLSv1.3" in result.stdout, result.stdout + result.stderr


# -- §5 routing syntax from a client that may not relay -----------------------------

ROUTED = ["user%evil.example@local.example", '"user@evil.example"@local.example', "evil.example!user@local.example"]


@pytest.mark.parametrize("address", ROUTED)
def test_routing_syntax_to_a_local_domain_is_refused_for_an_outside_client(relay, sink, address):
    mid = message_id()
    out = send(relay.port, "--to", address, source="127.0.0.2", mid=mid)
    assert "553 5.7.1" in out, out
    assert received(sink, mid, timeout=1.0) == []


def test_plain_local_address_is_still_accepted_from_an_outside_client(relay, sink):
    mid = message_id()
    out = send(relay.port, "--to", "user@local.example", source="127.0.0.2", mid=mid)
    assert "250 2.0.0 OK queued as" in out, out
    assert len(received(sink, mid)) == 1


@pytest.mark.parametrize("address", ROUTED)
def test_routing_syntax_is_refused_without_local_domains(tmp_path, sink, address):
    relay = start_relay(tmp_path / "relay", sink, {"allow": ["127.0.0.1/32"]})
    try:
        out = send(relay.port, "--to", address, source="127.0.0.2")
        assert "5.7.1" in out and "250 2.1.5" not in out, out
    finally:
        assert relay.stop() == 0


def test_nmap_finds_no_open_relay(relay, sink):
    """nmap's smtp-open-relay tries sixteen addressings (%, !, quotes, source routes) from outside `allow`."""
    nmap = shutil.which("nmap")
    if nmap is None:
        pytest.skip("nmap is not installed (.ci/peers installs it)")
    result = subprocess.run(
        [
            nmap,
            "-Pn",
            "-n",
            "-S",
            "127.0.0.2",  # a client outside `allow`
            "-e",
            "lo",
            "-p",
            str(relay.port),
            "--script",
            "+smtp-open-relay",  # "+": run it on any port, not only 25/465/587
            "--script-args",
            # relaytest@evil.example written every way the script knows through the relay's own
            # name (relay.test, a local domain) and address: each must be refused.
            "smtp-open-relay.domain=evil.example,smtp-open-relay.ip=127.0.0.1,smtp.domain=client.test",
            "127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "smtp-open-relay" in result.stdout, result.stdout + result.stderr
    assert "Server doesn't seem to be an open relay" in result.stdout, result.stdout
