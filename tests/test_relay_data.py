"""Message data past a small in-memory bound goes to a file: a session in DATA holds little memory."""

from __future__ import annotations

import asyncio
import socket
import time
import tracemalloc
from types import SimpleNamespace

import pytest

from alertmail.plugins.relay import data as relay_data
from alertmail.plugins.relay.server import RelaySMTP
from tests.peers import SmtpSink
from tests.relay_peers import message_id, private_folder, received, start_relay

# Lines with a leading dot (doubled on the wire) and lines that end in a dot, so that
# ".<CRLF>" appears all through the data and across the pieces it is fed in.
LINE = b"..a line that starts with a dot and ends with one.\r\n" + (b"x" * 998 + b"\r\n") * 4


def stuffed_message(size: int) -> tuple[bytes, bytes]:
    """(what the client sends after DATA, up to and including the final dot; the message it stands for)."""
    body = LINE * (size // len(LINE))
    wire = b"Subject: big\r\n\r\n" + body
    return wire + b".\r\n", wire.replace(b"\r\n..", b"\r\n.")


def test_a_large_message_streams_through_a_small_in_memory_bound(tmp_path):
    """3 MB sent in DATA and not finished: what the session holds in memory stays under 1 MB."""
    wire, message = stuffed_message(3_000_000)

    async def main() -> bytes:
        reader = asyncio.StreamReader(limit=RelaySMTP.line_length_limit)
        session = SimpleNamespace(
            _reader=reader, data_size_limit=10_000_000, policy=SimpleNamespace(data_folder=tmp_path / "relay-data")
        )
        pieces = [wire[at : at + 65_536] for at in range(0, len(wire) - 3, 65_536)]
        pieces[-1] = pieces[-1][:-3]
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            reading = asyncio.ensure_future(RelaySMTP._read_message(session))
            held = 0
            for piece in pieces:
                reader.feed_data(piece)
                for _ in range(10_000):  # until the session has taken all that was fed
                    if not reader._buffer:
                        break
                    await asyncio.sleep(0)
                held = max(held, tracemalloc.get_traced_memory()[0] - before)
        finally:
            tracemalloc.stop()
        assert held < 1_000_000, f"{held:,} bytes held in memory for an unfinished DATA of {len(wire):,} bytes"
        reader.feed_data(wire[-3:])
        content, size = await reading
        assert size == len(wire)
        assert content.in_memory <= relay_data.MEMORY_BOUND
        async with content.loaded() as loaded:
            got = loaded
        content.close()
        return got

    assert asyncio.run(main()) == message


def test_finished_messages_are_read_back_into_memory_a_few_at_a_time(tmp_path):
    inside, most = 0, 0

    async def finish(n: int) -> None:
        nonlocal inside, most
        data = relay_data.MessageData(tmp_path, memory=16)
        data.write(f"Subject: {n}\r\n\r\n{'y' * 100}\r\n.\r\n".encode())
        assert data.spilled and data.in_memory == 0
        async with data.loaded() as content:
            inside += 1
            most = max(most, inside)
            assert content == f"Subject: {n}\r\n\r\n{'y' * 100}\r\n".encode()
            await asyncio.sleep(0.01)
            inside -= 1
        data.close()

    async def main() -> None:
        await asyncio.gather(*(finish(n) for n in range(8)))

    asyncio.run(main())
    assert most == relay_data.LOADING_AT_ONCE


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-data-sink-") / "dump") as sink:
        yield sink


def send_raw(port: int, mid: str, size: int) -> tuple[bytes, bytes]:
    """A message of ``size`` bytes with dot-stuffed lines; (the final reply, the message as the sink should get it)."""
    wire, message = stuffed_message(size)
    head = f"Message-Id: {mid}\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=20) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220")
        conn.sendall(b"HELO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        replies = [reader.readline() for _ in range(4)]
        assert replies[-1].startswith(b"354"), replies
        conn.sendall(head + wire)
        final = reader.readline()
        conn.sendall(b"QUIT\r\n")
    return final, head + message


def test_a_message_over_the_bound_is_spooled_in_state_dir_and_delivered_intact(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 1})
    try:
        mid = message_id()
        final, message = send_raw(relay.port, mid, 3_000_000)
        assert final.startswith(b"250 2.0.0"), final
        body = message.split(b"\r\n\r\n", 1)[1].decode().rstrip().splitlines()
        deadline = time.monotonic() + 30
        while True:  # smtp-sink may still be writing its dump file when the Message-ID is in it
            (copy,) = received(sink, mid, timeout=30)
            lines = copy.message.get_payload().rstrip().splitlines()
            if lines == body or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert lines == body, "the message changed on the way"
        spool = relay.state_dir / "relay-data"
        assert spool.is_dir() and list(spool.iterdir()) == []  # unnamed files, gone with their session
    finally:
        assert relay.stop() == 0


def test_data_that_cannot_be_spooled_gets_452_and_nothing_is_queued(tmp_path, sink):
    (tmp_path / "relay" / "var").mkdir(parents=True)
    (tmp_path / "relay" / "var" / "relay-data").write_text("a file where the spool folder should be\n")
    relay = start_relay(tmp_path / "relay", sink, {"workers": 1})
    try:
        mid = message_id()
        final, _ = send_raw(relay.port, mid, 500_000)
        assert final.startswith(b"452 4.3.1"), final
        assert received(sink, mid, timeout=2.0) == []
        small = message_id()
        final, _ = send_raw(relay.port, small, 10_000)  # within the bound: no file needed
        assert final.startswith(b"250 2.0.0"), final
        assert len(received(sink, small)) == 1
    finally:
        assert relay.stop() == 0
