"""CPU per message in the relay, split into stages, next to a bare aiosmtpd sink in the same run.

The relay runs in this process exactly as ``alertmail relay`` wires it (queue, delivery
through the mx transport in smart-host mode, the relay service); Postfix's ``smtp-source``
(another process) sends ``-m`` messages and an ``smtp-sink`` (another process) takes the
deliveries, so only the relay's own work is counted, receiving and delivering, until the
queue is empty. A bare aiosmtpd server whose handler only answers 250 takes the same
load in the same run: the Python floor for receiving alone.

Each target runs twice: once plain, for the CPU per message (process and main thread),
and once under cProfile with the main thread's CPU clock as its timer, for the split. A
function's own time goes to the stage of its module (the relay's policy, the W3C log,
the queue, delivery, the SMTP client, aiosmtpd and the relay's session); time in the
standard library goes to the stages of its callers, in proportion; what no stage calls
(the event loop, socket reads) is "event loop". Work the queue hands to threads (segment
writes and fsyncs, reads for delivery) is measured with each thread's CPU clock.
cProfile slows small calls more than large ones: read the split as shares, the plain
run's figures as the cost.

    python bench/relay_profile.py                       # 3000 messages, new connection each
    python bench/relay_profile.py -m 2000 --reused      # smtp-source -d: connections reused
    python bench/relay_profile.py --against main        # main's code and this tree's, alternately, same load
    python bench/relay_profile.py --top 30              # also the 30 functions with the most own CPU
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.util
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent

STAGES = (
    "SMTP session (aiosmtpd, relay server)",
    "policy",
    "Received header",
    "W3C log",
    "queue put (encode, commit loop)",
    "delivery loop",
    "delivery client (SMTP out)",
    "event loop, sockets",
    "threads: queue writes, fsync, reads",
)
SESSION, POLICY, RECEIVED, W3C, QUEUE, DELIVERY, CLIENT, LOOP, THREADS = STAGES


def stage_of(filename: str, name: str) -> str | None:
    """The stage a function's own time belongs to, or None for code that serves whoever calls it."""
    path = filename.replace("\\", "/")
    if name == "received_header":
        return RECEIVED
    if "/relay/" in path:
        if path.endswith(("/policy.py", "/users.py")):
            return POLICY
        if path.endswith("/handler.py") and name in ("handle_EHLO", "handle_MAIL", "handle_RCPT"):
            return POLICY
        if path.endswith("/w3c.py") or name in ("_log_attempt", "_flush_log"):
            return W3C
        return SESSION
    if "/aiosmtpd/" in path or "<bare-sink>" in path:
        return SESSION
    if "/alertmail/queue/" in path or path.endswith("/alertmail/fsutil.py"):
        return QUEUE
    if "/alertmail/delivery/" in path:
        return DELIVERY
    if "/transports/" in path or "/aiosmtplib/" in path:
        return CLIENT
    return None


def split(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of own CPU per stage; unclassified functions follow their callers, in proportion."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    memo: dict[Any, dict[str, float]] = {}

    def dist(func: Any, seen: frozenset) -> dict[str, float]:
        if func in memo:
            return memo[func]
        stage = stage_of(func[0], func[2])
        if stage is not None:
            return {stage: 1.0}
        callers = raw[func][4] if func in raw else {}
        weights: dict[str, float] = defaultdict(float)
        total = 0.0
        for caller, (_, _, _, ct) in callers.items():
            if caller in seen or ct <= 0:
                continue
            for s, share in dist(caller, seen | {func}).items():
                weights[s] += share * ct
            total += ct
        result = {s: w / total for s, w in weights.items()} if total else {LOOP: 1.0}
        if not seen:
            memo[func] = result
        return result

    out: dict[str, float] = defaultdict(float)
    for func, (_, _, tt, _, _) in raw.items():
        for s, share in dist(func, frozenset()).items():
            out[s] += share * tt
    return out


# -- running one target in this process ----------------------------------------------


def bootstrap(code: Path) -> None:
    """Import alertmail (and its bundled plugins, as alertmail.plugins) from the tree at ``code``."""
    sys.path.insert(0, str(code))
    import alertmail

    if Path(alertmail.__file__).resolve().parent != (code / "alertmail").resolve():
        raise SystemExit(f"alertmail was imported from {alertmail.__file__}, not from {code}")
    spec = importlib.util.spec_from_file_location(
        "alertmail.plugins", code / "plugins" / "__init__.py", submodule_search_locations=[str(code / "plugins")]
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["alertmail.plugins"] = module
    spec.loader.exec_module(module)
    alertmail.plugins = module  # type: ignore[attr-defined]


class ThreadClock:
    """CPU seconds spent in functions handed to threads with asyncio.to_thread, by function."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._original = asyncio.to_thread

    def install(self) -> None:
        clock = self

        def timed(func: Any) -> Any:
            def run(*args: Any, **kwargs: Any) -> Any:
                started = time.thread_time()
                try:
                    return func(*args, **kwargs)
                finally:
                    clock.seconds[getattr(func, "__qualname__", repr(func))] += time.thread_time() - started

            return run

        async def to_thread(func: Any, /, *args: Any, **kwargs: Any) -> Any:
            return await clock._original(timed(func), *args, **kwargs)

        asyncio.to_thread = to_thread  # type: ignore[assignment]


async def load(port: int, args: argparse.Namespace) -> None:
    command = [shutil.which("smtp-source") or "/usr/sbin/smtp-source", "-s", str(args.sessions), "-m", str(args.messages)]
    command += ["-l", str(args.size), "-f", "load@bench.test", "-t", "sink@example.test", "-M", "bench.test"]
    command += ["-d"] if args.reused else []
    proc = await asyncio.create_subprocess_exec(*command, f"127.0.0.1:{port}", stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"smtp-source failed: {err.decode(errors='replace').strip()}")


async def run_relay(folder: Path, sink_port: int, args: argparse.Namespace, profiler: cProfile.Profile | None) -> dict:
    from types import SimpleNamespace

    from tests.peers import free_port
    from tests.relay_peers import relay_config

    from alertmail import load_or_exit
    from alertmail.intake import Outbox, setup_logging
    from alertmail.plugins.relay.service import RelayService

    port = free_port()
    options = {"greet_pause": "0s", "max_commands": 1000, "pickup": False}
    config = relay_config(
        folder,
        SimpleNamespace(host="127.0.0.1", port=sink_port),
        port,
        options,
        agent={"log_level": "warning"},
        queue={"concurrency": args.concurrency},
    )
    cfg, plugins = load_or_exit(config)
    setup_logging("warning", cfg.agent.log_format)
    outbox = Outbox(cfg, plugins)
    await outbox.open()
    await outbox.start_services([RelayService], only_enabled=False)
    clock = ThreadClock()
    clock.install()
    try:
        cpu, main = time.process_time(), time.thread_time()
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        await load(port, args)
        while len(outbox.queue):
            await asyncio.sleep(0.02)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu, main = time.process_time() - cpu, time.thread_time() - main
        rounds = outbox.queue.stats.commits
    finally:
        asyncio.to_thread = clock._original  # type: ignore[assignment]
        await outbox.close()
    return {"cpu": cpu, "main": main, "seconds": seconds, "threads": dict(clock.seconds), "rounds": rounds}


BARE_SINK = """
class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"
"""


async def run_sink(args: argparse.Namespace, profiler: cProfile.Profile | None) -> dict:
    from aiosmtpd.smtp import SMTP
    from tests.peers import free_port

    namespace: dict[str, Any] = {}
    exec(compile(BARE_SINK, "<bare-sink>", "exec"), namespace)
    handler = namespace["Handler"]()
    loop = asyncio.get_running_loop()
    port = free_port()
    server = await loop.create_server(lambda: SMTP(handler, hostname="bare.test", loop=loop), "127.0.0.1", port, backlog=512)
    try:
        cpu, main = time.process_time(), time.thread_time()
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        await load(port, args)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu, main = time.process_time() - cpu, time.thread_time() - main
    finally:
        server.close()
        await server.wait_closed()
    return {"cpu": cpu, "main": main, "seconds": seconds, "threads": {}}


def measure(target: str, args: argparse.Namespace) -> dict:
    """One target: a plain pass and a profiled pass; figures per message in microseconds."""
    from tests.peers import free_port, need, wait_port

    folder = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink_port = free_port()
    sink = subprocess.Popen([need("smtp-sink"), *user, f"127.0.0.1:{sink_port}", "1024"], stderr=subprocess.DEVNULL)
    try:
        wait_port("127.0.0.1", sink_port)
        runner = loop_runner(args.loop)
        passes = []
        for profiled in (False, True):
            profiler = cProfile.Profile(time.thread_time) if profiled else None
            work = folder / f"{target}-{'profiled' if profiled else 'plain'}"
            work.mkdir()
            with runner() as run:
                if target == "relay":
                    figures = run.run(run_relay(work, sink_port, args, profiler))
                else:
                    figures = run.run(run_sink(args, profiler))
            if profiler is not None:
                stats = pstats.Stats(profiler)
                figures["stages"] = split(stats)
                figures["top"] = top_functions(stats, args.top)
            passes.append(figures)
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    plain, profiled = passes
    n = args.messages
    stages = {s: v * 1e6 / n for s, v in profiled["stages"].items()}
    stages[THREADS] = sum(profiled["threads"].values()) * 1e6 / n
    return {
        "target": target,
        "rate": n / plain["seconds"],
        "cpu_us": plain["cpu"] * 1e6 / n,
        "main_us": plain["main"] * 1e6 / n,
        "threads_us": (plain["cpu"] - plain["main"]) * 1e6 / n,
        "thread_funcs": {k: v * 1e6 / n for k, v in plain["threads"].items()},
        "per_round": n / plain["rounds"] if plain.get("rounds") else 0.0,
        "profiled_us": stages,
        "top": profiled["top"],
    }


def loop_runner(choice: str) -> Any:
    factory = None
    if choice == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    return lambda: asyncio.Runner(loop_factory=factory)


def top_functions(stats: pstats.Stats, count: int) -> list[tuple[str, int, float, float]]:
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    rows = sorted(raw.items(), key=lambda item: item[1][2], reverse=True)[:count]
    out = []
    for (filename, line, name), (_, nc, tt, ct, _) in rows:
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
        out.append((f"{name} ({where})", nc, tt, ct))
    return out


# -- reports -----------------------------------------------------------------------------


def report(results: list[dict], args: argparse.Namespace, label: str = "") -> str:
    n = args.messages
    shape = "reused connections (-d)" if args.reused else "a new connection per message"
    lines = [f"{label}smtp-source -s {args.sessions} -m {n} -l {args.size}, {shape}; loop {args.loop}; µs of CPU per message"]
    by_target = {r["target"]: r for r in results}
    relay, sink = by_target.get("relay"), by_target.get("sink")
    for r in results:
        lines.append(
            f"  {r['target']:<6} {r['rate']:7.0f} msg/s   CPU {r['cpu_us']:7.0f} µs/msg"
            f" (main thread {r['main_us']:.0f}, other threads {r['threads_us']:.0f})"
        )
        if r["thread_funcs"]:
            funcs = ", ".join(f"{k} {v:.0f}" for k, v in sorted(r["thread_funcs"].items()))
            lines.append(f"         in threads: {funcs}; {r['per_round']:.1f} messages per commit round")
    if relay and sink:
        lines.append(f"  relay / bare sink: {relay['cpu_us'] / sink['cpu_us']:.2f}x the CPU per message")
    lines.append(
        f"  {'stage (under cProfile; share, est. µs without it)':<52} " + " ".join(f"{r['target']:>20}" for r in results)
    )
    for stage in STAGES:
        cells = []
        for r in results:
            total = sum(r["profiled_us"].values())
            value = r["profiled_us"].get(stage, 0.0)
            share = value / total if total else 0.0
            cells.append(f"{value:7.0f} {share:5.1%} {share * r['cpu_us']:5.0f}")
        lines.append(f"  {stage:<52} " + " ".join(f"{c:>20}" for c in cells))
    totals = " ".join(f"{sum(r['profiled_us'].values()):7.0f} {'':>12}" for r in results)
    lines.append(f"  {'total':<52} {totals}")
    if args.top:
        for r in results:
            lines.append(f"  top {args.top} by own CPU, {r['target']} (µs per message: own, cumulative; calls)")
            for name, calls, tt, ct in r["top"]:
                lines.append(f"    {tt * 1e6 / n:7.1f} {ct * 1e6 / n:8.1f} {calls:8d}  {name}")
    return "\n".join(lines)


def compare(base: list[list[dict]], mine: list[list[dict]], ref: str) -> str:
    """The relay's figures of both trees, each the median over the rounds: plain CPU, and each stage."""

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2]

    def relay(runs: list[list[dict]]) -> list[dict]:
        return [r for results in runs for r in results if r["target"] == "relay"]

    def est(r: dict, stage: str) -> float:
        total = sum(r["profiled_us"].values())
        return r["profiled_us"].get(stage, 0.0) / total * r["cpu_us"] if total else 0.0

    b, m = relay(base), relay(mine)
    lines = [
        f"relay, µs of CPU per message, median of {len(b)} round(s): {ref} -> this tree",
        f"  {'stage':<40} {'under cProfile':>18} {'est. without it':>18}",
    ]
    for stage in STAGES:
        before, after = (median([r["profiled_us"].get(stage, 0.0) for r in rs]) for rs in (b, m))
        raw = f"{before:6.0f} -> {after:6.0f}"
        scaled = f"{median([est(r, stage) for r in b]):6.0f} -> {median([est(r, stage) for r in m]):6.0f}"
        lines.append(f"  {stage:<40} {raw:>18} {scaled:>18}")
    plain = f"{median([r['cpu_us'] for r in b]):6.0f} -> {median([r['cpu_us'] for r in m]):6.0f}"
    lines.append(f"  {'all, plain run (process CPU)':<40} {'':>18} {plain:>18}")
    main_thread = f"{median([r['main_us'] for r in b]):6.0f} -> {median([r['main_us'] for r in m]):6.0f}"
    lines.append(f"  {'  of which main thread':<40} {'':>18} {main_thread:>18}")
    rate = f"{median([r['rate'] for r in b]):6.0f} -> {median([r['rate'] for r in m]):6.0f}"
    lines.append(f"  {'msg/s (plain run)':<40} {'':>18} {rate:>18}")
    sinks = [r["cpu_us"] for results in (*base, *mine) for r in results if r["target"] == "sink"]
    if sinks:
        floor = median(sinks)
        lines.append(
            f"  bare aiosmtpd sink, median of its {len(sinks)} runs: {floor:.0f} µs/msg;"
            f" relay/sink {median([r['cpu_us'] for r in b]) / floor:.2f}x -> {median([r['cpu_us'] for r in m]) / floor:.2f}x"
        )
    return "\n".join(lines)


def child_argv(args: argparse.Namespace) -> list[str]:
    out = ["-m", str(args.messages), "-s", str(args.sessions), "-l", str(args.size), "--loop", args.loop]
    out += ["--concurrency", str(args.concurrency), "--top", str(args.top), "--targets", args.targets]
    return [*out, "--reused"] if args.reused else out


def run_tree(code: Path, args: argparse.Namespace) -> list[dict]:
    """This script's measurements with alertmail imported from ``code``, in a fresh interpreter."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--code", str(code), "--json", *child_argv(args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=code,
    )
    if out.returncode != 0:
        raise SystemExit(f"the run on {code} failed:\n{out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=int, default=3000)
    parser.add_argument("-s", "--sessions", type=int, default=10)
    parser.add_argument("-l", "--size", type=int, default=2048, help="message size in bytes")
    parser.add_argument("--reused", action="store_true", help="smtp-source -d: keep connections open")
    parser.add_argument("--concurrency", type=int, default=2, help="[queue].concurrency, as bench/relay_bench.py")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the relay's default is uvloop")
    parser.add_argument("--targets", default="relay,sink", help="relay, sink (a bare aiosmtpd that answers 250)")
    parser.add_argument("--top", type=int, default=0, help="also list this many functions with the most own CPU")
    parser.add_argument("--against", metavar="REF", help="also run the code of git REF (e.g. main), alternately with this tree")
    parser.add_argument("--rounds", type=int, default=1, help="with --against: how many times each tree runs")
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]

    if args.against:
        with tempfile.TemporaryDirectory(prefix="relay-profile-base-") as base:
            archive = subprocess.run(["git", "-C", str(HERE), "archive", args.against], capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", base], input=archive.stdout, check=True)
            runs: dict[str, list[list[dict]]] = {"base": [], "mine": []}
            for _ in range(args.rounds):
                runs["base"].append(run_tree(Path(base), args))
                runs["mine"].append(run_tree(HERE, args))
        for i in range(args.rounds):
            print(report(runs["base"][i], args, f"[{args.against}, round {i + 1}] "))
            print(report(runs["mine"][i], args, f"[this tree, round {i + 1}] "))
        print(compare(runs["base"], runs["mine"], args.against))
        return 0

    code = (args.code or HERE).resolve()
    bootstrap(code)
    results = [measure(t, args) for t in targets]
    if args.json:
        print(json.dumps(results))
    else:
        print(report(results, args))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
