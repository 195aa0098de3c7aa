"""Submission time of ``alertmail sendmail`` next to Postfix's sendmail, dma and nullmailer, in one run.

Each target takes N small messages (``sendmail -i ops@example.test``, a message on
standard input), one after the other; a submission is timed from the start of the
process until it exits, the message durable in its spool. Shown: p50 and p95 of one
submission, submissions per second, and the rate against Postfix's. All targets but dma
and nullmailer run at once, interleaved (one submission each per round, the order turning):
on a shared machine a busy moment then falls on each alike, and the ratios stay fair.

- python-floor:     ``python -I -S -c pass``: the interpreter starting and ending, no work at all;
- alertmail:        the wrapper ``alertmail init --sendmail`` installs as /usr/sbin/sendmail (this
                    Python under ``-I -S`` importing alertmail/cli/sendmail.py's cached bytecode:
                    standard library only), with ``alertmail run`` taking the maildrop and
                    delivering to smtp-sink meanwhile;
- alertmail-python: the same wrapper under another Python (``--python``; default /usr/bin/python3
                    when it is 3.11 or later and not this one): a distribution's build starts faster
                    than a self-built shared-library one;
- alertmail-console: the ``alertmail-sendmail`` console script (site-packages, then ``alertmail``,
                    ``alertmail.cli`` and the module; an editable install adds its import finder);
- postfix:          Postfix's own ``sendmail`` (postdrop into the maildrop) with a private Postfix
                    (``postfix -c DIR``, no listening port) relaying to the same smtp-sink;
- dma:              DragonFly Mail Agent into its spool (``DEFER``: queued only, nothing delivers);
- nullmailer:       ``nullmailer-inject`` into nullmailer's queue (nullmailer-send does not run).

For alertmail it also prints how long a submission takes to reach smtp-sink through the
running agent (woken through ``maildrop/.wake``), 20 submissions one at a time, and where the
time of a submission goes inside the process (config, message, file and its fsync, the
folder's fsync, the wake-up), the rest being the interpreter's start and exit.

dma and nullmailer conflict with Postfix as Debian packages; ``.ci/peers`` unpacks them into
/opt/alertmail-peers/debs, and each runs here in a private mount namespace whose /etc,
/usr/sbin and /var/spool are overlays with their config and spool (root only). All
figures come from the same run: compare the ratios, the machine is shared.

    python bench/sendmail_bench.py                 # 1,000 messages per target
    python bench/sendmail_bench.py -n 200 --targets alertmail,postfix
    python bench/sendmail_bench.py --python /usr/local/bin/python3.12
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from tests.peers import free_port, need, wait_port  # noqa: E402

MESSAGE = b"Subject: nightly backup\nFrom: backup@example.test\n\nAll 42 volumes copied.\n"
RECIPIENT = "ops@example.test"
MODULE = REPO / "alertmail" / "cli" / "sendmail.py"
DEBS = Path(os.environ.get("ALERTMAIL_DEBS", "/opt/alertmail-peers/debs"))
TARGETS = ("python-floor", "alertmail", "alertmail-python", "alertmail-console", "postfix", "dma", "nullmailer")


def submit(command: list[str]) -> float:
    """Seconds of one submission of MESSAGE by ``command``; raises on a failed one."""
    started = time.perf_counter()
    done = subprocess.run(command, input=MESSAGE, capture_output=True, check=False)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[0]} exited {done.returncode}: {done.stderr.decode(errors='replace')[-500:]}")
    return took


def submit_loop(command: list[str], n: int) -> list[float]:
    return [submit(command) for _ in range(n)]


def interleaved(commands: dict[str, list[str]], n: int) -> dict[str, list[float]]:
    """``n`` rounds of one submission by each command, the order turning each round: a busy
    moment of the (shared) machine falls on every target alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    names = list(commands)
    for round_ in range(n):
        turn = round_ % len(names)
        for name in names[turn:] + names[:turn]:
            times[name].append(submit(commands[name]))
    return times


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


# -- alertmail --------------------------------------------------------------------


def install_wrapper(folder: Path, python: str, config: Path) -> Path:
    """The wrapper ``alertmail init --sendmail`` installs, for ``python``, with the module's bytecode compiled."""
    from alertmail.cli.sendmail import wrapper

    subprocess.run([python, "-I", "-m", "py_compile", str(MODULE)], check=True)
    path = folder / "sendmail"
    path.write_text(wrapper(python, str(MODULE), str(config)))
    path.chmod(0o755)
    return path


@dataclass
class Alertmail:
    """A running agent with its own smtp-sink, and the command that submits to it."""

    command: list[str]
    config: Path
    work: Path
    sink_dir: Path


def start_alertmail(stack: ExitStack, folder: Path, console: bool, python: str | None = None) -> Alertmail:
    work = folder / ("alertmail-console" if console else "alertmail" if python is None else "alertmail-python")
    work.mkdir()
    # Its own smtp-sink that keeps each message as a file: the delivery latency is counted in files.
    sink_dir = work / "sink"
    sink_dir.mkdir()
    sink_dir.chmod(0o777)
    work.chmod(0o755)
    sink_port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen(
        [need("smtp-sink"), *user, "-d", f"{sink_dir}/%H%M%S.", f"127.0.0.1:{sink_port}", "256"], stderr=subprocess.DEVNULL
    )
    stack.callback(stop, sink)
    wait_port("127.0.0.1", sink_port)
    config = work / "config.toml"
    config.write_text(
        '[agent]\nstate_dir = "var"\nhostname = "bench.test"\n'
        '[mail]\nfrom = "alerts@example.test"\nto = ["ops@example.test"]\nroute = ["smtp"]\n'
        f'[transports.smtp]\nservers = ["127.0.0.1:{sink_port}"]\ntls = "none"\n'
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "alertmail", "run", "--config", str(config)], cwd=work, stderr=subprocess.DEVNULL
    )
    stack.callback(stop, agent)
    wake = work / "var" / "maildrop" / ".wake"
    deadline = time.monotonic() + 60
    while not wake.exists():
        if time.monotonic() > deadline or agent.poll() is not None:
            raise RuntimeError("the agent did not start")
        time.sleep(0.1)
    if console:
        # Its modules' bytecode, as an installed package has it (PYTHONDONTWRITEBYTECODE may be set here).
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "alertmail")], check=True, capture_output=True)
        command = [str(Path(sys.executable).parent / "alertmail-sendmail"), "-C", str(config)]
    else:
        command = [str(install_wrapper(work, python or sys.executable, config))]
    return Alertmail([*command, "-i", RECIPIENT], config, work, sink_dir)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def reached(sink_dir: Path, command: list[str], submitted: int, count: int = 20) -> None:
    """Print how long a submission takes to reach smtp-sink through the running agent (woken by the FIFO)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(os.listdir(sink_dir)) < submitted:
        time.sleep(0.01)  # the timed submissions delivered first: no backlog ahead of these
    latencies = []
    for _ in range(count):
        before = len(os.listdir(sink_dir))
        started = time.perf_counter()
        subprocess.run(command, input=MESSAGE, capture_output=True, check=True)
        while len(os.listdir(sink_dir)) <= before:
            time.sleep(0.001)
        latencies.append(time.perf_counter() - started)
    print(
        f"alertmail: submission start to smtp-sink through the agent, {count} one at a time: "
        f"p50 {percentile(latencies, 50) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
    )


def phases(work: Path, config: Path, n: int) -> None:
    """Print where a submission's time goes inside the process: each step, p50 over ``n`` in this process."""
    import posix

    from alertmail.cli import sendmail

    class TimedFsync:
        """``posix`` with each fsync timed: the file's, then the folder's."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __getattr__(self, name: str):
            return getattr(posix, name)

        def fsync(self, fd: int) -> None:
            started = time.perf_counter()
            posix.fsync(fd)
            self.times.append(time.perf_counter() - started)

    timed = TimedFsync()
    steps: dict[str, list[float]] = {k: [] for k in ("config", "message", "file+fsync", "folder fsync", "rest of drop", "wake")}
    opts = sendmail.parse_args(["-i", RECIPIENT])
    sendmail.posix = timed  # type: ignore[assignment]
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            state_dir, domain, hostname = sendmail.read_config(str(config))
            t1 = time.perf_counter()
            _, _, content = sendmail.compose(opts, MESSAGE, domain, hostname, time.time())
            t2 = time.perf_counter()
            timed.times.clear()
            sendmail.drop(f"{state_dir}/maildrop", content, time.time())
            t3 = time.perf_counter()
            sendmail.wake(f"{state_dir}/maildrop")
            t4 = time.perf_counter()
            file_sync, folder_sync = timed.times
            steps["config"].append(t1 - t0)
            steps["message"].append(t2 - t1)
            steps["file+fsync"].append(file_sync)
            steps["folder fsync"].append(folder_sync)
            steps["rest of drop"].append(t3 - t2 - file_sync - folder_sync)
            steps["wake"].append(t4 - t3)
    finally:
        sendmail.posix = posix
    shown = ", ".join(f"{name} {percentile(times, 50) * 1000:.2f}" for name, times in steps.items())
    print(f"alertmail: inside one submission, p50 ms over {n}: {shown}; the rest is the interpreter's start and exit")


def other_python(given: str | None) -> str | None:
    """The Python for alertmail-python: ``given``, else /usr/bin/python3 when it is 3.11+ and not this one."""
    if given:
        return given
    candidate = "/usr/bin/python3"
    if not os.path.exists(candidate) or os.path.realpath(candidate) == os.path.realpath(sys.executable):
        return None
    done = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 11))"], capture_output=True, text=True)
    return candidate if done.stdout.strip() == "True" else None


# -- Postfix ----------------------------------------------------------------------


def start_postfix(stack: ExitStack, folder: Path, sink_port: int) -> list[str]:
    """A private Postfix relaying to ``sink_port``; its sendmail command."""
    from relay_bench import POSTFIX_SERVICES

    postfix = need("postfix")
    config_dir = folder / "postfix"
    config_dir.mkdir()
    (config_dir / "main.cf").write_text(
        textwrap.dedent(f"""\
        compatibility_level = 3.6
        queue_directory = {config_dir}/spool
        data_directory = {config_dir}/data
        mail_owner = postfix
        setgid_group = postdrop
        inet_interfaces = loopback-only
        inet_protocols = ipv4
        myhostname = bench.test
        mydestination =
        relayhost = [127.0.0.1]:{sink_port}
        smtp_tls_security_level = none
        alias_maps =
        alias_database =
        maillog_file = {config_dir}/maillog
        maillog_file_prefixes = {config_dir}
        """)
    )
    # No smtpd: nothing listens; sendmail hands mail to postdrop, the pickup FIFO wakes pickup.
    services = POSTFIX_SERVICES.split("\n", 1)[1].replace("pickup    unix", "pickup    fifo")
    (config_dir / "master.cf").write_text(services)
    (config_dir / "spool").mkdir()
    (config_dir / "data").mkdir()
    shutil.chown(config_dir / "data", "postfix")
    subprocess.run([postfix, "-c", str(config_dir), "set-permissions"], capture_output=True, timeout=60, check=False)
    started = subprocess.run([postfix, "-c", str(config_dir), "start"], capture_output=True, text=True, timeout=60, check=False)
    stack.callback(subprocess.run, [postfix, "-c", str(config_dir), "stop"], capture_output=True, timeout=60, check=False)
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}")
    return [need("sendmail"), "-C", str(config_dir), "-i", RECIPIENT]


# -- dma and nullmailer, each in a private mount namespace ------------------------------


def run_namespaced(folder: Path, sink_port: int, n: int, target: str) -> list[float]:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        raise RuntimeError("needs root and unshare (a private mount namespace)")
    if not (DEBS / target / "usr").is_dir():
        raise RuntimeError(f"{DEBS / target} is missing; .ci/peers unpacks it")
    work = folder / target
    for sub in ("etc/dma", "etc/nullmailer", "spool-upper", "spool-work"):
        (work / sub).mkdir(parents=True)
    # DEFER: queued only, as nullmailer's is; dma's background delivery would outlive the run.
    (work / "etc" / "dma" / "dma.conf").write_text(f"SMARTHOST 127.0.0.1\nPORT {sink_port}\nMAILNAME bench.test\nDEFER\n")
    (work / "etc" / "mailname").write_text("bench.test\n")
    (work / "etc" / "nullmailer" / "remotes").write_text(f"127.0.0.1 smtp --port={sink_port}\n")
    inside = [sys.executable, __file__, "--inside", target, "--work", str(work), "-n", str(n)]
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", *inside], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-1000:])
    return json.loads(done.stdout)


def inside_namespace(target: str, work: Path, n: int) -> None:
    """In the private mount namespace: overlays with the target's config and spool, then the timed loop."""

    def mount(lower: str, target_dir: str, upper: Path | None = None) -> None:
        options = f"lowerdir={lower}"
        if upper is not None:
            options += f",upperdir={upper},workdir={work / 'spool-work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, target_dir], check=True)

    mount(f"{work / 'etc'}:/etc", "/etc")
    mount("/var/spool", "/var/spool", work / "spool-upper")
    if target == "dma":
        os.makedirs("/var/spool/dma", exist_ok=True)
        os.chmod("/var/spool/dma", 0o1777)
        command = [str(DEBS / "dma" / "usr" / "sbin" / "dma"), "-i", RECIPIENT]
    else:
        # nullmailer-inject runs /usr/sbin/nullmailer-queue
        mount(f"{DEBS / 'nullmailer' / 'usr' / 'sbin'}:/usr/sbin", "/usr/sbin")
        spool = Path("/var/spool/nullmailer")
        for sub in ("queue", "tmp"):
            (spool / sub).mkdir(parents=True, exist_ok=True)
        if not (spool / "trigger").exists():
            os.mkfifo(spool / "trigger")
        for path in (spool / "queue", spool / "tmp", spool / "trigger"):
            shutil.chown(path, "mail", "mail")
        command = [str(DEBS / "nullmailer" / "usr" / "bin" / "nullmailer-inject"), RECIPIENT]
    print(json.dumps(submit_loop(command, n)))


# -- the run --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", "--messages", type=int, default=1000, help="submissions per target (default 1000)")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated, of: {', '.join(TARGETS)}")
    parser.add_argument("--python", help="the Python of alertmail-python (default: /usr/bin/python3 if 3.11+)")
    parser.add_argument("--inside", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        inside_namespace(args.inside, args.work, args.messages)
        return 0
    folder = Path(tempfile.mkdtemp(prefix="alertmail-sendmail-bench-", dir="/var/tmp"))
    folder.chmod(0o755)  # Postfix's daemons run as "postfix" and must reach their folders
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    sink = subprocess.Popen([need("smtp-sink"), *user, f"127.0.0.1:{port}", "1024"], stderr=subprocess.DEVNULL)
    rows: dict[str, list[float]] = {}
    targets = args.targets.split(",")
    for target in targets:
        if target not in TARGETS:
            parser.error(f"unknown target {target}")
    try:
        wait_port("127.0.0.1", port)
        with ExitStack() as stack:
            commands: dict[str, list[str]] = {}
            agents: dict[str, Alertmail] = {}
            for target in targets:
                try:
                    if target == "python-floor":
                        commands[target] = [sys.executable, "-I", "-S", "-c", "pass"]
                    elif target in ("alertmail", "alertmail-console", "alertmail-python"):
                        python = None
                        if target == "alertmail-python":
                            python = other_python(args.python)
                            if python is None:
                                raise RuntimeError("no other Python 3.11+ (give one with --python)")
                            print(f"alertmail-python: {python}")
                        agents[target] = start_alertmail(stack, folder, target == "alertmail-console", python)
                        commands[target] = agents[target].command
                    elif target == "postfix":
                        commands[target] = start_postfix(stack, folder, port)
                except RuntimeError as exc:
                    print(f"{target}: skipped: {exc}", file=sys.stderr)
            rows.update(interleaved(commands, args.messages))
            if "alertmail" in agents:
                main_agent = agents["alertmail"]
                reached(main_agent.sink_dir, main_agent.command, args.messages)
                phases(main_agent.work, main_agent.config, args.messages)
        for target in ("dma", "nullmailer"):
            if target in targets:
                try:
                    rows[target] = run_namespaced(folder, port, args.messages, target)
                except RuntimeError as exc:
                    print(f"{target}: skipped: {exc}", file=sys.stderr)
    finally:
        sink.terminate()
        sink.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    postfix = sum(rows["postfix"]) / len(rows["postfix"]) if rows.get("postfix") else None
    print(f"{args.messages} submissions per target, one at a time, interleaved but dma and nullmailer ({os.cpu_count()} CPUs)")
    print(f"{'target':<18} {'p50 ms':>8} {'p95 ms':>8} {'per s':>8} {'vs postfix':>11}")
    for name, times in rows.items():
        mean = sum(times) / len(times)
        ratio = f"{postfix / mean:.2f}x" if postfix else "-"
        print(
            f"{name:<18} {percentile(times, 50) * 1000:8.1f} {percentile(times, 95) * 1000:8.1f} "
            f"{len(times) / sum(times):8.0f} {ratio:>11}"
        )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
