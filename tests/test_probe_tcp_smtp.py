"""The ``tcp`` and ``smtp`` probes against real SMTP servers on loopback: Postfix's
smtp-sink (plain, and failing on purpose) and aiosmtpd with STARTTLS and a throwaway CA."""

from __future__ import annotations

import asyncio

import pytest

from alertmail.plugins.probes.netchecks import SMTP, TCP, ChecksSettings, ServiceProbe
from alertmail.probes.runner import configure_probe
from tests.peers import SmtpSink, free_port
from tests.service_peers import HttpServer, make_certs


def collect(probe, checks):
    probe.configure(ChecksSettings(checks=checks))
    samples = asyncio.run(probe.collect())
    return {(s.metric, *(v for k, v in s.labels if k != "check")): s.value for s in samples}


class StartTlsServer:
    """aiosmtpd on 127.0.0.1 offering STARTTLS with the given certificates."""

    def __init__(self, context) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Sink

        self.port = free_port()
        self.controller = Controller(
            Sink(), hostname="127.0.0.1", port=self.port, server_hostname="localhost", tls_context=context
        )

    def __enter__(self) -> StartTlsServer:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


# --- tcp ---------------------------------------------------------------------------


def test_an_open_port_is_up_with_its_connect_time(tmp_path):
    probe = ServiceProbe(TCP)
    with SmtpSink(tmp_path / "sink") as sink:
        got = collect(probe, [{"name": "sink", "host": "127.0.0.1", "port": sink.port}])
    assert got[("tcp.up",)] == 1.0
    assert 0 < got[("tcp.connect_seconds",)] < 10
    assert ("tls.cert_valid",) not in got
    assert "accepted the connection" in probe.detail("tcp.up", {"check": "sink"})


def test_a_closed_port_is_down_and_says_connection_refused():
    probe = ServiceProbe(TCP)
    got = collect(probe, [{"name": "gone", "host": "127.0.0.1", "port": free_port()}])
    assert got == {("tcp.up",): 0.0}
    assert "connection refused" in probe.detail("tcp.up", {"check": "gone"})


def test_starttls_smtp_reports_a_valid_certificate_and_its_days_left(tmp_path):
    certs = make_certs(tmp_path, days=5)
    probe = ServiceProbe(TCP)
    with StartTlsServer(certs.server_context()) as server:
        got = collect(
            probe, [{"name": "mx", "host": "127.0.0.1", "port": server.port, "starttls": "smtp", "ca_file": str(certs.ca)}]
        )
    assert got[("tcp.up",)] == got[("tls.cert_valid",)] == 1.0
    assert 4.9 < got[("tls.cert_days_left",)] < 5.1
    assert "STARTTLS (smtp) certificate valid, expires in 5.0 days" in probe.detail("tls.cert_days_left", {"check": "mx"})


def test_starttls_smtp_with_an_expired_certificate_is_invalid_and_says_expired(tmp_path):
    certs = make_certs(tmp_path, days=-1.5)
    probe = ServiceProbe(TCP)
    with StartTlsServer(certs.server_context()) as server:
        got = collect(
            probe, [{"name": "mx", "host": "127.0.0.1", "port": server.port, "starttls": "smtp", "ca_file": str(certs.ca)}]
        )
    assert got[("tcp.up",)] == 1.0  # the service answers; its certificate is what is wrong
    assert got[("tls.cert_valid",)] == 0.0
    assert -1.6 < got[("tls.cert_days_left",)] < -1.4
    detail = probe.detail("tls.cert_valid", {"check": "mx"})
    assert "certificate not valid: certificate has expired" in detail
    assert "expired 1.5 days ago" in detail


def test_implicit_tls_checks_the_chain_and_the_name(tmp_path):
    certs = make_certs(tmp_path, days=30)
    probe = ServiceProbe(TCP)
    with HttpServer(certs.server_context()) as server:
        collect(
            probe,
            [
                {"name": "trusted", "host": "127.0.0.1", "port": server.port, "tls": True, "ca_file": str(certs.ca)},
                {"name": "system-cas", "host": "127.0.0.1", "port": server.port, "tls": True},
                {"name": "by-name", "host": "localhost", "port": server.port, "tls": True, "ca_file": str(certs.ca)},
            ],
        )
        misnamed = make_certs(tmp_path / "misnamed", days=30, names=("other.test",))
        with HttpServer(misnamed.server_context()) as other:
            bad = ServiceProbe(TCP)
            bad_got = collect(
                bad, [{"name": "x", "host": "127.0.0.1", "port": other.port, "tls": True, "ca_file": str(misnamed.ca)}]
            )
    valid = {c: probe.detail("tls.cert_valid", {"check": c}) for c in ("trusted", "system-cas", "by-name")}
    assert "certificate valid" in valid["trusted"] and "certificate valid" in valid["by-name"]
    assert "unable to get local issuer certificate" in valid["system-cas"]
    assert bad_got[("tls.cert_valid",)] == 0.0
    assert "mismatch" in bad.detail("tls.cert_valid", {"check": "x"}).lower()


def test_starttls_not_offered_is_down_and_says_so(tmp_path):
    probe = ServiceProbe(TCP)
    with SmtpSink(tmp_path / "sink") as sink:  # smtp-sink speaks no TLS
        got = collect(probe, [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "starttls": "smtp"}])
    assert got[("tcp.up",)] == 0.0
    assert "STARTTLS not offered" in probe.detail("tcp.up", {"check": "sink"})


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"name": "a", "host": "h"}, "probes.tcp.checks[0].port: missing;"),
        ({"name": "a", "host": "h", "port": 70000}, "probes.tcp.checks[0].port: expected a port from 1 to 65535"),
        ({"name": "a", "host": "h", "port": 1, "starttls": "ftp"}, "probes.tcp.checks[0].starttls: expected one of 'smtp'"),
        ({"name": "a", "host": "h", "port": 1, "tls": True, "starttls": "smtp"}, "probes.tcp.checks[0].starttls: tls = true"),
    ],
)
def test_a_bad_tcp_check_is_refused_with_the_key_path(check, problem):
    problems = configure_probe("tcp", ServiceProbe(TCP), ChecksSettings(checks=[check]))
    assert any(p.startswith(problem) for p in problems), problems


# --- smtp --------------------------------------------------------------------------


def test_smtp_sink_answers_every_step_and_each_is_timed(tmp_path):
    probe = ServiceProbe(SMTP)
    with SmtpSink(tmp_path / "sink") as sink:
        got = collect(probe, [{"name": "sink", "host": "127.0.0.1", "port": sink.port, "ehlo": "probe.test"}])
    assert got[("smtp.up",)] == 1.0
    assert {k[1] for k in got if k[0] == "smtp.response_seconds"} == {"banner", "ehlo", "quit", "total"}
    assert all(0 <= v < 10 for k, v in got.items() if k[0] == "smtp.response_seconds")
    assert "answered: banner" in probe.detail("smtp.up", {"check": "sink"})


def test_smtp_with_starttls_times_the_handshake(tmp_path):
    certs = make_certs(tmp_path, days=30)
    probe = ServiceProbe(SMTP)
    with StartTlsServer(certs.server_context()) as server:
        got = collect(
            probe, [{"name": "mx", "host": "127.0.0.1", "port": server.port, "starttls": True, "ca_file": str(certs.ca)}]
        )
    assert got[("smtp.up",)] == 1.0
    assert {k[1] for k in got if k[0] == "smtp.response_seconds"} == {"banner", "ehlo", "starttls", "quit", "total"}


def test_smtp_with_an_expired_certificate_is_down_and_says_expired(tmp_path):
    certs = make_certs(tmp_path, days=-2)
    probe = ServiceProbe(SMTP)
    checks = [
        {"name": "checked", "host": "127.0.0.1", "port": 0, "starttls": True, "ca_file": str(certs.ca)},
        {"name": "unchecked", "host": "127.0.0.1", "port": 0, "starttls": True, "verify": False},
    ]
    with StartTlsServer(certs.server_context()) as server:
        for check in checks:
            check["port"] = server.port
        collect(probe, checks)
    assert "STARTTLS certificate not valid: certificate has expired" in probe.detail("smtp.up", {"check": "checked"})
    assert "answered" in probe.detail("smtp.up", {"check": "unchecked"})


def test_smtp_sink_refusing_the_session_is_down_and_says_what_it_answered(tmp_path):
    probe = ServiceProbe(SMTP)
    with SmtpSink(tmp_path / "sink", options=["-Q", "ehlo"]) as sink:  # 421 and disconnect at EHLO
        got = collect(probe, [{"name": "sink", "host": "127.0.0.1", "port": sink.port}])
    assert got[("smtp.up",)] == 0.0
    assert ("smtp.response_seconds", "banner") in got
    assert "ehlo: the server answered '421" in probe.detail("smtp.up", {"check": "sink"})


def test_smtp_to_a_closed_port_is_down_and_says_connection_refused():
    probe = ServiceProbe(SMTP)
    got = collect(probe, [{"name": "gone", "host": "127.0.0.1", "port": free_port()}])
    assert got == {("smtp.up",): 0.0}
    assert "connection refused" in probe.detail("smtp.up", {"check": "gone"})


# --- the STARTTLS dialogues, as a unit (IMAP and POP3 servers are not among the test peers) ---


class Written:
    """Stands in for a StreamWriter: records what the dialogue sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    async def drain(self) -> None:
        pass


def dialogue(protocol: str, server_lines: list[str]) -> tuple[list[bytes], Exception | None]:
    from alertmail.plugins.probes.tcp_check import starttls_dialogue

    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data("".join(line + "\r\n" for line in server_lines).encode())
        reader.feed_eof()
        writer = Written()
        try:
            await starttls_dialogue(reader, writer, protocol)
        except Exception as exc:
            return writer.sent, exc
        return writer.sent, None

    return asyncio.run(go())


def test_imap_starttls_reads_untagged_lines_until_its_tagged_ok():
    sent, error = dialogue("imap", ["* OK [CAPABILITY IMAP4rev1 STARTTLS] ready", "* BYE not really", "a1 OK Begin TLS now"])
    assert (sent, error) == ([b"a1 STARTTLS\r\n"], None)


def test_imap_starttls_refused_quotes_the_server():
    _, error = dialogue("imap", ["* OK ready", "a1 BAD STARTTLS not available"])
    assert "a1 BAD STARTTLS not available" in str(error)


def test_pop3_stls_and_its_refusal():
    assert dialogue("pop3", ["+OK POP3 ready", "+OK Begin TLS"]) == ([b"STLS\r\n"], None)
    _, error = dialogue("pop3", ["+OK POP3 ready", "-ERR command not understood"])
    assert "STLS answered: -ERR command not understood" in str(error)


def test_smtp_starttls_reads_a_multiline_ehlo_answer():
    sent, error = dialogue("smtp", ["220 mx ESMTP", "250-mx", "250-SIZE 1000", "250 STARTTLS", "220 go ahead"])
    assert (sent, error) == ([b"EHLO alertmail.invalid\r\n", b"STARTTLS\r\n"], None)
