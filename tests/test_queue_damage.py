"""A damaged queue folder: nothing acknowledged is lost, nothing damaged is delivered.

Each record of a segment carries its lengths and a checksum, verified on every read.
Intact records of a damaged segment are recovered; the damaged bytes are moved to
``queue/corrupt/`` (never deleted) with a log line; stray files are skipped with a warning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alertmail.model import Envelope
from alertmail.queue.entry import Entry, RecipientState, new_id
from alertmail.queue.spool import Queue, QueueCorrupt
from tests.test_queue import invoke, write_config

ENV = Envelope("alerts@example.test", ("ops@example.test",))


def message(n: int, size: int = 600) -> bytes:
    body = f"message number {n}\r\n".encode() + b"x" * size + b"\r\nend\r\n"
    return f"From: alerts@example.test\r\nTo: ops@example.test\r\nSubject: m{n}\r\n\r\n".encode() + body


def run(coro):
    return asyncio.run(coro)


async def fill(folder: Path, count: int = 3) -> list[str]:
    """``count`` messages queued in one commit round (one segment); the queue is closed again."""
    queue = Queue(folder)
    await queue.start()
    ids = await asyncio.gather(*(queue.put(message(n), ENV) for n in range(count)))
    await queue.close()
    assert len(list(folder.glob("*.seg"))) == 1
    return list(ids)


async def contents(folder: Path) -> dict[str, bytes]:
    """What a starting queue would deliver: id -> bytes, for every message it can read."""
    queue = Queue(folder)
    await queue.start()
    out = {}
    try:
        for entry in queue.entries():
            try:
                out[entry.id] = await queue.read(entry.id)
            except QueueCorrupt:
                pass
    finally:
        await queue.close()
    return out


def segment(folder: Path) -> Path:
    [seg] = folder.glob("*.seg")
    return seg


def corrupt_files(folder: Path) -> list[Path]:
    corrupt = folder / "corrupt"
    return sorted(corrupt.iterdir()) if corrupt.is_dir() else []


def test_a_truncated_segment_delivers_the_intact_messages_and_never_the_cut_one(tmp_path, caplog):
    folder = tmp_path / "queue"
    ids = run(fill(folder))
    seg = segment(folder)
    raw = seg.read_bytes()
    seg.write_bytes(raw[:-40])  # the last message loses its end
    with caplog.at_level(logging.WARNING, logger="alertmail.queue.spool"):
        got = run(contents(folder))
    assert got == {ids[0]: message(0), ids[1]: message(1)}, "the cut message must not be delivered, the rest must"
    assert any("damaged" in r.getMessage() for r in caplog.records), caplog.text
    kept = b"".join(p.read_bytes() for p in corrupt_files(folder))
    assert raw[:-40][-200:] in kept, "the damaged bytes are kept in queue/corrupt/"
    # The recovery is itself durable: a second start sees the same, and logs nothing new.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="alertmail.queue.spool"):
        assert run(contents(folder)) == got
    assert not caplog.records, caplog.text


def test_a_damaged_first_record_loses_only_itself(tmp_path):
    folder = tmp_path / "queue"
    ids = run(fill(folder))
    seg = segment(folder)
    raw = bytearray(seg.read_bytes())
    raw[2:12] = b"#" * 10  # the first record's header
    seg.write_bytes(bytes(raw))
    got = run(contents(folder))
    assert got == {ids[1]: message(1), ids[2]: message(2)}, "the segment must not be dropped for its first record"
    assert corrupt_files(folder), "the damaged record is kept"


def test_a_flipped_byte_in_a_message_is_never_delivered(tmp_path):
    folder = tmp_path / "queue"
    ids = run(fill(folder))
    seg = segment(folder)
    raw = bytearray(seg.read_bytes())
    at = raw.index(b"message number 1") + 30
    raw[at] ^= 0x01  # same length, one bit different
    seg.write_bytes(bytes(raw))
    got = run(contents(folder))
    assert got == {ids[0]: message(0), ids[2]: message(2)}
    assert corrupt_files(folder)


def test_damage_after_the_start_is_caught_when_the_message_is_read(tmp_path):
    folder = tmp_path / "queue"
    run(fill(folder))

    async def main() -> None:
        queue = Queue(folder)
        await queue.start()
        try:
            seg = segment(folder)
            raw = bytearray(seg.read_bytes())
            raw[raw.index(b"message number 2") + 5] ^= 0x20
            seg.write_bytes(bytes(raw))
            first, _, third = queue.entries()
            assert await queue.read(first.id) == message(0)
            with pytest.raises(QueueCorrupt):
                await queue.read(third.id)
        finally:
            await queue.close()

    run(main())


def test_stray_segment_files_are_skipped_with_a_warning_and_kept(tmp_path, caplog):
    folder = tmp_path / "queue"
    ids = run(fill(folder))
    (folder / f"{new_id()}.seg").write_bytes(os.urandom(3000))
    (folder / f"{new_id()}.seg").write_bytes(b"")
    (folder / "notes.seg").write_bytes(b"somebody's notes\n")
    (folder / "x.seg").mkdir()
    (folder / ".hidden.d").mkdir()
    with caplog.at_level(logging.WARNING, logger="alertmail.queue.spool"):
        got = run(contents(folder))
    assert got == {ids[n]: message(n) for n in range(3)}
    assert (folder / "x.seg").is_dir() and (folder / ".hidden.d").is_dir()
    kept = {p.read_bytes() for p in [*folder.glob("*.seg"), *corrupt_files(folder)] if p.is_file()}
    assert b"somebody's notes\n" in kept
    assert any(len(b) == 3000 for b in kept), "a random stray is kept, not deleted"
    assert sum("stray" in r.getMessage() or "damaged" in r.getMessage() for r in caplog.records) >= 3, caplog.text


def old_format_segment(folder: Path, messages: list[bytes]) -> tuple[Path, list[str]]:
    """A segment as alertmail wrote it before records carried lengths and checksums."""
    parts, ids = [], []
    now = time.time()
    for data in messages:
        entry = Entry(
            id=new_id(),
            created=now,
            sender=ENV.sender,
            recipients={r: RecipientState() for r in ENV.recipients},
            size=len(data),
            next_try=now,
        )
        ids.append(entry.id)
        parts += [entry.to_json() + b"\n", data]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{new_id()}.seg"
    path.write_bytes(b"".join(parts))
    return path, ids


def test_a_queue_written_before_the_upgrade_still_delivers(tmp_path):
    folder = tmp_path / "queue"
    _, ids = old_format_segment(folder, [message(0), message(1)])
    assert run(contents(folder)) == {ids[0]: message(0), ids[1]: message(1)}


def test_a_truncated_old_format_segment_keeps_the_intact_message(tmp_path):
    folder = tmp_path / "queue"
    path, ids = old_format_segment(folder, [message(0), message(1)])
    path.write_bytes(path.read_bytes()[:-25])
    assert run(contents(folder)) == {ids[0]: message(0)}
    assert corrupt_files(folder)


def test_queue_list_corrupt_shows_what_was_set_aside(tmp_path):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    run(fill(folder))
    seg = segment(folder)
    seg.write_bytes(seg.read_bytes()[:-40])
    out = invoke("queue", "list", "--corrupt", "-c", config)  # before any start: found in place
    assert out.exit_code == 0, out.output
    assert seg.name in out.output and "damaged" in out.output
    run(contents(folder))
    out = invoke("queue", "list", "--corrupt", "-c", config)  # after a start: moved to queue/corrupt/
    assert out.exit_code == 0, out.output
    assert "corrupt" in out.output and seg.stem in out.output
    out = invoke("queue", "list", "-c", config)
    assert "2 message(s)" in out.output


def test_the_agent_delivers_a_damaged_queue_without_the_damaged_message(tmp_path):
    """Real process: a truncated segment and stray files, then `alertmail run` over pickup."""
    folder = tmp_path / "var" / "queue"
    ids = run(fill(folder))
    seg = segment(folder)
    seg.write_bytes(seg.read_bytes()[:-40])
    (folder / "x.seg").mkdir()
    (folder / f"{new_id()}.seg").write_bytes(b"")
    config = tmp_path / "config.toml"
    config.write_text(
        '[agent]\nstate_dir = "var"\n[mail]\nfrom = "alerts@example.test"\nroute = ["pickup"]\n'
        '[queue]\nretry = ["1h"]\n'
        "[probes.cpu]\nenabled = false\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "alertmail", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    pickup = tmp_path / "var" / "pickup"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if pickup.is_dir() and len(list(pickup.glob("*.eml"))) >= 2:
                break
            time.sleep(0.2)
        time.sleep(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    log = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    assert proc.returncode == 0, log
    delivered = sorted(p.read_bytes() for p in pickup.glob("*.eml"))
    assert len(delivered) == 2, log
    assert all(message(0) in d or message(1) in d for d in delivered), log
    assert not any(b"message number 2" in d for d in delivered), "the truncated message must not go out"
    assert "damaged" in log and ids[2] in log, log
    assert (folder / "x.seg").is_dir()


def test_delivery_sets_aside_a_message_damaged_after_the_start_and_never_sends_it(tmp_path):
    """The real delivery loop and pickup transport: the damaged message is set aside, the others go out."""
    from alertmail.delivery.delivery import Delivery, QueueSettings
    from tests.test_delivery import pickup_transport

    state_dir = tmp_path / "state"
    folder = state_dir / "queue"
    ids = run(fill(folder))
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        queue = Queue(folder)
        await queue.start()
        seg = segment(folder)
        raw = bytearray(seg.read_bytes())
        raw[raw.index(b"message number 1") + 40] ^= 0x04
        seg.write_bytes(bytes(raw))
        transports = {"pickup": pickup_transport(state_dir, out)}
        delivery = Delivery(queue, transports, QueueSettings(), state_dir=state_dir, hostname="h", default_route=["pickup"])
        await delivery.start()
        try:
            deadline = time.monotonic() + 10
            while len(queue) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await delivery.stop()
            await queue.close()

    run(main())
    sent = [p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")]
    assert len(sent) == 2
    assert not any(b"message number 1" in d for d in sent), "a message that fails verification is never delivered"
    kept = folder / "corrupt" / f"{ids[1]}.msg"
    assert kept.is_file() and b"message number 1" in kept.read_bytes()
    assert "checksum" in (folder / "corrupt" / f"{ids[1]}.msg.txt").read_text()
