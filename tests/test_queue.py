"""The durable queue: put, group commit, recovery after a crash, requests from the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest

from alertmail.model import Envelope
from alertmail.queue import Entry, Queue, QueueLocked, QueueWriteError, valid_id

ENV = Envelope("alerts@example.test", ("ops@example.test", "dev@example.test"))
DATA = b"From: alerts@example.test\r\nTo: ops@example.test\r\nSubject: disk full\r\n\r\nbody\r\n"


def run(coro):
    return asyncio.run(coro)


def test_put_returns_an_id_whose_message_and_envelope_survive_a_restart(tmp_path):
    async def first() -> str:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        msg_id = await queue.put(DATA, ENV, route=["smtp", "pickup"], origin="relay")
        await queue.close()
        return msg_id

    msg_id = run(first())
    assert valid_id(msg_id)

    async def second() -> tuple[Entry | None, bytes]:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        entry = queue.get(msg_id)
        data = await queue.read(msg_id)
        await queue.close()
        return entry, data

    entry, data = run(second())
    assert entry is not None
    assert entry.envelope == ENV
    assert entry.route == ["smtp", "pickup"]
    assert entry.origin == "relay"
    assert entry.pending == ["ops@example.test", "dev@example.test"]
    assert data == DATA


def test_concurrent_puts_share_commit_rounds_and_folder_fsyncs(tmp_path):
    async def main() -> Queue:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        ids = await asyncio.gather(*(queue.put(DATA + str(i).encode(), ENV) for i in range(200)))
        assert len(set(ids)) == 200
        assert sorted(e.id for e in queue.entries()) == sorted(ids)
        for i, msg_id in enumerate(ids):
            assert await queue.read(msg_id) == DATA + str(i).encode()
        await queue.close()
        return queue

    queue = run(main())
    # One fsync per message file plus one folder fsync per round, and far fewer rounds than puts.
    assert queue.stats.commits < 200
    assert queue.stats.fsyncs == 200 + queue.stats.commits


def test_start_drops_temp_files_and_state_without_a_message(tmp_path):
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / ".0192aabbccdd11223344.msg.1a2b3c4d.tmp").write_bytes(b'{"id": "half')
    (folder / "0192aabbccdd55667788.json").write_bytes(b"{}")

    async def main() -> int:
        queue = Queue(folder)
        await queue.start()
        count = len(queue)
        await queue.close()
        return count

    assert run(main()) == 0
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["lock"]


def test_update_persists_per_recipient_state_and_remove_deletes_both_files(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        msg_id = await queue.put(DATA, ENV)
        entry = queue.get(msg_id)
        entry.recipients["ops@example.test"].status = "delivered"
        entry.attempts = 1
        await queue.update(entry)
        await queue.close()

        again = Queue(tmp_path / "queue")
        await again.start()
        assert again.get(msg_id).pending == ["dev@example.test"]
        assert again.get(msg_id).attempts == 1
        await again.remove(msg_id)
        await again.close()
        assert not list((tmp_path / "queue").glob(f"{msg_id}.*"))

    run(main())


def test_a_second_process_cannot_own_the_same_queue(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(f"""
                import asyncio
                from pathlib import Path
                from alertmail.queue import Queue, QueueLocked
                try:
                    asyncio.run(Queue(Path({str(tmp_path / 'queue')!r})).start())
                except QueueLocked:
                    raise SystemExit(3)
            """)],
            timeout=30,
        )
        await queue.close()
        assert child.returncode == 3

    run(main())


def test_put_that_cannot_be_written_raises_and_leaves_nothing(tmp_path):
    # A real write failure: the child may not grow files past 1 KB (EFBIG), like a full disk.
    script = textwrap.dedent(f"""
        import asyncio, resource, signal
        from pathlib import Path
        from alertmail.model import Envelope
        from alertmail.queue import Queue, QueueWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        async def main():
            queue = Queue(Path({str(tmp_path / 'queue')!r}))
            await queue.start()
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
            small = await queue.put(b"Subject: small\\r\\n\\r\\nok\\r\\n", Envelope("a@x.test", ("b@x.test",)))
            try:
                await queue.put(b"x" * 4096, Envelope("a@x.test", ("b@x.test",)))
            except QueueWriteError as exc:
                print("refused", exc.errno)
            await queue.close()
            print("kept", small)
        asyncio.run(main())
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert "refused 27" in out.stdout, out.stdout + out.stderr  # EFBIG
    kept = out.stdout.split("kept ")[1].strip()
    assert sorted(p.name for p in (tmp_path / "queue").iterdir() if p.is_file()) == [f"{kept}.msg", "lock"]


def test_queue_write_error_is_an_os_error():
    assert issubclass(QueueWriteError, OSError)
    assert issubclass(QueueLocked, RuntimeError)


def test_cli_requests_are_taken_once_and_applied(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        keep = await queue.put(DATA, ENV)
        gone = await queue.put(DATA, ENV)
        queue.get(keep).next_try = 10**12
        queue.request("retry", keep)
        queue.request("delete", gone)
        requests = queue.take_requests()
        assert sorted(requests) == [("delete", gone), ("retry", keep)]
        assert queue.take_requests() == []
        for action, msg_id in requests:
            queue.apply_request(action, msg_id, now=5.0)
        assert queue.get(gone) is None and not (tmp_path / "queue" / f"{gone}.msg").exists()
        assert queue.get(keep).next_try == 5.0
        await queue.close()

    run(main())


def test_put_refuses_cr_lf_in_envelope_addresses(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        with pytest.raises(ValueError):
            await queue.put(DATA, Envelope("a@x.test", ("b@x.test\r\nRCPT TO:<c@x.test>",)))
        await queue.close()

    run(main())
    assert not list((tmp_path / "queue").glob("*.msg"))
    assert os.path.exists(tmp_path / "queue" / "lock")
