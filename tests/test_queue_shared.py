"""Segments committed by other processes (the relay's receiving processes) and adopted by the queue's owner."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle

import pytest

from alertmail.model import Envelope
from alertmail.queue.spool import Queue, SharedWriter


def run(coro):
    return asyncio.run(coro)


def write_in_another_process(writer: SharedWriter, count: int, told: multiprocessing.Queue) -> None:
    async def main() -> None:
        queue = writer.open(told.put)
        await asyncio.gather(
            *(queue.put(f"Subject: {i}\r\n\r\nbody\r\n".encode(), Envelope("a@x.test", ("b@y.test",))) for i in range(count))
        )
        await queue.close()

    asyncio.run(main())


def test_a_segment_written_by_another_process_is_adopted_once_and_delivered_from(tmp_path):
    async def main() -> None:
        owner = Queue(tmp_path / "queue")
        await owner.start()
        seen = []
        owner.add_listener(seen.append)
        writer = pickle.loads(pickle.dumps(owner.shared_writer()))  # as a receiving process gets it
        told: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        process = multiprocessing.get_context("spawn").Process(target=write_in_another_process, args=(writer, 5, told))
        process.start()
        await asyncio.to_thread(process.join, 60)
        assert process.exitcode == 0
        segment = told.get(timeout=5)
        assert owner.adopt(segment) == 5
        assert owner.adopt(segment) == 0  # named twice, taken once
        assert owner.adopt_new() == 0
        assert len(owner) == 5 and len(seen) == 5
        data = await owner.read(seen[0].id)
        assert data.startswith(b"Subject: ")
        for entry in seen:
            await owner.remove(entry.id)
        assert not list((tmp_path / "queue").glob("*.seg"))
        assert owner.adopt(segment) == 0 and owner.adopt_new() == 0  # a finished segment never comes back
        await owner.close()

    run(main())


def test_a_segment_whose_writer_died_before_naming_it_is_found_by_a_listing(tmp_path):
    async def main() -> None:
        owner = Queue(tmp_path / "queue")
        await owner.start()
        writer = owner.shared_writer().open(lambda segment: None)  # the name is lost
        await writer.put(b"Subject: x\r\n\r\nbody\r\n", Envelope("a@x.test", ("b@y.test",)), origin="relay")
        await writer.close()
        assert len(owner) == 0
        assert owner.adopt_new() == 1
        (entry,) = owner.entries()
        assert entry.origin == "relay" and entry.recipients.keys() == {"b@y.test"}
        await owner.close()

    run(main())


def test_a_writer_keeps_no_entries_and_the_owner_keeps_its_lock(tmp_path):
    async def main() -> None:
        owner = Queue(tmp_path / "queue")
        await owner.start()
        writer = owner.shared_writer().open(lambda segment: None)
        for _ in range(3):
            await writer.put(b"Subject: x\r\n\r\nbody\r\n", Envelope("a@x.test", ("b@y.test",)))
        assert len(writer) == 0
        await writer.close()
        assert owner.acquire_lock()  # still the owner's
        await owner.close()

    run(main())


def test_a_segment_being_deleted_is_not_taken_again_by_a_listing(tmp_path):
    async def main() -> None:
        owner = Queue(tmp_path / "queue")
        await owner.start()
        writer = owner.shared_writer().open(lambda segment: None)
        await writer.put(b"Subject: x\r\n\r\nbody\r\n", Envelope("a@x.test", ("b@y.test",)))
        await writer.close()
        assert owner.adopt_new() == 1
        (entry,) = owner.entries()
        removal = asyncio.create_task(owner.remove(entry.id))
        await asyncio.sleep(0)  # finished in memory; its file is deleted by a thread a moment later
        assert (tmp_path / "queue" / f"{entry.segment}.seg").exists()
        assert owner.adopt_new() == 0
        await removal
        assert owner.adopt_new() == 0 and len(owner) == 0
        await owner.close()

    run(main())


def test_adopted_messages_are_delivered_from_the_bytes_the_adoption_verified(tmp_path):
    """The first read of an adopted message needs no second read of its segment; a later read goes to disk."""

    async def main() -> None:
        owner = Queue(tmp_path / "queue")
        await owner.start()
        seen = []
        owner.add_listener(seen.append)
        writer = owner.shared_writer()
        told: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        process = multiprocessing.get_context("spawn").Process(target=write_in_another_process, args=(writer, 3, told))
        process.start()
        await asyncio.to_thread(process.join, 60)
        segment = told.get(timeout=5)
        assert owner.adopt(segment) == 3
        path = tmp_path / "queue" / f"{segment}.seg"
        path.rename(path.with_suffix(".moved"))
        bodies = sorted([await owner.read(entry.id) for entry in seen])
        assert bodies == [f"Subject: {i}\r\n\r\nbody\r\n".encode() for i in range(3)]
        with pytest.raises(FileNotFoundError):  # a second read (a retry) comes from the segment
            await owner.read(seen[0].id)
        path.with_suffix(".moved").rename(path)
        assert await owner.read(seen[0].id) in bodies
        await owner.close()

    run(main())
