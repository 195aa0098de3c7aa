"""Delivery against real SMTP servers on loopback: smtp-sink (with fault injection) and aiosmtpd."""

from __future__ import annotations

import asyncio
import email
import email.policy
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest

from alertmail.config.schema import Checker
from alertmail.delivery.delivery import Delivery, QueueSettings
from alertmail.model import Envelope, TransportContext
from alertmail.queue.badmail import Badmail
from alertmail.queue.spool import Queue
from tests.peers import SmtpSink, free_port

FAST = QueueSettings(retry=[0.3], delay_notice=0.0, expire=60.0, send_timeout=10.0, scan_interval=0.1)


def alert(subject: str = "disk / is 97% full", *, sender: str = "alerts@example.test", to: str = "ops@example.test") -> bytes:
    msg = EmailMessage()
    msg["From"] = sender or "alerts@example.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("The disk is nearly full.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def message_id(data: bytes) -> str:
    return email.message_from_bytes(data, policy=email.policy.default)["Message-ID"]


def smtp_transport(address: str, state_dir: Path, **extra: object):
    """The bundled smtp transport pointed at a loopback server, plain text, short timeouts."""
    from alertmail.plugins.transports.smtp import SmtpSettings, SmtpTransport

    table = {
        "servers": [address],
        "tls": "none",
        "connect_timeout": "2s",
        "command_timeout": "5s",
        "data_timeout": "5s",
        "idle_timeout": "0",
        **extra,
    }
    check = Checker(state_dir)
    settings = SmtpSettings.from_table(check.table("transports.smtp", table, SmtpSettings.options()))
    assert not check.problems, check.problems
    return SmtpTransport(settings, TransportContext(state_dir=state_dir, hostname="agent.example.test"))


def pickup_transport(state_dir: Path, folder: Path):
    from alertmail.plugins.transports.pickup import PickupSettings, PickupTransport

    return PickupTransport(PickupSettings(directory=folder), TransportContext(state_dir=state_dir, hostname="h"))


@asynccontextmanager
async def delivering(state_dir: Path, transports: dict, *, settings: QueueSettings = FAST, default_route=("smtp",)):
    """A started queue and delivery over ``transports``; stopped (and transports closed) on exit."""
    queue = Queue(state_dir / "queue")
    await queue.start()
    delivery = Delivery(
        queue,
        transports,
        replace(settings, concurrency=4),
        state_dir=state_dir,
        hostname="agent.example.test",
        default_route=list(default_route),
    )
    await delivery.start()
    try:
        yield queue, delivery
    finally:
        await delivery.stop()
        for transport in transports.values():
            close = getattr(transport, "close", None)
            if close:
                await close()
        await queue.close()


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {timeout}s")
        await asyncio.sleep(0.05)


def pickup_messages(folder: Path) -> list[EmailMessage]:
    if not folder.is_dir():
        return []
    return [
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
        for p in sorted(folder.iterdir())
        if not p.name.startswith(".")
    ]


def delivery_status(report: EmailMessage) -> list[dict[str, str]]:
    """The field blocks of a DSN's message/delivery-status part."""
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    human, status, headers = report.iter_parts()
    assert human.get_content_type() == "text/plain"
    assert status.get_content_type() == "message/delivery-status"
    assert headers.get_content_type() == "text/rfc822-headers"
    return [dict(block.items()) for block in status.get_payload()]


def run(coro):
    return asyncio.run(coro)


def sink_folder() -> Iterator[Path]:
    """A dump folder for smtp-sink outside pytest's 0700 base folder, which smtp-sink (as
    nobody) can only traverse until another pytest session resets its mode."""
    folder = Path(tempfile.mkdtemp(prefix="alertmail-sink-", dir="/var/tmp"))
    yield folder / "sink"
    shutil.rmtree(folder, ignore_errors=True)


sink_dir_fixture = pytest.fixture(sink_folder, name="sink_dir")


# -- the tests --------------------------------------------------------------


@pytest.mark.peers
def test_message_queued_while_server_is_down_is_delivered_once_when_it_returns(tmp_path, sink_dir):
    sink = SmtpSink(sink_dir)
    sink.port = free_port()
    data = alert()

    async def main() -> None:
        async with delivering(tmp_path, {"smtp": smtp_transport(f"127.0.0.1:{sink.port}", tmp_path)}) as (queue, _):
            msg_id = await queue.put(data, Envelope("alerts@example.test", ("ops@example.test",)))
            await eventually(lambda: queue.get(msg_id).attempts >= 1)
            assert queue.get(msg_id).last_error.startswith("4")  # a temporary failure, kept for retry
            sink.start()
            try:
                await eventually(lambda: len(queue) == 0)
                await asyncio.sleep(0.5)  # a duplicate would have time to arrive
                got = sink.messages()
            finally:
                sink.stop()
        assert [m.message["Message-ID"] for m in got] == [message_id(data)]
        assert got[0].recipients == ["ops@example.test"]

    run(main())


@pytest.mark.peers
def test_temporary_refusal_is_retried_until_the_server_accepts(tmp_path, sink_dir):
    data = alert()

    async def main() -> None:
        with SmtpSink(sink_dir, options=["-r", "rcpt"]) as sink:
            async with delivering(tmp_path, {"smtp": smtp_transport(sink.address, tmp_path)}) as (queue, _):
                msg_id = await queue.put(data, Envelope("alerts@example.test", ("ops@example.test",)))
                entry = await eventually(lambda: queue.get(msg_id) if queue.get(msg_id).attempts >= 2 else None)
                assert entry.last_error.startswith("4")
                assert entry.pending == ["ops@example.test"]
                assert sink.messages() == []
                sink.restart([])
                await eventually(lambda: len(queue) == 0)
                assert [m.message["Message-ID"] for m in sink.wait_for(1)] == [message_id(data)]
        assert not (tmp_path / "badmail").exists() or not list((tmp_path / "badmail").iterdir())

    run(main())


@pytest.mark.peers
def test_permanent_refusal_sends_a_dsn_to_the_sender_and_writes_badmail(tmp_path, sink_dir):
    data = alert("cpu busy")
    dsn_folder = tmp_path / "dsn-out"

    async def main() -> str:
        with SmtpSink(sink_dir, options=["-f", "rcpt"]) as sink:
            transports = {"smtp": smtp_transport(sink.address, tmp_path), "pickup": pickup_transport(tmp_path, dsn_folder)}
            async with delivering(tmp_path, transports, default_route=("pickup",)) as (queue, _):
                msg_id = await queue.put(data, Envelope("alerts@example.test", ("nobody@example.test",)), route=["smtp"])
                await eventually(lambda: len(queue) == 0 and pickup_messages(dsn_folder))
                return msg_id

    msg_id = run(main())
    [report] = pickup_messages(dsn_folder)
    assert report["X-Sender"] == ""  # the DSN's own envelope sender is empty: <>
    assert report["X-Receiver"] == "alerts@example.test"
    assert report["Auto-Submitted"] == "auto-replied"
    per_message, per_rcpt = delivery_status(report)
    assert per_message["Reporting-MTA"] == "dns; agent.example.test"
    assert "Arrival-Date" in per_message
    assert per_rcpt["Final-Recipient"] == "rfc822; nobody@example.test"
    assert per_rcpt["Action"] == "failed"
    assert per_rcpt["Status"].startswith("5.")
    assert per_rcpt["Diagnostic-Code"].startswith("smtp; 5")
    assert per_rcpt["Remote-MTA"] == "dns; 127.0.0.1"
    headers = list(report.iter_parts())[2].get_content()
    assert "Subject: cpu busy" in headers

    bad = (tmp_path / "badmail" / f"{msg_id}.bad").read_bytes()
    assert bad.startswith(b"X-Sender: alerts@example.test\r\nX-Receiver: nobody@example.test\r\n")
    assert bad.endswith(data)
    reason = (tmp_path / "badmail" / f"{msg_id}.bdr").read_text()
    assert "permanent" in reason.lower() and "<nobody@example.test>  failed: 5" in reason
    assert "Attempts:  1" in reason


@pytest.mark.peers
def test_a_bounce_that_cannot_be_delivered_is_not_bounced(tmp_path, sink_dir):
    report = alert("Undelivered Mail Returned to Sender", sender="")

    async def main() -> list[str]:
        with SmtpSink(sink_dir, options=["-f", "rcpt"]) as sink:
            async with delivering(tmp_path, {"smtp": smtp_transport(sink.address, tmp_path)}) as (queue, _):
                await queue.put(report, Envelope("", ("alerts@example.test",)))
                await eventually(lambda: len(queue) == 0 and list((tmp_path / "badmail").glob("*.bdr")))
                await asyncio.sleep(0.3)
                assert len(queue) == 0  # no new DSN was queued
                return [p.read_text() for p in (tmp_path / "badmail").glob("*.bdr")]

    [reason] = run(main())
    assert "not sent: the message is itself a delivery report" in reason


class RecipientPicky:
    """An aiosmtpd handler refusing chosen recipients: 550 for ``refuse``, 451 for ``defer``."""

    def __init__(self, refuse: set[str], defer: set[str]) -> None:
        self.refuse, self.defer = refuse, defer
        self.received: list[tuple[list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            return "451 4.2.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append((list(envelope.rcpt_tos), envelope.content))
        return "250 2.0.0 queued"


@pytest.mark.peers
def test_partial_refusal_delivers_to_accepting_recipients_and_retries_only_the_others(tmp_path):
    from aiosmtpd.controller import Controller

    handler = RecipientPicky(refuse={"gone@example.test"}, defer={"busy@example.test"})
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mx.example.test")
    controller.start()
    rcpts = ("ok@example.test", "gone@example.test", "busy@example.test")
    dsn_folder = tmp_path / "dsn-out"

    async def main() -> str:
        transports = {"smtp": smtp_transport(f"127.0.0.1:{port}", tmp_path), "pickup": pickup_transport(tmp_path, dsn_folder)}
        async with delivering(tmp_path, transports, default_route=("pickup",)) as (queue, _):
            msg_id = await queue.put(alert(), Envelope("alerts@example.test", rcpts), route=["smtp"])
            entry = await eventually(lambda: queue.get(msg_id) if queue.get(msg_id).attempts >= 2 else None)
            assert entry.delivered == ["ok@example.test"]
            assert entry.failed == ["gone@example.test"]
            assert entry.pending == ["busy@example.test"]
            # The refused recipient was reported at once, not at the end.
            await eventually(lambda: pickup_messages(dsn_folder))
            handler.defer.clear()
            await eventually(lambda: len(queue) == 0)
            return msg_id

    try:
        msg_id = run(main())
    finally:
        controller.stop()
    assert [r for r, _ in handler.received] == [["ok@example.test"], ["busy@example.test"]]
    [report] = pickup_messages(dsn_folder)
    assert [b.get("Final-Recipient") for b in delivery_status(report)[1:]] == ["rfc822; gone@example.test"]
    bad = (tmp_path / "badmail" / f"{msg_id}.bad").read_bytes()
    assert b"X-Receiver: gone@example.test\r\n" in bad and b"X-Receiver: ok@example.test" not in bad


@pytest.mark.peers
def test_route_falls_back_to_the_next_transport_in_the_same_attempt(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    folder = tmp_path / "fallback"

    async def main() -> None:
        transports = {"smtp": smtp_transport(dead, tmp_path), "pickup": pickup_transport(tmp_path, folder)}
        async with delivering(tmp_path, transports, default_route=("smtp", "pickup")) as (queue, _):
            await queue.put(alert("via fallback"), Envelope("alerts@example.test", ("ops@example.test",)))
            await eventually(lambda: len(queue) == 0)

    run(main())
    [msg] = pickup_messages(folder)
    assert msg["Subject"] == "via fallback"
    assert msg["X-Receiver"] == "ops@example.test"


@pytest.mark.peers
def test_expiry_sends_one_delay_notice_then_a_failure_dsn_and_badmail(tmp_path, sink_dir):
    policy = QueueSettings(retry=[0.2], delay_notice=0.5, expire=1.5, send_timeout=5.0, scan_interval=0.1)
    dsn_folder = tmp_path / "dsn-out"

    async def main() -> str:
        with SmtpSink(sink_dir, options=["-r", "rcpt"]) as sink:
            transports = {"smtp": smtp_transport(sink.address, tmp_path), "pickup": pickup_transport(tmp_path, dsn_folder)}
            async with delivering(tmp_path, transports, settings=policy, default_route=("pickup",)) as (queue, _):
                msg_id = await queue.put(alert(), Envelope("alerts@example.test", ("ops@example.test",)), route=["smtp"])
                await eventually(lambda: len(queue) == 0 and len(pickup_messages(dsn_folder)) == 2)
                return msg_id

    msg_id = run(main())
    delayed, failed = sorted(pickup_messages(dsn_folder), key=lambda m: "Delayed" not in m["Subject"])
    [_, rcpt] = delivery_status(delayed)
    assert rcpt["Action"] == "delayed" and rcpt["Status"].startswith("4.") and "Will-Retry-Until" in rcpt
    [_, rcpt] = delivery_status(failed)
    assert rcpt["Action"] == "failed" and rcpt["Diagnostic-Code"].startswith("smtp; 4")
    assert "Will-Retry-Until" not in rcpt
    reason = (tmp_path / "badmail" / f"{msg_id}.bdr").read_text()
    assert reason.startswith("Expired")


@pytest.mark.peers
def test_badmail_resend_puts_the_message_back_and_it_is_delivered(tmp_path, sink_dir):
    data = alert("resend me")

    async def main() -> None:
        with SmtpSink(sink_dir, options=["-f", "rcpt"]) as sink:
            async with delivering(tmp_path, {"smtp": smtp_transport(sink.address, tmp_path)}) as (queue, _):
                await queue.put(data, Envelope("", ("ops@example.test",)))
                badmail = Badmail(tmp_path / "badmail")
                [item] = await eventually(badmail.items)
                sink.restart([])
                queue.request("resend", item.id)  # as `alertmail badmail resend` does with a running agent
                await eventually(sink.messages)
                await eventually(lambda: len(queue) == 0)
                assert badmail.items() == []
                [got] = sink.messages()
                assert got.message["Message-ID"] == message_id(data)
                assert got.recipients == ["ops@example.test"]

    run(main())


@pytest.mark.peers
def test_retry_request_makes_a_running_delivery_try_again_now(tmp_path, sink_dir):
    sink = SmtpSink(sink_dir)
    sink.port = free_port()
    slow = QueueSettings(retry=[3600.0], delay_notice=0.0, expire=86400.0, send_timeout=5.0, scan_interval=0.1)

    async def main() -> None:
        async with delivering(tmp_path, {"smtp": smtp_transport(f"127.0.0.1:{sink.port}", tmp_path)}, settings=slow) as (
            queue,
            _,
        ):
            msg_id = await queue.put(alert(), Envelope("alerts@example.test", ("ops@example.test",)))
            await eventually(lambda: queue.get(msg_id).attempts == 1)
            assert queue.get(msg_id).next_try > time.time() + 3000
            with sink:
                queue.request("retry", "all")
                await eventually(lambda: len(queue) == 0)
                assert len(sink.messages()) == 1

    run(main())


def test_a_manual_retry_that_fails_is_not_an_attempt_and_moves_no_backoff_on(tmp_path):
    dead = free_port()  # nothing listens: every try fails temporarily
    steps = QueueSettings(retry=[900.0, 1800.0, 3600.0], delay_notice=0.0, expire=86400.0, send_timeout=5.0, scan_interval=0.1)

    async def main() -> None:
        transports = {"smtp": smtp_transport(f"127.0.0.1:{dead}", tmp_path, connect_timeout=1.0)}
        async with delivering(tmp_path, transports, settings=steps) as (queue, _):
            msg_id = await queue.put(alert(), Envelope("alerts@example.test", ("ops@example.test",)))
            await eventually(lambda: queue.get(msg_id).attempts == 1)
            for _ in range(3):
                tried = queue.get(msg_id).last_try
                queue.request("retry", msg_id)
                await eventually(lambda tried=tried: queue.get(msg_id).last_try > tried)
            entry = queue.get(msg_id)
            assert entry.attempts == 1  # three manual retries, none counted
            assert 800 < entry.next_try - entry.last_try < 1000  # still the first step of 15 minutes

    run(main())


@pytest.mark.peers
def test_restart_resumes_delivery_of_queued_messages(tmp_path, sink_dir):
    sink = SmtpSink(sink_dir)
    sink.port = free_port()

    def transports():
        return {"smtp": smtp_transport(f"127.0.0.1:{sink.port}", tmp_path)}

    datas = [alert(f"alert {i}") for i in range(3)]

    async def before() -> None:
        async with delivering(tmp_path, transports()) as (queue, _):
            for data in datas:
                await queue.put(data, Envelope("alerts@example.test", ("ops@example.test",)))
            await eventually(lambda: all(e.attempts >= 1 for e in queue.entries()))

    async def after() -> None:
        async with delivering(tmp_path, transports()) as (queue, _):
            assert len(queue) == 3
            await eventually(lambda: len(queue) == 0)

    run(before())
    with sink:
        run(after())
        got = sink.messages()
    assert sorted(m.message["Message-ID"] for m in got) == sorted(message_id(d) for d in datas)
