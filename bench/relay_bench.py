"""Accepted messages per second: the relay next to a bare aiosmtpd sink and a local Postfix.

All take the same load from Postfix's ``smtp-source`` in one run, one after the other,
so the ratios compare like with like on a shared, noisy machine:

- relay:    ``alertmail relay`` with its default settings (durable group-committed
            queue; ``[relay].workers`` receiving processes, the main one delivering to
            an smtp-sink through the mx transport in smart-host mode meanwhile);
- run:      ``alertmail run`` with ``[relay] enabled`` and the same settings (the agent's
            probes and rules run as well);
- aiosmtpd: a bare aiosmtpd server whose handler only answers 250 (stores nothing);
- postfix:  Postfix with its own config folder on a loopback port, relaying to the
            same smtp-sink (its queue is durable: fsync before 250), stopped afterwards.

Each target gets both load shapes: a new connection per message, and reused
connections (``smtp-source -d``). Shown for each: the rate and its ratio to Postfix and
to the bare sink, the time until the queue is empty after the load (everything
delivered to the sink), when the last message reached the sink counted from the start
of the load, and the CPU the relay spent per message (all its processes).

    python bench/relay_bench.py                    # 10 sessions, 20 000 messages of 2 KB
    python bench/relay_bench.py --quick            # a smoke run: 5 sessions, 500 messages
    python bench/relay_bench.py -m 5000 --targets relay,postfix --workers 0,1,auto   # side by side
    python bench/relay_bench.py --targets relay-asyncio,relay-uvloop,run   # receiving event loop
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers import free_port, need, wait_port
from tests.relay_peers import RelayProcess, private_folder, relay_config

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

POSTFIX_SERVICES = """\
{listen} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass
class Result:
    target: str
    reused: bool
    messages: int
    seconds: float
    ok: bool
    drained: float | None = None
    cpu_ms: float | None = None  # the relay process's CPU per message, receiving and delivering

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.ok and self.seconds > 0 else 0.0


def smtp_source(port: int, args: argparse.Namespace, reused: bool) -> tuple[float, bool, str]:
    """Run smtp-source against 127.0.0.1:``port``; (seconds, ok, its error output)."""
    command = [
        need("smtp-source"),
        "-s",
        str(args.sessions),
        "-m",
        str(args.messages),
        "-l",
        str(args.size),
        "-f",
        "load@bench.test",
        "-t",
        "sink@example.test",
        "-M",
        "bench.test",
    ]
    if reused:
        command.append("-d")
    command.append(f"127.0.0.1:{port}")
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, check=False)
    return time.perf_counter() - started, done.returncode == 0, done.stderr.strip()


def start_sink(folder: Path) -> subprocess.Popen:
    """An smtp-sink that discards (the delivery target of the relay and of Postfix)."""
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    proc = subprocess.Popen([need("smtp-sink"), *user, f"127.0.0.1:{port}", "1024"], stderr=subprocess.DEVNULL)
    wait_port("127.0.0.1", port)
    proc.port = port  # type: ignore[attr-defined]
    return proc


def wait_empty(count_files, timeout: float) -> float | None:
    """Seconds until ``count_files()`` is 0, or None after ``timeout``."""
    started = time.perf_counter()
    while count_files():
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(0.1)
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User and system CPU of process ``pid`` and its living children (the receiving processes)."""
    total = 0.0
    try:
        process = psutil.Process(pid)
        for proc in [process, *process.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return total


def run_relay(
    folder: Path, sink_port: int, args: argparse.Namespace, mode: str, workers: str | None, event_loop: str
) -> list[Result]:
    """``alertmail relay`` (mode "relay") or ``alertmail run`` with [relay] enabled (mode "run")."""
    name = mode + (f"-w{workers}" if workers is not None else "") + ("" if event_loop == "auto" else f"-{event_loop}")
    results = []
    for reused in (False, True):
        work = folder / f"{name}-{'reused' if reused else 'new'}"
        work.mkdir(parents=True)
        port = free_port()
        options: dict = {"greet_pause": "0s", "max_commands": 1000, "pickup": False, "event_loop": event_loop}
        if workers is not None:
            options["workers"] = workers if workers == "auto" else int(workers)
        sink = SimpleNamespace(host="127.0.0.1", port=sink_port)
        queue = {"concurrency": args.concurrency} if args.concurrency else {}
        config = relay_config(work, sink, port, options, agent={"log_level": args.log_level}, queue=queue)
        relay = RelayProcess(config, port, subcommand=mode).start()
        try:
            assert relay.proc is not None
            before = cpu_seconds(relay.proc.pid)
            seconds, ok, error = smtp_source(port, args, reused)
            queue_folder = relay.state_dir / "queue"
            # A commit round's segment file goes once every message in it is finished.
            drained = wait_empty(
                lambda q=queue_folder: sum(1 for p in q.iterdir() if p.suffix == ".seg"),
                args.timeout,
            )
            cpu = cpu_seconds(relay.proc.pid) - before
        finally:
            relay.stop()
        if not ok:
            print(f"{name} ({'reused' if reused else 'new'} connections): smtp-source failed: {error}", file=sys.stderr)
        results.append(Result(name, reused, args.messages, seconds, ok, drained, cpu * 1000 / args.messages))
    return results


def run_aiosmtpd(args: argparse.Namespace) -> list[Result]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", BARE_AIOSMTPD, str(port)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        results = []
        for reused in (False, True):
            seconds, ok, error = smtp_source(port, args, reused)
            if not ok:
                print(f"aiosmtpd: smtp-source failed: {error}", file=sys.stderr)
            results.append(Result("aiosmtpd", reused, args.messages, seconds, ok))
        return results
    finally:
        proc.terminate()
        proc.wait(10)


def run_postfix(folder: Path, sink_port: int, args: argparse.Namespace) -> list[Result]:
    postfix = need("postfix")
    config_dir = folder / "postfix"
    config_dir.mkdir()
    folder.chmod(0o755)  # Postfix's daemons run as "postfix" and must reach their folders
    port = free_port()
    (config_dir / "main.cf").write_text(
        textwrap.dedent(f"""\
        compatibility_level = 3.6
        queue_directory = {config_dir}/spool
        data_directory = {config_dir}/data
        mail_owner = postfix
        setgid_group = postdrop
        inet_interfaces = 127.0.0.1
        inet_protocols = ipv4
        myhostname = bench.test
        mydestination =
        relayhost = [127.0.0.1]:{sink_port}
        mynetworks = 127.0.0.0/8
        smtpd_relay_restrictions = permit_mynetworks, reject
        smtpd_peername_lookup = no
        smtp_tls_security_level = none
        alias_maps =
        alias_database =
        maillog_file = {config_dir}/maillog
        maillog_file_prefixes = {config_dir}
        """)
    )
    (config_dir / "master.cf").write_text(POSTFIX_SERVICES.format(listen=f"127.0.0.1:{port}"))
    (config_dir / "spool").mkdir()
    (config_dir / "data").mkdir()
    shutil.chown(config_dir / "data", "postfix")
    # Makes the queue folders with their owners and modes (what a package install does).
    subprocess.run([postfix, "-c", str(config_dir), "set-permissions"], capture_output=True, timeout=60, check=False)
    started = subprocess.run([postfix, "-c", str(config_dir), "start"], capture_output=True, text=True, timeout=60, check=False)
    if started.returncode != 0:
        log = (config_dir / "maillog").read_text() if (config_dir / "maillog").exists() else ""
        print(f"postfix did not start: {started.stdout}{started.stderr}{log[-2000:]}", file=sys.stderr)
        return []
    spool = config_dir / "spool"

    def queued() -> int:
        return sum(len(files) for sub in ("maildrop", "incoming", "active", "deferred") for _, _, files in os.walk(spool / sub))

    try:
        wait_port("127.0.0.1", port, timeout=30)
        results = []
        for reused in (False, True):
            seconds, ok, error = smtp_source(port, args, reused)
            if not ok:
                print(f"postfix: smtp-source failed: {error}", file=sys.stderr)
            results.append(Result("postfix", reused, args.messages, seconds, ok, wait_empty(queued, args.timeout)))
        return results
    finally:
        subprocess.run([postfix, "-c", str(config_dir), "stop"], capture_output=True, timeout=60, check=False)


def table(results: list[Result], args: argparse.Namespace) -> str:
    postfix = {r.reused: r.rate for r in results if r.target == "postfix" and r.ok}
    bare = {r.reused: r.rate for r in results if r.target == "aiosmtpd" and r.ok}
    concurrency = args.concurrency or "default"
    lines = [
        (
            f"smtp-source -s {args.sessions} -m {args.messages} -l {args.size} [-d]; accepted messages per second;"
            f" {cores()} cores; relay [queue].concurrency = {concurrency}"
        ),
        f"{'target':<16} {'connections':<12} {'msg/s':>7} {'vs postfix':>10} {'vs aiosmtpd':>11} {'seconds':>8}"
        f" {'queue empty after':>17} {'all delivered at':>16} {'CPU ms/msg':>10}",
    ]

    def ratio(rate: float, base: dict[bool, float], r: Result) -> str:
        return f"{rate / base[r.reused]:.2f}x" if base.get(r.reused) and r.ok else "-"

    for r in results:
        drained = "-" if r.target == "aiosmtpd" else (f"{r.drained:.1f}s" if r.drained is not None else "not empty")
        # From the first message sent to the last one at the sink: what a sender waits for.
        done = f"{r.seconds + r.drained:.1f}s" if r.target != "aiosmtpd" and r.drained is not None else "-"
        rate = f"{r.rate:7.0f}" if r.ok else " failed"
        cpu = f"{r.cpu_ms:.2f}" if r.cpu_ms else "-"
        connections = "reused" if r.reused else "new each"
        lines.append(
            f"{r.target:<16} {connections:<12} {rate} {ratio(r.rate, postfix, r):>10} {ratio(r.rate, bare, r):>11}"
            f" {r.seconds:8.1f} {drained:>17} {done:>16} {cpu:>10}"
        )
    return "\n".join(lines)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-s", "--sessions", type=int, default=10)
    parser.add_argument("-m", "--messages", type=int, default=20000)
    parser.add_argument("-l", "--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument(
        "--targets",
        default="relay,run,aiosmtpd,postfix",
        help="relay (`alertmail relay`), run (`alertmail run` with [relay] enabled), each with -asyncio or -uvloop"
        " to choose the receiving event loop; aiosmtpd, postfix",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="the relay's [queue].concurrency: deliveries at once (default: the config's default)",
    )
    parser.add_argument(
        "--workers",
        default=None,
        help='[relay].workers, or several to compare side by side: "0,1,auto" (default: the config\'s default)',
    )
    parser.add_argument("--log-level", default="warning", help="the relay's [agent].log_level (info logs every delivery)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 sessions, 500 messages")
    parser.add_argument("--timeout", type=float, default=900.0, help="longest one smtp-source run or queue drain may take")
    args = parser.parse_args(argv)
    if args.quick:
        args.sessions, args.messages = 5, 500
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    folder = private_folder("relay-bench-")
    sink = start_sink(folder)
    results: list[Result] = []
    try:
        for target in targets:
            mode, _, loop = target.partition("-")
            if mode in ("relay", "run"):
                for workers in args.workers.split(",") if args.workers else [None]:
                    results += run_relay(folder, sink.port, args, mode, workers, loop or "auto")
        if "aiosmtpd" in targets:
            results += run_aiosmtpd(args)
        if "postfix" in targets:
            results += run_postfix(folder, sink.port, args)
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    print(table(results, args))
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
