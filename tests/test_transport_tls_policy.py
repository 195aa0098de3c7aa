"""The mx transport's ``tls = "required"`` policy, towards MX hosts and the smart host, against
real aiosmtpd servers on 127.0.0.3 (found through a real dnsmasq) and 127.0.0.1: a broken or
missing STARTTLS, or a certificate that fails a check that was asked for, keeps the mail in
the queue (temporary) with the reason, and nothing is ever sent in clear text."""

from __future__ import annotations

import ssl

import pytest
from aiosmtpd.controller import Controller

from alertmail.model import Status
from tests.certs import make_tls_files
from tests.peers import Dnsmasq
from tests.test_transport_mx import RECORDS, common_mx_port, run, send_all, transport
from tests.test_transport_smtp import Recorder


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records=RECORDS) as server:
        yield server


@pytest.fixture
def mx_port() -> int:
    return common_mx_port()


def mx1(handler, port: int, tls_context: ssl.SSLContext | None) -> Controller:
    """other.test's one MX host, mx.other.test on 127.0.0.3."""
    server = Controller(handler, hostname="127.0.0.3", port=port, server_hostname="mx.other.test", tls_context=tls_context)
    server.start()
    return server


def broken_tls(tls) -> ssl.SSLContext:
    context = tls.server_context()
    # Only RSA suites up to TLS 1.2 with an EC key: no handshake can succeed.
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("aRSA")
    return context


def deliver(tmp_path, port, dns_address, **options):
    return run(send_all(transport(tmp_path, resolver=dns_address, port=port, **options), ["ops@other.test"]))[0]


def test_required_tls_keeps_the_mail_from_an_mx_without_starttls_and_takes_any_certificate(tmp_path, dns, mx_port):
    handler = Recorder()
    server = mx1(handler, mx_port, None)
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required")
    finally:
        server.stop()
    status = result.recipients["ops@other.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.4")
    assert "does not offer STARTTLS" in status.message
    assert 'tls = "required" forbids sending in clear text' in status.message
    assert handler.messages == []
    # Required without tls_verify is encryption only: any certificate will do.
    server = mx1(handler, mx_port, make_tls_files(tmp_path / "tls").server_context(rogue=True))
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required")
    finally:
        server.stop()
    assert result.delivered == ["ops@other.test"]
    assert handler.messages[0][4]  # encrypted


def test_required_tls_never_falls_back_to_plain_text_when_the_handshake_fails(tmp_path, dns, mx_port):
    handler = Recorder()
    server = mx1(handler, mx_port, broken_tls(make_tls_files(tmp_path / "tls")))
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required")
    finally:
        server.stop()
    status = result.recipients["ops@other.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.5")
    assert "STARTTLS with mx.other.test" in status.message and 'tls = "required" forbids sending in clear text' in status.message
    assert handler.messages == []


def test_required_verified_tls_refuses_a_certificate_nobody_signed_and_takes_the_signed_one(tmp_path, dns, mx_port):
    tls = make_tls_files(tmp_path / "tls", names=("mx.other.test",))
    handler = Recorder()
    server = mx1(handler, mx_port, tls.server_context(rogue=True))
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required", tls_verify=True, ca_file=str(tls.ca))
    finally:
        server.stop()
    status = result.recipients["ops@other.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.5")
    assert "CERTIFICATE_VERIFY_FAILED" in status.message
    assert handler.messages == []
    server = mx1(handler, mx_port, tls.server_context())  # the same names, signed by the CA
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required", tls_verify=True, ca_file=str(tls.ca))
    finally:
        server.stop()
    assert result.delivered == ["ops@other.test"]
    assert handler.messages[0][4]


def test_required_verified_tls_refuses_a_certificate_for_another_name(tmp_path, dns, mx_port):
    tls = make_tls_files(tmp_path / "tls")  # signed by the trusted CA, but not for mx.other.test
    handler = Recorder()
    server = mx1(handler, mx_port, tls.server_context())
    try:
        result = deliver(tmp_path, mx_port, dns.address, tls="required", tls_verify=True, ca_file=str(tls.ca))
    finally:
        server.stop()
    status = result.recipients["ops@other.test"]
    assert status.status is Status.TEMPORARY
    assert "mx.other.test" in status.message
    assert handler.messages == []


def test_smart_host_tls_required_keeps_the_mail_from_a_plain_text_smart_host_and_verifies_its_address(tmp_path):
    from tests.peers import free_port

    tls = make_tls_files(tmp_path / "tls")  # names 127.0.0.1 among its addresses
    handler = Recorder()
    port = free_port()
    options = {"mode": "smarthost", "smart_host": f"[127.0.0.1]:{port}", "smart_host_tls": "required"}
    server = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    server.start()
    try:
        [result] = run(send_all(transport(tmp_path, **options), ["ops@example.test"]))
    finally:
        server.stop()
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.4")
    assert 'smart_host_tls = "required"' in status.message
    assert handler.messages == []
    server = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="relay.test", tls_context=tls.server_context())
    server.start()
    try:
        t = transport(tmp_path, **options, smart_host_tls_verify=True, ca_file=str(tls.ca))
        [result] = run(send_all(t, ["ops@example.test"]))
    finally:
        server.stop()
    assert result.delivered == ["ops@example.test"]
    assert handler.messages[0][4]


def test_certificate_checks_need_tls_required(tmp_path):
    with pytest.raises(ValueError, match=r'transports\.mx\.tls_verify: .*tls = "required"'):
        transport(tmp_path, tls_verify=True)


def test_the_queue_keeps_the_mail_and_says_why_when_tls_is_required_but_missing(tmp_path):
    import asyncio

    from alertmail.model import Envelope
    from tests.peers import free_port
    from tests.test_delivery import alert, delivering, eventually

    handler = Recorder()
    port = free_port()
    server = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="relay.test")
    server.start()
    try:
        t = transport(tmp_path, mode="smarthost", smart_host=f"[127.0.0.1]:{port}", tls="required", idle_timeout=0)

        async def main():
            async with delivering(tmp_path, {"mx": t}, default_route=("mx",)) as (queue, _):
                msg_id = await queue.put(alert(), Envelope("alerts@example.test", ("ops@example.test",)))
                entry = await eventually(lambda: queue.get(msg_id) if queue.get(msg_id).attempts >= 1 else None)
                await asyncio.sleep(0)
                return entry

        entry = run(main())
    finally:
        server.stop()
    assert entry.pending == ["ops@example.test"]
    assert entry.last_error.startswith("4.7.4")
    assert 'does not offer STARTTLS; tls = "required" forbids sending in clear text' in entry.last_error
    assert handler.messages == []
