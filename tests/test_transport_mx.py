"""The mx transport against a real DNS server (dnsmasq) and real SMTP servers standing in
for MX hosts on 127.0.0.2 / 127.0.0.3 (smtp-sink, aiosmtpd). Loopback only: every
record below points at 127.0.0.x."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from pathlib import Path

import pytest

from alertmail.config.schema import Checker
from alertmail.model import Envelope, Status, TransportContext
from alertmail.plugins.transports.mx import MxSettings, MxTransport
from tests.certs import make_tls_files
from tests.peers import Dnsmasq, SmtpSink, free_port
from tests.test_transport_smtp import MESSAGE, Recorder

FAST = {"connect_timeout": 2.0, "command_timeout": 5.0, "data_timeout": 5.0, "dns_timeout": 1.0}
RECORDS = [
    # example.test: two MX hosts, the lower preference first
    "mx-host=example.test,mx1.example.test,10",
    "mx-host=example.test,mx2.example.test,20",
    "host-record=mx1.example.test,127.0.0.2",
    "host-record=mx2.example.test,127.0.0.3",
    # other.test: its own MX on 127.0.0.3
    "mx-host=other.test,mx.other.test,10",
    "host-record=mx.other.test,127.0.0.3",
    # equal.test: two MX hosts of equal preference
    "mx-host=equal.test,mx1.example.test,10",
    "mx-host=equal.test,mx2.example.test,10",
    # aonly.test: no MX, an address (implicit MX)
    "host-record=aonly.test,127.0.0.3",
    # nullmx.test: RFC 7505
    "mx-host=nullmx.test,.,0",
    # relay.test: a smart host found by name
    "host-record=relay.test,127.0.0.1",
]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records=RECORDS) as server:
        yield server


@pytest.fixture
def mx_port() -> int:
    """One port free on 127.0.0.2 and 127.0.0.3: the MX hosts' port 25."""
    return common_mx_port()


def common_mx_port() -> int:
    for _ in range(20):
        port = free_port("127.0.0.2")
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.3", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no common free port on 127.0.0.2/127.0.0.3")


def transport(tmp_path: Path, **options) -> MxTransport:
    table = Checker(tmp_path).table("transports.mx", {**FAST, **options}, MxSettings.options())
    return MxTransport(MxSettings.from_table(table), TransportContext(tmp_path, "agent.test"))


async def send_all(t: MxTransport, recipients, count: int = 1):
    try:
        return [await t.send(MESSAGE, Envelope("alertmail@host.test", tuple(recipients))) for _ in range(count)]
    finally:
        await t.close()


def dead_resolver() -> str:
    return f"127.0.0.1:{free_port(kind=socket.SOCK_DGRAM)}"


def test_lower_preference_mx_gets_the_mail(tmp_path, dns, mx_port):
    with (
        SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port) as mx1,
        SmtpSink(tmp_path / "mx2", host="127.0.0.3", port=mx_port) as mx2,
    ):
        results = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"], count=6))
        assert len(mx1.wait_for(6, 10)) == 6
        assert mx2.messages() == []
    assert all(r.recipients["ops@example.test"].remote == f"mx1.example.test[127.0.0.2]:{mx_port}" for r in results)


def test_next_mx_takes_the_mail_when_the_first_is_down(tmp_path, dns, mx_port):
    with SmtpSink(tmp_path / "mx2", host="127.0.0.3", port=mx_port) as mx2:
        [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"]))
        assert len(mx2.wait_for(1, 10)) == 1
    assert result.recipients["ops@example.test"].status is Status.DELIVERED
    assert result.recipients["ops@example.test"].remote.startswith("mx2.example.test[127.0.0.3]")


def test_next_mx_takes_the_mail_when_the_first_answers_421(tmp_path, dns, mx_port):
    with (
        SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port, options=["-Q", "ehlo"]) as mx1,
        SmtpSink(tmp_path / "mx2", host="127.0.0.3", port=mx_port) as mx2,
    ):
        [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"]))
        assert len(mx2.wait_for(1, 10)) == 1
        assert mx1.messages() == []
    assert result.delivered == ["ops@example.test"]


def test_every_mx_down_is_temporary(tmp_path, dns, mx_port):
    [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"]))
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.4.1")
    assert "127.0.0.3" in status.remote  # the last one tried


def test_equal_preferences_share_the_load(tmp_path, dns, mx_port):
    with (
        SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port) as mx1,
        SmtpSink(tmp_path / "mx2", host="127.0.0.3", port=mx_port) as mx2,
    ):
        results = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@equal.test"], count=24))
        mx1.wait_for(1, 5), mx2.wait_for(1, 5)
    hosts = Counter(r.recipients["ops@equal.test"].remote.split("[")[0] for r in results)
    # Both are chosen: the chance that 24 shuffles all pick one host is 2 in 2**24.
    assert set(hosts) == {"mx1.example.test", "mx2.example.test"}


def test_recipients_are_grouped_by_domain(tmp_path, dns, mx_port):
    with (
        SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port) as mx1,
        SmtpSink(tmp_path / "mx2", host="127.0.0.3", port=mx_port) as mx2,
    ):
        [result] = run(
            send_all(
                transport(tmp_path, resolver=dns.address, port=mx_port), ["a@example.test", "b@other.test", "c@example.test"]
            )
        )
        [to_example] = mx1.wait_for(1, 10)
        [to_other] = mx2.wait_for(1, 10)
    assert result.delivered == ["a@example.test", "b@other.test", "c@example.test"]
    assert to_example.recipients == ["a@example.test", "c@example.test"]
    assert to_other.recipients == ["b@other.test"]


def test_domain_without_mx_is_delivered_to_its_address(tmp_path, dns, mx_port):
    with SmtpSink(tmp_path / "a", host="127.0.0.3", port=mx_port) as host:
        [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@aonly.test"]))
        assert len(host.wait_for(1, 10)) == 1
    assert result.recipients["ops@aonly.test"].remote == f"aonly.test[127.0.0.3]:{mx_port}"


def test_null_mx_is_permanent(tmp_path, dns, mx_port):
    [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@nullmx.test"]))
    status = result.recipients["ops@nullmx.test"]
    assert (status.status, status.code, status.enhanced) == (Status.PERMANENT, 556, "5.1.10")


def test_nxdomain_is_permanent(tmp_path, dns, mx_port):
    [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@missing.test"]))
    status = result.recipients["ops@missing.test"]
    assert (status.status, status.enhanced) == (Status.PERMANENT, "5.1.2")
    assert "NXDOMAIN" in status.message


def test_dns_server_down_is_temporary(tmp_path, mx_port):
    [result] = run(send_all(transport(tmp_path, resolver=dead_resolver(), port=mx_port, dns_timeout=0.5), ["ops@example.test"]))
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.4.3")


def test_one_bad_domain_does_not_hold_back_the_others(tmp_path, dns, mx_port):
    with SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port):
        [result] = run(
            send_all(
                transport(tmp_path, resolver=dns.address, port=mx_port), ["a@example.test", "b@nullmx.test", "c@missing.test"]
            )
        )
    assert result.delivered == ["a@example.test"]
    assert result.permanent == ["b@nullmx.test", "c@missing.test"]


def test_smart_host_takes_the_mail_when_the_mx_is_down(tmp_path, dns, mx_port):
    with SmtpSink(tmp_path / "relay") as relay:
        t = transport(
            tmp_path, resolver=dns.address, port=mx_port, mode="mx-then-smarthost", smart_host=f"[127.0.0.1]:{relay.port}"
        )
        [result] = run(send_all(t, ["ops@example.test", "gone@nullmx.test"]))
        [got] = relay.wait_for(1, 10)
    assert result.recipients["ops@example.test"].remote == f"127.0.0.1:{relay.port}"
    # A permanent answer from DNS is final: the smart host is not asked about it.
    assert result.recipients["gone@nullmx.test"].status is Status.PERMANENT
    assert got.recipients == ["ops@example.test"]


def test_mx_then_smarthost_goes_direct_when_the_mx_is_up(tmp_path, dns, mx_port):
    with SmtpSink(tmp_path / "relay") as relay, SmtpSink(tmp_path / "mx1", host="127.0.0.2", port=mx_port) as mx1:
        t = transport(
            tmp_path, resolver=dns.address, port=mx_port, mode="mx-then-smarthost", smart_host=f"[127.0.0.1]:{relay.port}"
        )
        [result] = run(send_all(t, ["ops@example.test"]))
        assert len(mx1.wait_for(1, 10)) == 1
        assert relay.messages() == []
    assert result.delivered == ["ops@example.test"]


def test_smarthost_mode_with_an_address_skips_dns(tmp_path, mx_port):
    with SmtpSink(tmp_path / "relay") as relay:
        t = transport(
            tmp_path, resolver=dead_resolver(), dns_timeout=0.5, mode="smarthost", smart_host=f"[127.0.0.1]:{relay.port}"
        )
        [result] = run(send_all(t, ["ops@example.test", "dev@nullmx.test"]))
        assert len(relay.wait_for(1, 10)) == 1
    assert result.delivered == ["ops@example.test", "dev@nullmx.test"]


def test_smart_host_by_name_is_looked_up_as_a_host(tmp_path, dns):
    with SmtpSink(tmp_path / "relay") as relay:
        t = transport(tmp_path, resolver=dns.address, mode="smarthost", smart_host=f"relay.test:{relay.port}")
        [result] = run(send_all(t, ["ops@example.test"]))
    assert result.recipients["ops@example.test"].remote == f"relay.test[127.0.0.1]:{relay.port}"


def test_opportunistic_starttls_accepts_any_certificate(tmp_path, dns, mx_port):
    from aiosmtpd.controller import Controller

    tls = make_tls_files(tmp_path / "tls")
    handler = Recorder()
    server = Controller(
        handler,
        hostname="127.0.0.2",
        port=mx_port,
        server_hostname="mx1.example.test",
        tls_context=tls.server_context(rogue=True),
    )
    server.start()
    try:
        [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"]))
    finally:
        server.stop()
    assert result.delivered == ["ops@example.test"]
    assert handler.messages[0][4]  # the session was encrypted


def test_domain_literal_is_delivered_without_dns(tmp_path, mx_port):
    with SmtpSink(tmp_path / "lit", host="127.0.0.2", port=mx_port) as host:
        [result] = run(send_all(transport(tmp_path, resolver=dead_resolver(), port=mx_port), ["ops@[127.0.0.2]"]))
        assert len(host.wait_for(1, 10)) == 1
    assert result.delivered == ["ops@[127.0.0.2]"]


def test_failed_starttls_handshake_falls_back_to_plain_text(tmp_path, dns, mx_port):
    import ssl

    from aiosmtpd.controller import Controller

    tls = make_tls_files(tmp_path / "tls")
    broken = tls.server_context()
    # Only RSA suites up to TLS 1.2 with an EC key: no handshake can succeed.
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    broken.set_ciphers("aRSA")
    handler = Recorder()
    server = Controller(handler, hostname="127.0.0.2", port=mx_port, server_hostname="mx1.example.test", tls_context=broken)
    server.start()
    try:
        [result] = run(send_all(transport(tmp_path, resolver=dns.address, port=mx_port), ["ops@example.test"]))
    finally:
        server.stop()
    assert result.delivered == ["ops@example.test"]
    assert not handler.messages[0][4]  # delivered, in plain text


def test_smart_host_modes_need_a_smart_host(tmp_path):
    with pytest.raises(ValueError, match="needs smart_host"):
        transport(tmp_path, mode="smarthost")


def test_resolver_must_be_an_address(tmp_path):
    with pytest.raises(ValueError, match=r"transports\.mx\.resolver"):
        transport(tmp_path, resolver="dns.example.test:53")


def test_transport_is_loaded_as_a_bundled_plugin():
    from alertmail.loader import load_plugins

    plugins = load_plugins()
    assert plugins.transports["mx"] is MxTransport
    assert plugins.transports["smtp"].name == "smtp"


def test_every_transport_option_is_documented():
    from alertmail.plugins.transports.smtp import SmtpTransport

    text = (Path(__file__).parent.parent / "docs" / "transports.md").read_text()
    missing = [
        f"{cls.name}.{key}" for cls in (SmtpTransport, MxTransport) for key in cls.options.options() if f"`{key}`" not in text
    ]
    assert missing == []
