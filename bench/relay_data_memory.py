"""Memory of the relay while many clients sit in an unfinished DATA, next to a bare aiosmtpd sink.

Each target gets the same load in one run: ``--sessions`` connections from 127.0.0.1,
each giving HELO, MAIL, RCPT and DATA and then ``--size`` MB of message data without the
final dot, and nothing more. Shown per target: the resident memory (RSS) of its
processes when idle and with every session parked, and the difference per session;
for the relay, its receiving process (the one that holds the sessions) and the agent
apart. With ``--finish`` every message is then ended at once and the highest RSS of the
receiving process until all are answered is shown too (messages are read back into
memory for the queue a few at a time).

- relay:    ``alertmail relay`` with one receiving process (``workers = 1``);
- aiosmtpd: a bare aiosmtpd server that keeps the data in memory, as aiosmtpd does,
            and answers 250 (stores nothing).

    python bench/relay_data_memory.py                        # 50 sessions × 8 MB
    python bench/relay_data_memory.py --against main         # main's relay too, in the same run
    python bench/relay_data_memory.py --sessions 300 --size 8 --finish
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import psutil

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))

from tests.peers import free_port, wait_port  # noqa: E402
from tests.relay_peers import relay_config  # noqa: E402

BARE_AIOSMTPD = """
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"

async def main(port):
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Handler(), hostname="bare.test", loop=loop), "127.0.0.1", port, backlog=512)
    print("ready", flush=True)
    await server.serve_forever()

asyncio.run(main(int(sys.argv[1])))
"""

MB = 1024 * 1024


def rss(pid: int) -> int:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.NoSuchProcess:
        return 0


def settle(pids: list[int], seconds: float = 1.0, timeout: float = 120.0) -> None:
    """Wait until the processes' CPU time stops growing for ``seconds`` (they have read what was sent)."""
    deadline = time.monotonic() + timeout
    last, still = -1.0, time.monotonic()
    while time.monotonic() < deadline:
        cpu = 0.0
        for pid in pids:
            try:
                times = psutil.Process(pid).cpu_times()
                cpu += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        if cpu - last > 0.02:
            last, still = cpu, time.monotonic()
        elif time.monotonic() - still >= seconds:
            return
        time.sleep(0.2)


class Peak(threading.Thread):
    """The highest RSS of ``pid`` while it runs."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peak = max(self.peak, rss(self.pid))
            time.sleep(0.02)


async def park(port: int, sessions: int, size: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """``sessions`` clients in DATA, each having sent ``size`` bytes of a message without its end."""
    line = b"x" * 998 + b"\r\n"
    chunk = line * 64

    async def one(n: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        await reader.readline()
        writer.write(b"HELO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        for _ in range(4):
            reply = await reader.readline()
        if not reply.startswith(b"354"):
            raise SystemExit(f"session {n}: DATA answered {reply!r}")
        writer.write(f"Subject: parked {n}\r\n\r\n".encode())
        sent = 0
        while sent < size:
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
        return reader, writer

    return await asyncio.gather(*(one(n) for n in range(sessions)))


async def finish(clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> list[bytes]:
    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(b".\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 300)

    return await asyncio.gather(*(one(r, w) for r, w in clients))


def close(clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in clients:
        writer.close()


def measure(name: str, port: int, server_pid: int, holder: int, args: argparse.Namespace) -> dict:
    """Park the sessions on the server at ``port``; ``holder`` is the process that holds them."""
    pids = [server_pid, *(c.pid for c in psutil.Process(server_pid).children(recursive=True))]
    settle(pids)
    idle = {pid: rss(pid) for pid in pids}
    loop = asyncio.new_event_loop()
    try:
        clients = loop.run_until_complete(park(port, args.sessions, int(args.size * MB)))
        settle(pids)
        parked = {pid: rss(pid) for pid in pids}
        result = {"name": name, "idle": idle, "parked": parked, "holder": holder, "pids": pids}
        if args.finish:
            peak = Peak(holder)
            peak.start()
            replies = loop.run_until_complete(finish(clients))
            peak.done.set()
            peak.join()
            result["peak"] = peak.peak
            result["answered"] = sum(r.startswith(b"250") for r in replies)
        close(clients)
        loop.run_until_complete(asyncio.sleep(0.2))
    finally:
        loop.close()
    return result


def run_relay(code: Path, label: str, args: argparse.Namespace) -> dict:
    folder = Path(tempfile.mkdtemp(prefix="relay-data-memory-"))
    port = free_port()
    next_hop = SimpleNamespace(host="127.0.0.1", port=free_port())  # nothing listens: what is accepted stays queued
    options = {"workers": 1, "max_size": f"{int(args.size) + 2}MB", "max_connections": max(300, args.sessions + 10)}
    config = relay_config(folder, next_hop, port, options)
    command = [sys.executable, "-c", "import sys; from alertmail.cli import main; sys.argv[0] = 'alertmail'; main()"]
    with open(folder / "relay.stderr", "wb") as err:
        proc = subprocess.Popen(
            [*command, "relay", "-c", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=err,
            cwd=code,
            env={**os.environ, "PYTHONPATH": str(code)},
        )
    try:
        wait_port("127.0.0.1", port, timeout=30)
        time.sleep(0.5)
        (receiver,) = psutil.Process(proc.pid).children()
        return measure(label, port, proc.pid, receiver.pid, args)
    finally:
        proc.terminate()
        proc.wait(30)


def run_aiosmtpd(args: argparse.Namespace) -> dict:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_AIOSMTPD, str(port)], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        return measure("bare aiosmtpd", port, proc.pid, proc.pid, args)
    finally:
        proc.terminate()
        proc.wait(30)


def tree_of(ref: str, into: Path) -> Path:
    """The code of git ``ref`` in ``into``, its plugins importable as alertmail.plugins from there."""
    archive = subprocess.run(["git", "-C", str(HERE), "archive", ref], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    (into / "alertmail" / "plugins").symlink_to(into / "plugins", target_is_directory=True)
    return into


def report(results: list[dict], args: argparse.Namespace) -> str:
    rows = [
        f"{args.sessions} sessions parked in DATA after {args.size:g} MB each; RSS in MB "
        f"(the process holding the sessions; all processes)",
        f"{'target':<28} {'idle':>8} {'parked':>8} {'per session':>12} {'all idle':>9} {'all parked':>11}"
        + (f" {'peak at finish':>15} {'250s':>5}" if args.finish else ""),
    ]
    for r in results:
        holder = r["holder"]
        idle, parked = r["idle"][holder] / MB, r["parked"][holder] / MB
        total_idle, total_parked = sum(r["idle"].values()) / MB, sum(r["parked"].values()) / MB
        row = (
            f"{r['name']:<28} {idle:8.1f} {parked:8.1f} {(parked - idle) / args.sessions:12.2f} "
            f"{total_idle:9.1f} {total_parked:11.1f}"
        )
        if args.finish:
            row += f" {r['peak'] / MB:15.1f} {r['answered']:5d}"
        rows.append(row)
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=float, default=8.0, help="MB of message data each session sends before it stops")
    parser.add_argument("--targets", default="relay,aiosmtpd", help="relay, aiosmtpd")
    parser.add_argument("--against", metavar="REF", help="also run the relay of git REF (e.g. main) in the same run")
    parser.add_argument("--finish", action="store_true", help="then end every message at once and show the peak RSS")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    results = []
    with tempfile.TemporaryDirectory(prefix="relay-data-memory-base-") as base:
        if args.against and "relay" in targets:
            results.append(run_relay(tree_of(args.against, Path(base)), f"alertmail relay ({args.against})", args))
        for target in targets:
            if target == "relay":
                results.append(run_relay(HERE, "alertmail relay (this tree)", args))
            elif target == "aiosmtpd":
                results.append(run_aiosmtpd(args))
            else:
                parser.error(f"unknown target {target!r}")
    print(report(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
