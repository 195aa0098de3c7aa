"""The durable queue: put, group commit, recovery after a crash, requests from the CLI."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap

import pytest

from alertmail.model import Envelope
from alertmail.queue.entry import Entry, RecipientState, valid_id
from alertmail.queue.spool import Queue, QueueLocked, QueueWriteError
from tests.peers import SmtpSink
from tests.test_delivery import sink_folder

sink_dir_fixture = pytest.fixture(sink_folder, name="sink_dir")

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
    # One segment fsync plus one folder fsync per round, and far fewer rounds than puts.
    assert queue.stats.commits < 200
    assert queue.stats.fsyncs == 2 * queue.stats.commits


def test_start_drops_temp_files_and_state_without_a_message(tmp_path):
    folder = tmp_path / "queue"
    folder.mkdir()
    (folder / ".0192aabbccdd11223344.seg.1a2b3c4d.tmp").write_bytes(b'{"id": "half')
    (folder / "0192aabbccdd55667788.json").write_bytes(b"{}")
    (folder / "0192aabbccdd55667799.done").write_bytes(b"0192aabbccdd55667700\n")

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
        assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == ["control", "lock"]

    run(main())


def test_finished_messages_of_a_shared_segment_stay_finished_after_a_restart(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        ids = await asyncio.gather(*(queue.put(DATA + bytes([65 + i]), ENV) for i in range(3)))
        assert len({queue.get(i).segment for i in ids}) == 1  # one commit round, one segment
        await queue.remove(ids[0])
        await queue.remove(ids[2])
        await queue.close()

        again = Queue(tmp_path / "queue")
        await again.start()
        assert [e.id for e in again.entries()] == [ids[1]]
        assert await again.read(ids[1]) == DATA + b"B"
        await again.remove(ids[1])
        await again.close()
        assert sorted(p.name for p in (tmp_path / "queue").iterdir()) == ["control", "lock"]

    run(main())


def test_a_put_whose_caller_stops_waiting_is_still_queued_and_close_waits_for_it(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        task = asyncio.create_task(queue.put(DATA, ENV))
        await asyncio.sleep(0)  # the put is handed to the commit round
        task.cancel()
        await queue.close()
        assert len(queue) == 1
        again = Queue(tmp_path / "queue")
        await again.start()
        [entry] = again.entries()
        assert await again.read(entry.id) == DATA
        await again.close()

    run(main())


def test_a_second_process_cannot_own_the_same_queue(tmp_path):
    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        child = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                import asyncio
                from pathlib import Path
                from alertmail.queue.spool import Queue, QueueLocked
                try:
                    asyncio.run(Queue(Path({str(tmp_path / "queue")!r})).start())
                except QueueLocked:
                    raise SystemExit(3)
            """),
            ],
            timeout=30,
            check=False,
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
        from alertmail.queue.spool import Queue, QueueWriteError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        async def main():
            queue = Queue(Path({str(tmp_path / "queue")!r}))
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
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert "refused 27" in out.stdout, out.stdout + out.stderr  # EFBIG
    kept = out.stdout.split("kept ")[1].strip()
    names = sorted(p.name for p in (tmp_path / "queue").iterdir() if p.is_file())
    assert len(names) == 2 and names[0].endswith(".seg") and names[1] == "lock", names
    again = Queue(tmp_path / "queue")
    again.load()
    assert [e.id for e in again.entries()] == [kept]


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
        assert queue.get(gone) is None
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
    assert not list((tmp_path / "queue").glob("*.seg"))
    assert os.path.exists(tmp_path / "queue" / "lock")


# -- the command line ---------------------------------------------------------


def write_config(tmp_path, route: str = '["pickup"]') -> str:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[agent]\nstate_dir = "var"\n[mail]\nfrom = "alerts@example.test"\nroute = {route}\n'
        '[transports.pickup]\ndirectory = "out"\n'
        '[queue]\nretry = ["1h"]\nscan_interval = "100ms"\n'
    )
    return str(path)


def invoke(*args: str):
    from click.testing import CliRunner

    from alertmail.cli import cli

    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


async def queued(folder, count: int = 1) -> list[str]:
    queue = Queue(folder)
    await queue.start()
    ids = [await queue.put(DATA, ENV) for _ in range(count)]
    entry = queue.get(ids[0])
    entry.attempts, entry.last_error, entry.next_try = 2, "451 4.2.0 mailbox busy", entry.created + 3600
    await queue.update(entry)
    await queue.close()
    return ids


def test_queue_list_and_show_describe_waiting_messages(tmp_path):
    config = write_config(tmp_path)
    [msg_id, _] = run(queued(tmp_path / "var" / "queue", 2))
    out = invoke("queue", "list", "-c", config)
    assert out.exit_code == 0, out.output
    line = next(line for line in out.output.splitlines() if line.startswith(msg_id))
    assert "ops@example.test +1" in line and "451 4.2.0 mailbox busy" in line and re.search(r" in (1h|59m)", line)
    assert "2 message(s)" in out.output
    out = invoke("queue", "show", msg_id, "-c", config)
    assert out.exit_code == 0
    assert "<dev@example.test> pending" in out.output and "Subject: disk full" in out.output
    assert invoke("queue", "show", "0123456789abcdef", "-c", config).exit_code == 66
    assert invoke("queue", "show", "../../etc/passwd", "-c", config).exit_code == 64


def test_queue_delete_and_retry_act_directly_when_no_agent_runs(tmp_path):
    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    [first, second] = run(queued(folder, 2))
    assert invoke("queue", "delete", second, "-c", config).exit_code == 0
    reloaded = Queue(folder)
    reloaded.load()
    assert reloaded.get(second) is None and reloaded.get(first) is not None
    out = invoke("queue", "retry", "--all", "-c", config)
    assert out.exit_code == 0 and "1 message(s) due now" in out.output
    reloaded = Queue(folder)
    reloaded.load()
    assert reloaded.get(first).next_try <= __import__("time").time()


def test_queue_retry_is_handed_to_the_running_agent(tmp_path):
    from alertmail.delivery.delivery import Delivery, QueueSettings
    from alertmail.model import TransportContext
    from alertmail.plugins.transports.pickup import PickupSettings, PickupTransport

    config = write_config(tmp_path)
    folder = tmp_path / "var" / "queue"
    [msg_id] = run(queued(folder))
    out_folder = tmp_path / "out"

    async def main():
        queue = Queue(folder)
        await queue.start()
        pickup = PickupTransport(PickupSettings(directory=out_folder), TransportContext(state_dir=tmp_path / "var", hostname="h"))
        delivery = Delivery(
            queue,
            {"pickup": pickup},
            QueueSettings(scan_interval=0.1),
            state_dir=tmp_path / "var",
            hostname="h",
            default_route=["pickup"],
        )
        await delivery.start()
        try:
            await asyncio.sleep(0.3)
            assert len(queue) == 1  # not due for an hour
            out = await asyncio.to_thread(invoke, "queue", "retry", msg_id, "-c", config)
            assert f"{msg_id}: delivered" in out.output  # the command waits for the outcome and says it
            for _ in range(100):
                if not len(queue):
                    break
                await asyncio.sleep(0.05)
            assert len(queue) == 0
        finally:
            await delivery.stop()
            await queue.close()

    run(main())
    assert len(list(out_folder.glob("*.eml"))) == 1


def test_send_test_reports_each_recipient_and_exits_by_the_worst_result(tmp_path, sink_dir):

    config = write_config(tmp_path)
    out = invoke("send-test", "--to", "ops@example.test", "-c", config)
    assert out.exit_code == 0, out.output
    assert "ops@example.test  delivered  pickup" in out.output
    [written] = (tmp_path / "out").glob("*.eml")
    assert b"Subject: [TEST] [WARNING] " in written.read_bytes()  # an alert of the example rule, marked as a test

    with SmtpSink(sink_dir, options=["-f", "rcpt"]) as sink:
        (tmp_path / "smtp.toml").write_text(
            f'[agent]\nstate_dir = "var"\n[mail]\nfrom = "alerts@example.test"\nroute = ["smtp"]\n'
            f'[transports.smtp]\nservers = ["{sink.address}"]\ntls = "none"\nconnect_timeout = "2s"\n'
        )
        out = invoke("send-test", "--to", "ops@example.test", "-c", str(tmp_path / "smtp.toml"))
        assert out.exit_code == 69, out.output
        assert "permanent  smtp" in out.output
        sink.restart(["-r", "rcpt"])
        out = invoke("send-test", "--to", "ops@example.test", "-c", str(tmp_path / "smtp.toml"))
        assert out.exit_code == 75, out.output


def test_badmail_list_and_resend_without_a_running_agent(tmp_path):
    from alertmail.queue.badmail import Badmail

    config = write_config(tmp_path)
    bad = tmp_path / "var" / "badmail"
    entry = Entry(
        id="0190aabbccdd11223344",
        created=1.0,
        sender="alerts@example.test",
        recipients={"ops@example.test": RecipientState("failed", 550, "no")},
    )
    Badmail(bad).write(entry, DATA, reason="Failed: permanent failure", dsn="not sent")
    out = invoke("badmail", "list", "-c", config)
    assert entry.id in out.output and "Failed: permanent failure" in out.output
    out = invoke("badmail", "resend", entry.id, "-c", config)
    assert out.exit_code == 0, out.output
    new_id = out.output.split("queued again as ")[1].split(";")[0]
    assert not list(bad.iterdir())
    queue = Queue(tmp_path / "var" / "queue")
    queue.load()
    assert queue.get(new_id).envelope == Envelope("alerts@example.test", ("ops@example.test",))
    assert queue.read_message(new_id) == DATA
    assert invoke("badmail", "resend", entry.id, "-c", config).exit_code == 66


def test_queue_and_badmail_commands_answer_in_json_with_iso_times_and_whole_replies(tmp_path):
    import datetime as dt
    import json

    from alertmail.queue.badmail import Badmail
    from alertmail.queue.entry import Entry, RecipientState

    config = write_config(tmp_path)
    [msg_id] = run(queued(tmp_path / "var" / "queue"))
    listed = json.loads(invoke("queue", "list", "-c", config, "--json").output)
    assert [e["id"] for e in listed] == [msg_id] and listed[0]["last_error"] == "451 4.2.0 mailbox busy"
    assert dt.datetime.fromisoformat(listed[0]["next_try"]).tzinfo is not None
    shown = json.loads(invoke("queue", "show", msg_id, "-c", config, "--json").output)
    assert shown["attempts"] == 2 and "Subject:" in shown["headers"]

    reply = "550 5.1.1 <ops@example.test>: Recipient address rejected: User unknown in virtual mailbox table"
    entry = Entry(id="0" * 11 + "1" * 8, created=1.8e9, sender="alerts@example.test", recipients={}, size=10)
    entry.recipients["ops@example.test"] = RecipientState(status="failed", code=550, message=reply[4:], enhanced="")
    Badmail(tmp_path / "var" / "badmail").write(entry, b"Subject: x\r\n\r\nx\r\n", reason="permanent failure", dsn="sent")
    table = invoke("badmail", "list", "-c", config).output
    assert "User unknown in virtual mailbox table" in table  # the remote reply, whole, not only the reason
    [item] = json.loads(invoke("badmail", "list", "-c", config, "--json").output)
    assert item["reason"] == "permanent failure" and "User unknown in virtual mailbox table" in item["replies"][0]


def test_queue_show_decodes_encoded_subjects_and_badmail_help_has_no_markup(tmp_path):
    config = write_config(tmp_path)
    data = b"Subject: =?utf-8?q?Festplatte_/_zu_97=C2=A0%_voll?=\r\nFrom: a@example.test\r\n\r\nx\r\n"

    async def put() -> str:
        queue = Queue(tmp_path / "var" / "queue")
        await queue.start()
        try:
            return await queue.put(data, ENV)
        finally:
            await queue.close()

    msg_id = run(put())
    assert "Subject: Festplatte / zu 97\u00a0% voll" in invoke("queue", "show", msg_id, "-c", config).output
    assert "``" not in invoke("badmail", "--help").output


def test_first_delivery_sends_the_bytes_accepted_and_later_reads_are_verified_on_disk(tmp_path):
    """The first read gives the bytes whose checksum was written; a later one reads the segment and checks it."""
    from alertmail.queue.spool import QueueCorrupt

    async def main() -> None:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        try:
            msg_id = await queue.put(DATA, ENV)
            [seg] = (tmp_path / "queue").glob("*.seg")
            raw = bytearray(seg.read_bytes())
            raw[raw.index(b"disk full")] ^= 0x20
            seg.write_bytes(bytes(raw))
            assert await queue.read(msg_id) == DATA
            with pytest.raises(QueueCorrupt):
                await queue.read(msg_id)
        finally:
            await queue.close()

    run(main())


def test_messages_finished_together_are_marked_and_stay_finished(tmp_path):
    async def main() -> list[str]:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        first = await asyncio.gather(*(queue.put(DATA + bytes([65 + i]), ENV) for i in range(4)))
        second = await queue.put(DATA, ENV)
        await asyncio.gather(queue.remove(first[0]), queue.remove(first[2]), queue.remove(second))
        await queue.close()
        return first

    first = run(main())
    names = sorted(p.suffix for p in (tmp_path / "queue").iterdir() if p.is_file())
    assert names == ["", ".done", ".seg"]  # lock, and the first round's segment with its two marks

    async def again() -> list[str]:
        queue = Queue(tmp_path / "queue")
        await queue.start()
        ids = [e.id for e in queue.entries()]
        await queue.close()
        return ids

    assert run(again()) == [first[1], first[3]]


@pytest.mark.parametrize("route", [None, ["smtp", "pickup"]])
def test_entry_metadata_is_the_json_of_every_field_and_reads_back_whole(route):
    import json
    from dataclasses import asdict

    entry = Entry(
        id="0192aabbccdd11223344",
        created=1.5,
        sender="a@x.test",
        recipients={
            "b@x.test": RecipientState(),
            "c\u00e9@x.test": RecipientState("failed", 550, "no\r\n", "5.1.1", "r", "mx", 2.0, True),
        },
        route=route,
        origin="relay",
        size=12,
        attempts=3,
        crc=123,
    )
    raw = entry.to_json()
    assert raw == json.dumps(asdict(entry), separators=(",", ":"), ensure_ascii=True).encode()
    assert Entry.from_json(raw) == entry
