"""The smtp transport against real servers on loopback: smtp-sink (with its fault
injection) and in-process aiosmtpd with STARTTLS, implicit TLS and AUTH."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alertmail.config.schema import Checker
from alertmail.model import Envelope, Status, TransportContext
from alertmail.plugins.transports.smtp import SmtpSettings, SmtpTransport
from tests.certs import TlsFiles, make_tls_files
from tests.peers import SmtpSink, free_port

MESSAGE = (
    b"From: alertmail@host.test\r\n"
    b"To: ops@example.test\r\n"
    b"Subject: disk / above 90%\r\n"
    b"Message-ID: <incident-1@host.test>\r\n"
    b"X-Marker: kept as sent\r\n"
    b"\r\n"
    b"The disk is nearly full.\r\n"
    b".a line starting with a dot\r\n"
)
FAST = {"connect_timeout": 2.0, "command_timeout": 5.0, "data_timeout": 5.0}


def run(coro):
    return asyncio.run(coro)


def transport(tmp_path: Path, **options) -> SmtpTransport:
    table = Checker(tmp_path).table("transports.smtp", {**FAST, **options}, SmtpSettings.options())
    return SmtpTransport(SmtpSettings.from_table(table), TransportContext(tmp_path, "agent.test"))


async def send_all(t: SmtpTransport, count: int = 1, recipients=("ops@example.test",), sender="alertmail@host.test"):
    try:
        return [await t.send(MESSAGE, Envelope(sender, tuple(recipients))) for _ in range(count)]
    finally:
        await t.close()


def closed_port() -> str:
    return f"127.0.0.1:{free_port()}"


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps what it receives and refuses chosen recipients."""

    refuse: set[str] = field(default_factory=set)
    messages: list[tuple] = field(default_factory=list)
    quits: int = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            (
                session.peer,
                envelope.mail_from,
                list(envelope.rcpt_tos),
                envelope.original_content,
                session.ssl is not None,
                session.auth_data if session.authenticated else None,
            )
        )
        return "250 2.0.0 Queued as 42"

    async def handle_QUIT(self, server, session, envelope):
        self.quits += 1
        return "221 Bye"


class Server:
    """An in-process aiosmtpd on 127.0.0.1, optionally with STARTTLS, implicit TLS or AUTH."""

    def __init__(self, handler: Recorder, port: int | None = None, **kwargs) -> None:
        from aiosmtpd.controller import Controller

        self.port = port or free_port()
        kwargs.setdefault("server_hostname", "localhost")
        self.controller = Controller(handler, hostname="127.0.0.1", port=self.port, **kwargs)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Server:
        self.controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self.controller.stop()


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def accept_alerts(server, session, envelope, mechanism, auth_data):
    from aiosmtpd.smtp import AuthResult

    ok = auth_data.login == b"alerts" and auth_data.password == b"s3cret-Pa55"
    return AuthResult(success=ok, handled=False, auth_data=auth_data.login)


# --- smtp-sink: delivery, failover, replies ---------------------------------


def test_message_arrives_unchanged_with_its_envelope(tmp_path):
    with SmtpSink(tmp_path / "sink") as sink:
        [result] = run(
            send_all(transport(tmp_path, servers=[sink.address], tls="none"), recipients=["a@example.test", "b@example.test"])
        )
        [got] = sink.wait_for(1, 10)
    assert result.delivered == ["a@example.test", "b@example.test"]
    status = result.recipients["a@example.test"]
    assert (status.code, status.enhanced, status.remote) == (250, "2.0.0", sink.address)
    assert got.sender == "alertmail@host.test"
    assert got.recipients == ["a@example.test", "b@example.test"]
    assert got.message["X-Marker"] == "kept as sent"
    assert ".a line starting with a dot" in got.message.get_content()


def test_second_server_takes_the_mail_when_the_first_is_down(tmp_path):
    dead = closed_port()
    with SmtpSink(tmp_path / "sink") as sink:
        [result] = run(send_all(transport(tmp_path, servers=[dead, sink.address], tls="none")))
        assert len(sink.wait_for(1, 10)) == 1
    assert result.recipients["ops@example.test"].status is Status.DELIVERED
    assert result.recipients["ops@example.test"].remote == sink.address


def test_a_dead_server_is_tried_last_for_a_while(tmp_path, caplog):
    dead = closed_port()
    caplog.set_level(logging.INFO, logger="alertmail.transport.smtp")
    with SmtpSink(tmp_path / "sink") as sink:
        results = run(send_all(transport(tmp_path, servers=[dead, sink.address], tls="none", idle_timeout=0), count=3))
        assert len(sink.wait_for(3, 10)) == 3
    assert all(r.delivered == ["ops@example.test"] for r in results)
    assert sum(dead in r.getMessage() for r in caplog.records) == 1


def test_server_answering_421_hands_the_mail_to_the_next(tmp_path):
    with SmtpSink(tmp_path / "closing", options=["-Q", "mail"]) as closing, SmtpSink(tmp_path / "good") as good:
        [result] = run(send_all(transport(tmp_path, servers=[closing.address, good.address], tls="none")))
        assert len(good.wait_for(1, 10)) == 1
        assert closing.messages() == []
    assert result.recipients["ops@example.test"].remote == good.address


def test_every_server_down_is_temporary_with_the_last_reason(tmp_path):
    [result] = run(send_all(transport(tmp_path, servers=[closed_port(), closed_port()], tls="none")))
    status = result.recipients["ops@example.test"]
    assert status.status is Status.TEMPORARY
    assert status.enhanced == "4.4.1"
    assert "cannot connect" in status.message


def test_4xx_at_rcpt_is_temporary(tmp_path):
    with SmtpSink(tmp_path / "sink", options=["-r", "rcpt"]) as sink:
        [result] = run(send_all(transport(tmp_path, servers=[sink.address], tls="none")))
        assert sink.messages() == []
    status = result.recipients["ops@example.test"]
    assert status.status is Status.TEMPORARY
    assert status.code // 100 == 4 and status.enhanced.startswith("4.")


def test_5xx_at_rcpt_is_permanent(tmp_path):
    with SmtpSink(tmp_path / "sink", options=["-f", "rcpt"]) as sink:
        [result] = run(send_all(transport(tmp_path, servers=[sink.address], tls="none")))
        assert sink.messages() == []
    status = result.recipients["ops@example.test"]
    assert status.status is Status.PERMANENT
    assert status.code // 100 == 5 and status.enhanced.startswith("5.")


def test_5xx_at_mail_from_applies_to_every_recipient(tmp_path):
    with SmtpSink(tmp_path / "sink", options=["-f", "mail"]) as sink:
        [result] = run(
            send_all(transport(tmp_path, servers=[sink.address], tls="none"), recipients=["a@example.test", "b@example.test"])
        )
    assert result.permanent == ["a@example.test", "b@example.test"]


def test_connection_dropped_at_data_is_temporary(tmp_path):
    with SmtpSink(tmp_path / "sink", options=["-q", "data"]) as sink:
        [result] = run(send_all(transport(tmp_path, servers=[sink.address], tls="none")))
    status = result.recipients["ops@example.test"]
    assert status.status is Status.TEMPORARY
    assert status.enhanced == "4.4.2"


# --- aiosmtpd: recipients, sessions ------------------------------------------


def test_only_the_refused_recipient_fails(tmp_path):
    handler = Recorder(refuse={"gone@example.test"})
    with Server(handler) as server:
        [result] = run(
            send_all(
                transport(tmp_path, servers=[server.address], tls="none"),
                recipients=["ops@example.test", "gone@example.test", "dev@example.test"],
            )
        )
    assert result.delivered == ["ops@example.test", "dev@example.test"]
    gone = result.recipients["gone@example.test"]
    assert (gone.status, gone.code, gone.enhanced, gone.message) == (Status.PERMANENT, 550, "5.1.1", "No such user here")
    [(_, _, rcpts, data, _, _)] = handler.messages
    assert rcpts == ["ops@example.test", "dev@example.test"]
    assert data == MESSAGE


def test_no_data_is_sent_when_every_recipient_is_refused(tmp_path):
    handler = Recorder(refuse={"a@example.test", "b@example.test"})
    with Server(handler) as server:
        [result] = run(
            send_all(transport(tmp_path, servers=[server.address], tls="none"), recipients=["a@example.test", "b@example.test"])
        )
    assert result.permanent == ["a@example.test", "b@example.test"]
    assert handler.messages == []


def test_null_sender_is_sent_as_empty_reverse_path(tmp_path):
    handler = Recorder()
    with Server(handler) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address], tls="none"), sender=""))
    assert result.delivered == ["ops@example.test"]
    assert handler.messages[0][1] in ("", "<>")  # aiosmtpd keeps the brackets of the null path


def test_three_messages_share_one_session(tmp_path):
    handler = Recorder()
    with Server(handler) as server:
        results = run(send_all(transport(tmp_path, servers=[server.address], tls="none"), count=3))
        time.sleep(0.2)
    assert all(r.delivered == ["ops@example.test"] for r in results)
    peers = {peer for peer, *_ in handler.messages}
    assert len(handler.messages) == 3 and len(peers) == 1
    assert handler.quits == 1  # closed politely by close()


def test_idle_timeout_zero_opens_a_session_per_message(tmp_path):
    handler = Recorder()
    with Server(handler) as server:
        run(send_all(transport(tmp_path, servers=[server.address], tls="none", idle_timeout=0), count=3))
    assert len({peer for peer, *_ in handler.messages}) == 3


def test_idle_session_is_closed_after_idle_timeout(tmp_path):
    handler = Recorder()

    async def scenario(t: SmtpTransport) -> int:
        await t.send(MESSAGE, Envelope("a@host.test", ("ops@example.test",)))
        await asyncio.sleep(0.6)
        quits = handler.quits
        await t.close()
        return quits

    with Server(handler) as server:
        quits_before_close = run(scenario(transport(tmp_path, servers=[server.address], tls="none", idle_timeout=0.2)))
    assert quits_before_close == 1


@pytest.mark.parametrize("probe_after", [0.0, 60.0], ids=["rset-probe", "no-probe"])
def test_a_session_the_server_dropped_is_replaced(tmp_path, monkeypatch, probe_after):
    monkeypatch.setattr("alertmail.plugins.transports.smtppool.PROBE_AFTER", probe_after)
    handler = Recorder()
    port = free_port()

    async def scenario(t: SmtpTransport):
        first = await t.send(MESSAGE, Envelope("a@host.test", ("ops@example.test",)))
        await asyncio.to_thread(restart)
        second = await t.send(MESSAGE, Envelope("a@host.test", ("ops@example.test",)))
        await t.close()
        return first, second

    server = Server(handler, port=port).__enter__()

    def restart():
        nonlocal server
        server.__exit__()
        server = Server(handler, port=port).__enter__()

    try:
        first, second = run(scenario(transport(tmp_path, servers=[server.address], tls="none")))
    finally:
        server.__exit__()
    assert first.delivered == second.delivered == ["ops@example.test"]
    assert len({peer for peer, *_ in handler.messages}) == 2


class OneMessagePerSession(Recorder):
    """Answers 421 to a second MAIL on a session, as a server about to shut down does."""

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if any(peer == session.peer for peer, *_ in self.messages):
            return "421 4.3.2 Service shutting down"
        envelope.mail_from = address
        return "250 2.1.0 OK"


def test_reused_session_closed_by_the_server_is_retried_on_a_fresh_one(tmp_path):
    handler = OneMessagePerSession()
    with Server(handler) as server:
        results = run(send_all(transport(tmp_path, servers=[server.address], tls="none"), count=2))
    assert [r.delivered for r in results] == [["ops@example.test"]] * 2
    assert len({peer for peer, *_ in handler.messages}) == 2


# --- TLS and AUTH ---------------------------------------------------------------


def test_auth_over_starttls_with_password_from_env_never_logs_it(tmp_path, tls, monkeypatch, caplog):
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "s3cret-Pa55")
    handler = Recorder()
    caplog.set_level(logging.DEBUG)
    with Server(
        handler, tls_context=tls.server_context(), require_starttls=True, authenticator=accept_alerts, auth_required=True
    ) as server:
        [result] = run(
            send_all(
                transport(
                    tmp_path,
                    servers=[server.address],
                    tls="starttls",
                    ca_file=str(tls.ca),
                    username="alerts",
                    password_env="TEST_SMTP_PASSWORD",
                )
            )
        )
    assert result.delivered == ["ops@example.test"]
    [(_, _, _, _, over_tls, login)] = handler.messages
    assert over_tls and login == b"alerts"
    blob = base64.b64encode(b"\0alerts\0s3cret-Pa55").decode()
    for record in caplog.records:
        assert "s3cret-Pa55" not in record.getMessage()
        if record.name.startswith(("alertmail", "aiosmtplib")):
            assert blob not in record.getMessage()


def test_wrong_password_is_temporary_and_named(tmp_path, tls):
    secret = tmp_path / "password"
    secret.write_text("wrong\n")
    handler = Recorder()
    with Server(handler, tls_context=tls.server_context(), authenticator=accept_alerts, auth_required=True) as server:
        [result] = run(
            send_all(
                transport(tmp_path, servers=[server.address], ca_file=str(tls.ca), username="alerts", password_file=str(secret))
            )
        )
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.8")
    assert handler.messages == []


def test_untrusted_certificate_is_refused_by_default(tmp_path, tls):
    handler = Recorder()
    with Server(handler, tls_context=tls.server_context(rogue=True)) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address])))
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.5")
    assert handler.messages == []


def test_certificate_from_ca_file_is_accepted(tmp_path, tls):
    handler = Recorder()
    with Server(handler, tls_context=tls.server_context()) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address], ca_file=str(tls.ca))))
    assert result.delivered == ["ops@example.test"]
    assert handler.messages[0][4]  # over TLS


def test_tls_verify_false_accepts_an_untrusted_certificate(tmp_path, tls):
    handler = Recorder()
    with Server(handler, tls_context=tls.server_context(rogue=True)) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address], tls_verify=False)))
    assert result.delivered == ["ops@example.test"]
    assert handler.messages[0][4]


def test_starttls_required_but_not_offered_is_temporary_not_plain(tmp_path):
    handler = Recorder()
    with Server(handler) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address])))
    status = result.recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.7.0")
    assert handler.messages == []


def test_tls_failure_on_the_first_server_fails_over_to_the_second(tmp_path, tls):
    rogue, good = Recorder(), Recorder()
    with (
        Server(rogue, tls_context=tls.server_context(rogue=True)) as first,
        Server(good, tls_context=tls.server_context()) as second,
    ):
        [result] = run(send_all(transport(tmp_path, servers=[first.address, second.address], ca_file=str(tls.ca))))
    assert result.recipients["ops@example.test"].remote == second.address
    assert (len(rogue.messages), len(good.messages)) == (0, 1)


def test_implicit_tls_delivers(tmp_path, tls):
    handler = Recorder()
    with Server(handler, ssl_context=tls.server_context()) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address], tls="implicit", ca_file=str(tls.ca))))
    assert result.delivered == ["ops@example.test"]


def test_implicit_tls_with_untrusted_certificate_is_temporary(tmp_path, tls):
    handler = Recorder()
    with Server(handler, ssl_context=tls.server_context(rogue=True)) as server:
        [result] = run(send_all(transport(tmp_path, servers=[server.address], tls="implicit")))
    assert result.recipients["ops@example.test"].enhanced == "4.7.5"


# --- reply mapping (pure) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "text", "status", "enhanced", "message"),
    [
        (250, "2.0.0 Ok: queued as 4F2", Status.DELIVERED, "2.0.0", "Ok: queued as 4F2"),
        (451, "4.7.1 Greylisted, try again\nin 5 minutes", Status.TEMPORARY, "4.7.1", "Greylisted, try again in 5 minutes"),
        (550, "5.1.1 <x@example.test>: unknown", Status.PERMANENT, "5.1.1", "<x@example.test>: unknown"),
        (550, "User unknown", Status.PERMANENT, "5.0.0", "User unknown"),
        # an enhanced code of the wrong class is text, not a status
        (550, "4.2.2 Mailbox full", Status.PERMANENT, "5.0.0", "4.2.2 Mailbox full"),
        (452, "", Status.TEMPORARY, "4.0.0", ""),
    ],
)
def test_replies_map_to_status_enhanced_code_and_one_line_text(code, text, status, enhanced, message):
    from alertmail.plugins.transports.smtpclient import reply_status

    got = reply_status(code, text, "mx.example.test[192.0.2.1]:25")
    assert (got.status, got.code, got.enhanced, got.message) == (status, code, enhanced, message)


def test_session_failures_are_never_permanent():
    import aiosmtplib

    from alertmail.plugins.transports.smtpclient import failure_status

    greeting = failure_status(aiosmtplib.SMTPConnectResponseError(554, "5.7.1 go away"), "r")
    assert (greeting.status, greeting.code, greeting.enhanced) == (Status.TEMPORARY, 554, "4.7.1")
    assert failure_status(ConnectionRefusedError(111, "Connection refused"), "r").enhanced == "4.4.1"
    assert failure_status(aiosmtplib.SMTPReadTimeoutError("slow"), "r").enhanced == "4.4.2"


# --- configuration ---------------------------------------------------------------


def test_auth_without_tls_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "x")
    with pytest.raises(ValueError, match="clear text"):
        transport(tmp_path, servers=["127.0.0.1:25"], tls="none", username="alerts", password_env="TEST_SMTP_PASSWORD")


def test_missing_password_variable_is_refused_at_start(tmp_path, monkeypatch):
    monkeypatch.delenv("TEST_SMTP_PASSWORD", raising=False)
    with pytest.raises(ValueError, match=r"transports\.smtp\.password_env: .*TEST_SMTP_PASSWORD"):
        transport(tmp_path, servers=["127.0.0.1:25"], username="alerts", password_env="TEST_SMTP_PASSWORD")
    with pytest.raises(ValueError, match="no password"):
        transport(tmp_path, servers=["127.0.0.1:25"], username="alerts")


def test_config_requires_servers_and_refuses_inline_password(tmp_path):
    check = Checker(tmp_path)
    check.table("transports.smtp", {"password": "x", "tls": "ssl"}, SmtpSettings.options())
    text = "\n".join(check.problems)
    assert "transports.smtp.servers: missing" in text
    assert "transports.smtp.password: secrets are never written inline" in text
    assert "transports.smtp.tls: expected one of" in text


@pytest.mark.parametrize(
    "address", ["ops@example.test", "a.b+tag@mx-1.example.test", "x_y=z@[127.0.0.1]", "", "a@b@c", "a..b@x", "é@x.test", "<a@b>"]
)
def test_addresses_go_on_mail_and_rcpt_lines_as_aiosmtplib_quotes_them(address):
    from aiosmtplib.email import quote_address

    from alertmail.plugins.transports.smtpsession import simple_path

    path = simple_path(address)
    if path is not None:  # taken without the RFC 5322 parse: the same line
        assert path == quote_address(address)
    assert (path is None) == (address not in ("ops@example.test", "a.b+tag@mx-1.example.test", ""))


def test_reply_text_is_put_on_one_line_with_single_spaces_where_lines_broke():
    import itertools
    import re

    from alertmail.plugins.transports.smtpclient import one_line

    for parts in itertools.product(["ok", " ", "\r", "\n", "\t", "5.1.1"], repeat=5):
        text = "".join(parts)
        assert one_line(text) == re.sub(r"\s*[\r\n]+\s*", " ", text).strip(), repr(text)
    assert one_line("") == "" and one_line(None) == ""  # type: ignore[arg-type]
