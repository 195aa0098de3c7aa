#!/usr/bin/env python3
"""Messages per second through the smtp transport to smtp-sink, next to a bare client.

    python bench/transport_smtp.py [N] [RUNS]

Sends N messages of 2 KB, one after the other, to Postfix's smtp-sink (discarding,
on loopback) three ways, in the same run: a bare aiosmtplib client on one
connection (``sendmail``), the smtp transport reusing its session, and the smtp
transport with ``idle_timeout = 0`` (a new session per message). Prints the median
of RUNS runs of each and the ratio to the bare client.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.peers import free_port, need, wait_port  # noqa: E402

from alertmail.model import Envelope, TransportContext  # noqa: E402
from alertmail.plugins.transports.smtp import SmtpSettings, SmtpTransport  # noqa: E402

MESSAGE = b"From: a@host.test\r\nTo: b@example.test\r\nSubject: bench\r\n\r\n" + b"x" * 2000 + b"\r\n"


async def bare(port: int, n: int) -> float:
    import aiosmtplib

    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench.test")
    await client.connect()
    start = time.perf_counter()
    for _ in range(n):
        await client.sendmail("a@host.test", ["b@example.test"], MESSAGE)
    elapsed = time.perf_counter() - start
    await client.quit()
    return elapsed


async def transport(port: int, n: int, idle: float) -> float:
    settings = SmtpSettings(servers=[f"127.0.0.1:{port}"], tls="none", idle_timeout=idle)
    t = SmtpTransport(settings, TransportContext(Path(tempfile.gettempdir()), "bench.test"))
    start = time.perf_counter()
    for _ in range(n):
        result = await t.send(MESSAGE, Envelope("a@host.test", ("b@example.test",)))
        assert result.delivered, result
    elapsed = time.perf_counter() - start
    await t.close()
    return elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([need("smtp-sink"), *user, f"127.0.0.1:{port}", "256"])
    try:
        wait_port("127.0.0.1", port)
        ways = {
            "bare aiosmtplib, one connection": lambda: bare(port, n),
            "smtp transport, session reused": lambda: transport(port, n, 30.0),
            "smtp transport, new session each": lambda: transport(port, n, 0.0),
        }
        rates: dict[str, list[float]] = {name: [] for name in ways}
        for _ in range(runs):
            for name, way in ways.items():
                rates[name].append(n / asyncio.run(way()))
        base = statistics.median(rates["bare aiosmtplib, one connection"])
        print(f"{n} messages of {len(MESSAGE)} bytes to smtp-sink, median of {runs} runs")
        for name, values in rates.items():
            rate = statistics.median(values)
            print(f"  {name:34s} {rate:7.0f} msg/s   {rate / base:5.2f} x bare")
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
