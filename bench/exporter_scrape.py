"""What scrapes of a large /metrics cost the other work on the agent's event loop.

    python bench/exporter_scrape.py [--series 40000] [--scrapers 4] [--seconds 10]

One event loop holds the exporter (its collector filled with ``--series`` series, as a
process probe on a busy host does) and a TCP echo server standing in for the relay: a
client thread sends one line every 20 ms and times the answer, while ``--scrapers``
client threads scrape /metrics back to back. Run twice, in separate processes:

    on-loop   the page written on the event loop for each scrape (the exporter before)
    now       state read on the loop, the page written in a worker thread and shared

Prints the echo reply times (median, 99th percentile, worst) and the scrapes served.
Asserts nothing: the machine is shared and the figures are noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _scraper(port: int, stop: float, served: list[int]) -> None:
    """Scrapes back to back, in a thread of its own: the loop does only the server's part."""
    while time.monotonic() < stop:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            while sock.recv(1 << 16):
                pass
        served[0] += 1


def _pinger(port: int, stop: float, replies: list[float]) -> None:
    """One line every 20 ms, timed to its echo, from a thread of its own: a blocked loop shows as a late reply."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        while time.monotonic() < stop:
            sent = time.perf_counter()
            sock.sendall(b"ping\n")
            sock.recv(16)
            replies.append(time.perf_counter() - sent)
            time.sleep(0.02)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        writer.write(line)
        await writer.drain()
    writer.close()


async def measure(mode: str, series: int, scrapers: int, seconds: float) -> dict:
    from alertmail.exporter.collector import AgentCollector
    from alertmail.exporter.exposition import encode, negotiate
    from alertmail.exporter.server import MetricsServer
    from alertmail.model import Sample

    collector = AgentCollector({}, states=list)
    collector.observe(Sample("process.rss_bytes", i, {"name": f"proc{i}", "user": "root"}) for i in range(series))

    class OnLoop(MetricsServer):
        async def page(self, accept: str) -> tuple[bytes, str]:
            content_type = negotiate(accept)
            return encode(self.collector.collect(), content_type), content_type

    server = (OnLoop if mode == "on-loop" else MetricsServer)("127.0.0.1:9", collector, cache_for=0)
    server.port = 0
    await server.start()
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    stop = time.monotonic() + seconds
    served = [0]
    replies: list[float] = []
    threads = [threading.Thread(target=_scraper, args=(server.port, stop, served)) for _ in range(scrapers)]
    threads.append(threading.Thread(target=_pinger, args=(echo.sockets[0].getsockname()[1], stop, replies)))
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        await asyncio.sleep(0.05)
    echo.close()
    await server.stop()
    replies.sort()
    return {
        "mode": mode,
        "median_ms": statistics.median(replies) * 1000,
        "p99_ms": replies[int(len(replies) * 0.99)] * 1000,
        "worst_ms": replies[-1] * 1000,
        "scrapes": served[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=40000)
    parser.add_argument("--scrapers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--mode", choices=("on-loop", "now"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(asyncio.run(measure(args.mode, args.series, args.scrapers, args.seconds))))
        return
    print(f"{args.series} series, {args.scrapers} scrapers back to back, {args.seconds:g} s; echo replies on the same loop")
    print(f"{'mode':<8} {'median':>9} {'p99':>9} {'worst':>9} {'scrapes':>8}")
    for mode in ("on-loop", "now"):
        out = subprocess.run(
            [sys.executable, __file__, "--mode", mode, *sys.argv[1:]], capture_output=True, text=True, check=True
        )
        r = json.loads(out.stdout)
        print(f"{mode:<8} {r['median_ms']:>7.1f}ms {r['p99_ms']:>7.1f}ms {r['worst_ms']:>7.1f}ms {r['scrapes']:>8}")


if __name__ == "__main__":
    main()
