"""Durable queue throughput next to a bare SMTP client, to the same smtp-sink, in one run.

    python bench/queue_bench.py [-n 2000] [--dir FOLDER] [--concurrency 8]

1. bare: aiosmtplib sends the N messages one after another over one reused
   connection to smtp-sink (no durability at all: the wire limit for one client).
2. queue: the N messages are put into the Queue all at once (as a burst of alerts
   or a relay under load would), each acknowledged only once durable, while Delivery
   (the bundled smtp transport, connections reused) drains the queue to the same sink.
   Figures: puts/s (durable acknowledgements), messages/s end to end, fsyncs per message.

The queue folder must be on a real disk (not tmpfs), or fsync costs nothing; the
default is a temporary folder under /var/tmp. smtp-sink discards what it receives.
"""

from __future__ import annotations

import argparse
import asyncio
import email.policy
import os
import shutil
import socket
import subprocess
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path


def alert_messages(n: int) -> list[bytes]:
    """N alert-sized mails (about 2 KB), each with its own Message-ID."""
    body = "Disk / on web01 is 97.3% full (threshold 90%), for 5m.\n" + "metric history: " + "0.97 " * 280 + "\n"
    out = []
    for i in range(n):
        msg = EmailMessage()
        msg["From"] = "alerts@example.test"
        msg["To"] = "ops@example.test"
        msg["Subject"] = f"[FIRING] disk-root-full on web01 ({i})"
        msg["Message-ID"] = f"<bench-{i}-{os.getpid()}@example.test>"
        msg["Auto-Submitted"] = "auto-generated"
        msg.set_content(body)
        out.append(msg.as_bytes(policy=email.policy.SMTP))
    return out


def start_sink() -> tuple[subprocess.Popen, int]:
    binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([binary, *user, f"127.0.0.1:{port}", "256"], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


async def bare_client(port: int, messages: list[bytes]) -> float:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=30, start_tls=False, use_tls=False)
    await client.connect()
    start = time.perf_counter()
    for data in messages:
        await client.sendmail("alerts@example.test", ["ops@example.test"], data)
    elapsed = time.perf_counter() - start
    await client.quit()
    return elapsed


async def through_queue(port: int, messages: list[bytes], folder: Path, concurrency: int) -> dict[str, float]:
    from alertmail.config.schema import Checker
    from alertmail.delivery.delivery import Delivery, QueueSettings
    from alertmail.model import Envelope, TransportContext
    from alertmail.plugins.transports.smtp import SmtpSettings, SmtpTransport
    from alertmail.queue.spool import Queue

    check = Checker(folder)
    table = check.table("transports.smtp", {"servers": [f"127.0.0.1:{port}"], "tls": "none"}, SmtpSettings.options())
    smtp = SmtpTransport(SmtpSettings.from_table(table), TransportContext(state_dir=folder, hostname="bench.example.test"))
    queue = Queue(folder / "queue")
    await queue.start()
    delivery = Delivery(
        queue,
        {"smtp": smtp},
        QueueSettings(concurrency=concurrency),
        state_dir=folder,
        hostname="bench.example.test",
        default_route=["smtp"],
    )
    await delivery.start()
    envelope = Envelope("alerts@example.test", ("ops@example.test",))
    start = time.perf_counter()
    await asyncio.gather(*(queue.put(data, envelope) for data in messages))
    put_done = time.perf_counter() - start
    while len(queue):
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - start
    await delivery.stop()
    await smtp.close()
    await queue.close()
    return {"elapsed": elapsed, "put": put_done, "fsyncs": queue.stats.fsyncs, "commits": queue.stats.commits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="messages")
    parser.add_argument("--dir", type=Path, default=None, help="where the queue folder goes (a real disk)")
    parser.add_argument("--concurrency", type=int, default=8, help="delivery workers")
    args = parser.parse_args()
    messages = alert_messages(args.n)
    folder = Path(tempfile.mkdtemp(prefix="alertmail-bench-", dir=args.dir or "/var/tmp"))
    sink, port = start_sink()
    try:
        bare = asyncio.run(bare_client(port, messages))
        queued = asyncio.run(through_queue(port, messages, folder, args.concurrency))
    finally:
        sink.terminate()
        sink.wait()
        shutil.rmtree(folder, ignore_errors=True)
    n = args.n
    size = sum(map(len, messages)) / n
    print(f"{n} messages of {size:.0f} bytes to smtp-sink on 127.0.0.1, queue in {folder.parent}")
    print(f"bare aiosmtplib, one reused connection:   {n / bare:8.0f} msg/s  ({bare:.2f} s)")
    print(f"queue: durable puts (acknowledged):       {n / queued['put']:8.0f} msg/s  ({queued['put']:.2f} s)")
    print(
        f"queue + delivery, end to end (durable):   {n / queued['elapsed']:8.0f} msg/s  ({queued['elapsed']:.2f} s,"
        f" {args.concurrency} workers)"
    )
    print(f"ratio end to end / bare client:           {bare / queued['elapsed']:8.2f}")
    print(
        f"fsyncs per message: {queued['fsyncs'] / n:.3f} ({queued['fsyncs']:.0f} fsyncs,"
        f" {queued['commits']:.0f} commit rounds, {n / queued['commits']:.1f} messages per round)"
    )


if __name__ == "__main__":
    main()
