"""Queue damage, the harder variants: nothing unverified is delivered, state files are
verified too, every message set aside is named by id with what is known of it, and a
file that cannot be read counts as damage.
"""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from pathlib import Path

from alertmail.model import Envelope
from alertmail.queue import segment as records
from alertmail.queue.spool import Queue
from tests.test_queue import invoke, write_config
from tests.test_queue_damage import ENV, contents, corrupt_files, fill, message, run, segment


def flip(path: Path, at: int, bit: int = 0x01) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= bit
    path.write_bytes(bytes(raw))


def test_a_record_whose_header_is_overwritten_is_never_delivered_unverified(tmp_path):
    """The header's magic overwritten and one bit of the body flipped: the metadata line still
    reads, but its message cannot be verified any more, so it is set aside, named."""
    folder = tmp_path / "queue"
    [msg_id] = run(fill(folder, 1))
    seg = segment(folder)
    raw = seg.read_bytes()
    seg.write_bytes(b"XXXXXX" + raw[6:])
    flip(seg, raw.index(b"message number 0"))
    damaged = seg.read_bytes()
    assert run(contents(folder)) == {}
    [kept, note] = corrupt_files(folder)
    assert kept.read_bytes() == damaged, "kept as found"
    assert msg_id in note.read_text() and "<ops@example.test>" in note.read_text()


def test_a_record_whose_header_is_overwritten_and_body_intact_is_still_not_delivered(tmp_path):
    folder = tmp_path / "queue"
    ids = run(fill(folder, 2))
    seg = segment(folder)
    raw = seg.read_bytes()
    seg.write_bytes(raw.replace(records.MAGIC, b"%AMQ9 "))  # every header
    assert run(contents(folder)) == {}
    note = corrupt_files(folder)[1].read_text()
    assert all(i in note for i in ids), note


async def with_state(folder: Path, recipients: tuple[str, ...] = ENV.recipients) -> str:
    """One queued message whose state file says one attempt was made."""
    queue = Queue(folder)
    await queue.start()
    msg_id = await queue.put(message(0), Envelope(ENV.sender, recipients))
    entry = queue.get(msg_id)
    assert entry is not None
    entry.attempts, entry.last_error = 1, "451 4.3.0 try later"
    await queue.update(entry)
    await queue.close()
    return msg_id


async def loaded(folder: Path):
    queue = Queue(folder)
    await queue.start()
    try:
        return {e.id: e for e in queue.entries()}
    finally:
        await queue.close()


def test_one_flipped_bit_in_a_state_file_never_sends_the_mail_elsewhere(tmp_path, caplog):
    folder = tmp_path / "queue"
    msg_id = run(with_state(folder))
    state = folder / f"{msg_id}.json"
    raw = state.read_bytes()
    assert raw.startswith(records.STATE_MAGIC), "state files carry a checksum"
    flip(state, raw.index(b'"ops@example.test"') + 2)  # ops -> oqs: another recipient, still valid JSON
    with caplog.at_level(logging.ERROR):
        entries = run(loaded(folder))
    assert list(entries[msg_id].recipients) == ["ops@example.test"]
    assert entries[msg_id].attempts == 0, "started over from the verified record"
    assert (folder / "corrupt" / f"{msg_id}.json").read_bytes() != raw, "the damaged state is kept"
    assert f"state file of message {msg_id} damaged" in caplog.text


def test_a_state_file_from_before_checksums_is_read_when_it_agrees_with_its_record(tmp_path):
    folder = tmp_path / "queue"
    msg_id = run(with_state(folder))
    state = folder / f"{msg_id}.json"
    legacy = state.read_bytes().split(b"\n")[1]  # the JSON line alone, as it was written before
    state.write_bytes(legacy)
    assert run(loaded(folder))[msg_id].attempts == 1
    state.write_bytes(legacy.replace(b"ops@example.test", b"tmq7@example.test"))
    entries = run(loaded(folder))
    assert list(entries[msg_id].recipients) == ["ops@example.test"] and entries[msg_id].attempts == 0


def test_a_state_file_with_a_valid_checksum_still_cannot_change_the_envelope(tmp_path):
    folder = tmp_path / "queue"
    msg_id = run(with_state(folder))
    state = folder / f"{msg_id}.json"
    meta = state.read_bytes().split(b"\n")[1].replace(b"ops@example.test", b"tmq7@example.test")
    state.write_bytes(records.STATE_MAGIC + f"{len(meta)} {zlib.crc32(meta):08x}\n".encode() + meta + b"\n")
    assert list(run(loaded(folder))[msg_id].recipients) == ["ops@example.test"]


def test_a_message_lost_in_damage_is_named_by_its_metadata_line(tmp_path):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    ids = run(fill(folder, 3))
    seg = segment(folder)
    raw = seg.read_bytes()
    second = raw.index(records.MAGIC, 1)
    seg.write_bytes(raw[:second] + b"\0" * 20 + raw[second + 20 :])  # its header gone, its metadata line intact
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert ids[1] in out.output and "ops@example.test" in out.output, out.output
    assert set(run(contents(folder))) == {ids[0], ids[2]}
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert ids[1] in out.output, out.output


def test_a_message_lost_whole_is_named_by_its_state_file_which_is_kept(tmp_path, caplog):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    keep = run(fill(folder, 1))
    msg_id = run(with_state(folder, ("oncall@example.test",)))
    seg = next(p for p in folder.glob("*.seg") if msg_id.encode() in p.read_bytes())
    size = len(seg.read_bytes())
    seg.write_bytes(b"\0" * size)  # nothing readable of the record is left
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert msg_id in out.output and "oncall@example.test" in out.output, out.output
    with caplog.at_level(logging.ERROR):
        assert set(run(contents(folder))) == set(keep)
    assert msg_id in caplog.text
    kept = folder / "corrupt" / f"{msg_id}.json"
    assert kept.is_file(), "the state file that names it is set aside, not deleted"
    assert "oncall@example.test" in (folder / "corrupt" / f"{msg_id}.json.txt").read_text()
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert msg_id in out.output, out.output


def test_an_unreadable_segment_counts_as_damage_and_is_kept_in_place_with_its_state(tmp_path, monkeypatch):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    msg_id = run(with_state(folder))
    seg = segment(folder)
    real_scan = records.scan

    def scan(path, **kwargs):  # what a chmod 000 does to any user but root
        if Path(path) == seg:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scan(path, **kwargs)

    monkeypatch.setattr(records, "scan", scan)
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert "nothing damaged" not in out.output
    assert seg.name in out.output and "Permission denied" in out.output, out.output
    assert run(contents(folder)) == {}
    assert seg.is_file(), "kept in place: it delivers once it can be read"
    monkeypatch.setattr(records, "scan", real_scan)
    assert run(loaded(folder))[msg_id].attempts == 1, "its state waited with it"


def test_a_folder_named_like_a_segment_counts_as_damage(tmp_path):
    from alertmail.queue.entry import new_id

    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    run(fill(folder, 1))
    odd = folder / f"{new_id()}.seg"
    odd.mkdir()
    out = invoke("queue", "list", "--corrupt", "-c", config)
    assert odd.name in out.output, out.output


def test_queue_list_warns_of_a_damaged_state_file_and_a_start_sets_it_aside(tmp_path):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    msg_id = run(with_state(folder))
    flip(folder / f"{msg_id}.json", 12)
    out = invoke("queue", "list", "-c", config)
    assert "damaged" in out.output, out.output
    asyncio.run(loaded(folder))
    assert (folder / "corrupt" / f"{msg_id}.json").is_file()


def test_a_segment_finished_while_the_folder_is_read_is_not_damage(tmp_path, monkeypatch):
    """`queue list` reads a folder the agent keeps changing: a segment or state file removed
    between the listing and the read is gone, not unreadable."""
    from alertmail.queue.entry import new_id

    folder = tmp_path / "queue"
    run(fill(folder, 1))
    gone = [f"{new_id()}.seg", f"{new_id()}.json"]
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": [*real(path), *gone] if Path(path) == folder else real(path))
    queue = Queue(folder)
    queue.load()
    assert len(queue.entries()) == 1 and queue.corrupt() == []
