"""PIPELINING (RFC 2920) in the delivery client, against real servers on loopback.

Each scenario runs twice, against a server that offers PIPELINING and against the same
server without it: the per-recipient results must be the same, and a tap between client
and server shows that with PIPELINING MAIL, the RCPTs and DATA left before any reply.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alertmail.model import Envelope, Status
from tests.certs import TlsFiles, make_tls_files
from tests.peers import SmtpSink, free_port
from tests.test_transport_smtp import MESSAGE, Recorder, Server, transport


@dataclass
class Refusing(Recorder):
    """A Recorder that can also refuse a sender, and the message after the dot; PIPELINING if asked."""

    pipelining: bool = True
    refuse_sender: set[str] = field(default_factory=set)
    data_reply: str | None = None

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == "slow@example.test":
            await asyncio.sleep(1.5)
        if address == "long@example.test":
            return "550-5.1.1 No such user here;\r\n550-see the directory\r\n550 5.1.1 for who is"
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in self.refuse_sender:
            return "550 5.7.1 Sender not allowed"
        envelope.mail_from = address
        return "250 2.1.0 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.data_reply:
            return self.data_reply
        return await super().handle_DATA(server, session, envelope)


class Tap:
    """A TCP relay on loopback that notes, in order, each chunk the client and the server sent."""

    def __init__(self, target_port: int, *, byte_by_byte: bool = False) -> None:
        self.target_port = target_port
        self.byte_by_byte = byte_by_byte  # hand the server's replies on one byte per write
        self.chunks: list[tuple[str, bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> Tap:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(side: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while chunk := await reader.read(65536):
                    self.chunks.append((side, chunk))
                    if side == "server" and self.byte_by_byte:
                        for i in range(len(chunk)):
                            writer.write(chunk[i : i + 1])
                            await writer.drain()
                            await asyncio.sleep(0)
                    else:
                        writer.write(chunk)
                        await writer.drain()
            except OSError:
                pass
            finally:
                writer.close()

        await asyncio.gather(pump("client", client_reader, server_writer), pump("server", server_reader, client_writer))

    def replies_between_mail_and_data(self) -> list[int]:
        """For each transaction: how many server chunks came between the client's MAIL and its DATA."""
        counts, waiting = [], None
        for side, chunk in self.chunks:
            if side == "client" and chunk.startswith(b"MAIL FROM:"):
                waiting = 0
            if waiting is not None and side == "server":
                waiting += 1
            if waiting is not None and side == "client" and b"DATA\r\n" in chunk:
                counts.append(waiting)
                waiting = None
        return counts


async def deliver(tmp_path: Path, port: int, envelopes: list[Envelope], byte_by_byte: bool = False, **options):
    async with Tap(port, byte_by_byte=byte_by_byte) as tap:
        t = transport(tmp_path, servers=[f"127.0.0.1:{tap.port}"], **{"tls": "none", **options})
        try:
            results = [await t.send(MESSAGE, envelope) for envelope in envelopes]
        finally:
            await t.close()
    return results, tap


def both_ways(tmp_path: Path, envelopes: list[Envelope], byte_by_byte: bool = False, **handler_options):
    """The results with PIPELINING and without it, and the pipelined run's tap."""
    runs = {}
    for pipelining in (True, False):
        handler = Refusing(pipelining=pipelining, **handler_options)
        with Server(handler) as server:
            results, tap = asyncio.run(deliver(tmp_path, server.port, envelopes, byte_by_byte))
        runs[pipelining] = (results, tap, handler)
    return runs


def statuses(results):
    """What each recipient got, the server's address (a different port each run) left out."""
    return [
        {r: (s.status, s.code, s.enhanced, s.message.replace(s.remote, "SERVER")) for r, s in result.recipients.items()}
        for result in results
    ]


def test_one_refused_recipient_among_accepted_ones_gives_the_same_results_pipelined(tmp_path):
    envelope = Envelope("alertmail@host.test", ("ops@example.test", "gone@example.test", "dev@example.test"))
    runs = both_ways(tmp_path, [envelope, envelope], refuse={"gone@example.test"})
    (piped, tap, handler), (plain, plain_tap, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    assert piped[0].delivered == ["ops@example.test", "dev@example.test"]
    assert piped[0].recipients["gone@example.test"].code == 550
    assert [rcpts for _, _, rcpts, *_ in handler.messages] == [["ops@example.test", "dev@example.test"]] * 2
    assert handler.messages[0][3] == MESSAGE
    assert tap.replies_between_mail_and_data() == [0, 0]
    assert min(plain_tap.replies_between_mail_and_data()) >= 2


@pytest.mark.parametrize("byte_by_byte", [False, True], ids=["whole", "one-byte-reads"])
def test_multiline_refusals_read_in_order_however_the_replies_arrive(tmp_path, byte_by_byte):
    envelope = Envelope("alertmail@host.test", ("ops@example.test", "long@example.test", "gone@example.test", "dev@example.test"))
    runs = both_ways(tmp_path, [envelope] * 3, byte_by_byte=byte_by_byte, refuse={"gone@example.test"})
    (piped, tap, handler), (plain, _, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    long = piped[2].recipients["long@example.test"]
    assert (long.code, long.enhanced, long.message) == (550, "5.1.1", "No such user here; see the directory 5.1.1 for who is")
    assert [r.delivered for r in piped] == [["ops@example.test", "dev@example.test"]] * 3
    assert len(handler.messages) == 3
    assert tap.replies_between_mail_and_data() == [0, 0, 0]


def test_a_reply_that_does_not_come_in_time_is_a_timeout_as_unpipelined(tmp_path):
    envelope = Envelope("alertmail@host.test", ("ops@example.test", "slow@example.test"))
    results = {}
    for pipelining in (True, False):
        with Server(Refusing(pipelining=pipelining)) as server:
            results[pipelining], tap = asyncio.run(deliver(tmp_path, server.port, [envelope], command_timeout=0.5))
        if pipelining:
            assert tap.replies_between_mail_and_data() == [0]
    assert statuses(results[True]) == statuses(results[False])
    status = results[True][0].recipients["ops@example.test"]
    assert (status.status, status.enhanced) == (Status.TEMPORARY, "4.4.2")
    assert "timed out" in status.message


def test_a_refused_sender_refuses_every_recipient_as_unpipelined(tmp_path):
    refused = Envelope("blocked@host.test", ("a@example.test", "b@example.test"))
    after = Envelope("alertmail@host.test", ("a@example.test",))
    runs = both_ways(tmp_path, [refused, after], refuse_sender={"blocked@host.test"})
    (piped, tap, handler), (plain, _, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    assert piped[0].permanent == ["a@example.test", "b@example.test"]
    assert piped[0].recipients["a@example.test"].message == "Sender not allowed"
    # The session stays in step: the next message on it goes through.
    assert piped[1].delivered == ["a@example.test"]
    assert len(handler.messages) == 1
    assert tap.replies_between_mail_and_data() == [0, 0]


def test_every_recipient_refused_sends_no_message_as_unpipelined(tmp_path):
    envelopes = [Envelope("alertmail@host.test", ("a@example.test", "b@example.test"))] * 2
    runs = both_ways(tmp_path, envelopes, refuse={"a@example.test", "b@example.test"})
    (piped, tap, handler), (plain, _, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    assert piped[1].permanent == ["a@example.test", "b@example.test"]
    assert handler.messages == []
    # DATA went with the RCPTs, before their refusals were known; the server refused it.
    assert tap.replies_between_mail_and_data() == [0, 0]


@pytest.mark.parametrize(
    ("reply", "status"), [("554 5.6.0 Message rejected", Status.PERMANENT), ("452 4.3.1 Out of storage", Status.TEMPORARY)]
)
def test_a_message_refused_after_the_dot_gives_the_same_results_pipelined(tmp_path, reply, status):
    envelopes = [Envelope("alertmail@host.test", ("a@example.test", "gone@example.test"))] * 2
    runs = both_ways(tmp_path, envelopes, refuse={"gone@example.test"}, data_reply=reply)
    (piped, tap, _), (plain, _, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    assert piped[0].recipients["a@example.test"].status is status
    assert piped[0].recipients["gone@example.test"].code == 550
    assert tap.replies_between_mail_and_data() == [0, 0]


class RefusingData(Server):
    """The aiosmtpd server, answering ``reply`` to the DATA command itself (no 354)."""

    def __init__(self, handler: Recorder, reply: str) -> None:
        from aiosmtpd.smtp import SMTP

        super().__init__(handler)

        class Smtp(SMTP):
            async def smtp_DATA(self, arg: str) -> None:
                await self.push(reply)

        self.controller.factory = lambda: Smtp(self.controller.handler, **self.controller.SMTP_kwargs)


@pytest.mark.parametrize(("reply", "status"), [("554 5.7.1 No thanks", Status.PERMANENT), ("451 4.3.0 Later", Status.TEMPORARY)])
def test_data_command_refused_after_the_recipients_as_unpipelined(tmp_path, reply, status):
    envelope = Envelope("alertmail@host.test", ("a@example.test", "gone@example.test", "b@example.test"))
    runs = {}
    for pipelining in (True, False):
        handler = Refusing(pipelining=pipelining, refuse={"gone@example.test"})
        with RefusingData(handler, reply) as server:
            runs[pipelining] = asyncio.run(deliver(tmp_path, server.port, [envelope, envelope]))
        assert handler.messages == []
    (piped, tap), (plain, _) = runs[True], runs[False]
    assert statuses(piped) == statuses(plain)
    assert piped[1].recipients["a@example.test"].status is status
    assert piped[1].recipients["a@example.test"].message == reply[10:]
    assert piped[1].recipients["gone@example.test"].code == 550
    assert tap.replies_between_mail_and_data() == [0, 0]


def test_many_recipients_over_smtp_sink_pipelined(tmp_path):
    recipients = tuple(f"user{i}@example.test" for i in range(40))
    with SmtpSink(tmp_path / "sink") as sink:
        results, tap = asyncio.run(deliver(tmp_path, sink.port, [Envelope("alertmail@host.test", recipients)] * 3))
        received = sink.wait_for(3, 10)
    assert all(r.delivered == list(recipients) for r in results)
    assert [m.recipients for m in received] == [list(recipients)] * 3
    assert tap.replies_between_mail_and_data() == [0, 0, 0]


@pytest.fixture(scope="module")
def tls(tmp_path_factory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def test_pipelined_over_starttls_then_the_session_is_reused_and_quit(tmp_path, tls):
    envelope = Envelope("alertmail@host.test", ("ops@example.test", "gone@example.test"))
    writes = {}
    for pipelining in (True, False):
        handler = Refusing(pipelining=pipelining, refuse={"gone@example.test"})
        with Server(handler, tls_context=tls.server_context(), require_starttls=True) as server:
            results, tap = asyncio.run(deliver(tmp_path, server.port, [envelope] * 3, tls="starttls", ca_file=str(tls.ca)))
        assert [r.delivered for r in results] == [["ops@example.test"]] * 3
        assert all(tls_used for *_, tls_used, _ in handler.messages)
        assert len({peer for peer, *_ in handler.messages}) == 1
        assert handler.quits == 1
        writes[pipelining] = sum(side == "client" for side, _ in tap.chunks)
    # The tap sees only ciphertext: count the client's writes. MAIL, 2 RCPT, DATA, body
    # take 5 writes a message unpipelined, 2 pipelined.
    assert writes[False] - writes[True] >= 6


def test_a_pipelining_server_that_dropped_the_idle_session_gets_the_next_message_on_a_new_one(tmp_path, monkeypatch):
    monkeypatch.setattr("alertmail.plugins.transports.smtppool.PROBE_AFTER", 60.0)  # no RSET before reuse
    handler = Refusing()
    port = free_port()
    envelope = Envelope("alertmail@host.test", ("ops@example.test",))
    server = Server(handler, port=port).__enter__()

    def restart() -> None:
        nonlocal server
        server.__exit__()
        server = Server(handler, port=port).__enter__()

    async def scenario():
        async with Tap(port) as tap:
            t = transport(tmp_path, servers=[f"127.0.0.1:{tap.port}"], tls="none")
            try:
                first = await t.send(MESSAGE, envelope)
                await asyncio.to_thread(restart)
                await asyncio.sleep(0.1)
                second = await t.send(MESSAGE, envelope)
            finally:
                await t.close()
        return first, second, tap

    try:
        first, second, tap = asyncio.run(scenario())
    finally:
        server.__exit__()
    assert first.delivered == second.delivered == ["ops@example.test"]
    assert len({peer for peer, *_ in handler.messages}) == 2
    assert tap.replies_between_mail_and_data() == [0, 0]
