"""`alertmail run` stops within its bound on SIGTERM, whatever the queue and transports do.

Each case is a real agent process: a rule that fires at once (its mail leads its group and
goes out at once), a second one that fires 3 s later, inside ``group_wait``: its mail is
held for the group and flushed into the queue at shutdown. The flushed mail must be in the
queue after the exit and delivered by the next start, over pickup, smtp and mx alike.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from alertmail.queue.spool import Queue
from tests.gauge import install_gauge
from tests.peers import Dnsmasq, SmtpSink, free_port

STOP_BOUND = 10.0  # documented in README.md ("Stopping") and docs/queue.md

HELD_BACK = """
[[rules]]
name = "held-back"
metric = "test.gauge"
above = -1
for = "3s"
"""


def write_config(
    folder: Path, *, route: str, to: str, transports: str = "", group_wait: str = "1m", held_back: bool = True
) -> Path:
    install_gauge(folder)  # 10: above -1, so both rules fire
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [agent]
        state_dir = "var"
        interval = "1s"
        resolution = "1s"
        plugin_dirs = ["plugins.d"]

        [mail]
        from = "alertmail@test.example"
        to = ["{to}"]
        route = ["{route}"]

        [notify]
        group_wait = "{group_wait}"

        [queue]
        retry = ["1s"]

        [[rules]]
        name = "always"
        metric = "test.gauge"
        above = -1
        """)
        + (HELD_BACK if held_back else "")
        + textwrap.dedent(transports)
    )
    return config


def start(config: Path) -> subprocess.Popen:
    """The agent, its log in a file of its own: a pipe nobody reads until the exit fills up
    (64 KiB: a minute or two of failing deliveries retried every second), and the agent then hangs
    in its next log line, neither delivering nor answering SIGTERM."""
    logs = sorted(config.parent.glob("agent-*.log"))
    path = config.parent / f"agent-{len(logs)}.log"
    with path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alertmail", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
            cwd=config.parent,
        )
    proc.log_path = path  # type: ignore[attr-defined]
    return proc


def terminate(proc: subprocess.Popen, *signals: signal.Signals, gap: float = 0.3) -> float:
    """Send ``signals`` (``gap`` apart); return how long the process took to exit after the first."""
    started = time.monotonic()
    for n, sig in enumerate(signals):
        if n:
            time.sleep(gap)
        if proc.poll() is None:
            proc.send_signal(sig)
    try:
        proc.wait(STOP_BOUND + 20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the agent was still running {STOP_BOUND + 20:g} s after {signals[0].name}")
    return time.monotonic() - started


def log_of(proc: subprocess.Popen) -> str:
    return proc.log_path.read_bytes().decode(errors="replace")  # type: ignore[attr-defined]


def queued(folder: Path) -> list:
    queue = Queue(folder / "var" / "queue")
    queue.load()
    return queue.entries()


def held_back(folder: Path) -> list:
    """The queued mails of the rule that fired inside the group: the mail held at shutdown."""
    queue = Queue(folder / "var" / "queue")
    queue.load()
    return [e for e in queue.entries() if b"held-back" in queue.read_message(e.id).split(b"\r\n\r\n", 1)[0]]


def wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def held_back_firing(folder: Path) -> bool:
    """Whether the agent holds the rule that fired inside the group as firing (its mail then waits in the notifier)."""
    from alertmail.control import NoAgent, ask

    try:
        alerts = ask(folder / "var").get("alerts") or []
    except NoAgent:  # not listening yet
        return False
    return any(a["rule"] == "held-back" and a["state"] == "firing" for a in alerts)


def stop_then_deliver(tmp_path: Path, config: Path, delivered, *, before_restart=lambda: None) -> None:
    """SIGTERM once the second rule fired inside the group: the exit comes within the bound, the held
    mail is queued, the next start delivers it. (A fixed 6 s from the start ran out before the rule
    fired on a loaded machine, where the agent alone took seconds to start.)"""
    proc = start(config)
    wait_for(lambda: held_back_firing(tmp_path) or proc.poll() is not None, what="the held-back rule to fire")
    took = terminate(proc, signal.SIGTERM)
    log = log_of(proc)
    assert took < STOP_BOUND, f"exit took {took:.1f} s\n{log}"
    assert proc.returncode == 0, log
    assert "stopping" in log and "queued" in log, log
    entries = held_back(tmp_path)
    assert len(entries) == 1, f"the mail flushed at shutdown must be in the queue\n{log}"
    msg_id = entries[0].id
    before_restart()
    proc = start(config)
    try:
        wait_for(delivered, what="the queued mail delivered after the restart")
        # The command line reads the queue without its lock, as here, while the agent runs.
        wait_for(lambda: msg_id not in [e.id for e in queued(tmp_path)], what="the queue to let go of it")
    finally:
        took = terminate(proc, signal.SIGTERM)
        log = log_of(proc)
    assert took < STOP_BOUND, f"second exit took {took:.1f} s\n{log}"
    assert f"message {msg_id} delivered" in log, log


def test_stop_flushes_into_the_queue_pickup(tmp_path):
    config = write_config(tmp_path, route="pickup", to="ops@test.example")
    pickup = tmp_path / "var" / "pickup"
    stop_then_deliver(
        tmp_path, config, lambda: pickup.is_dir() and any(b"held-back" in p.read_bytes() for p in pickup.glob("*.eml"))
    )


def test_stop_flushes_into_the_queue_smtp_down(tmp_path):
    port = free_port()
    transports = f"""
    [transports.smtp]
    servers = ["127.0.0.1:{port}"]
    tls = "none"
    connect_timeout = "2s"
    """
    config = write_config(tmp_path, route="smtp", to="ops@test.example", transports=transports)
    sink = SmtpSink(tmp_path / "sink", port=port)
    try:
        stop_then_deliver(tmp_path, config, lambda: held_in(sink), before_restart=sink.start)
    finally:
        sink.stop()
    [received] = held_in(sink)
    assert received.recipients == ["ops@test.example"]


def test_stop_flushes_into_the_queue_mx_nxdomain(tmp_path):
    mx_port = free_port()
    dns = Dnsmasq(tmp_path / "dns").start()  # knows nothing: ops@gone.test is NXDOMAIN
    transports = f"""
    [transports.mx]
    resolver = "{dns.address}"
    port = {mx_port}
    tls = "none"
    dns_timeout = "2s"
    connect_timeout = "2s"
    """
    config = write_config(tmp_path, route="mx", to="ops@gone.test", transports=transports)
    sink = SmtpSink(tmp_path / "sink", port=mx_port)

    def dns_comes_back() -> None:
        nonlocal dns
        dns.stop()
        records = ["mx-host=gone.test,mx.gone.test,10", "host-record=mx.gone.test,127.0.0.1"]
        dns = Dnsmasq(tmp_path / "dns2", records=records, port=dns.port).start()
        sink.start()

    try:
        stop_then_deliver(tmp_path, config, lambda: held_in(sink), before_restart=dns_comes_back)
    finally:
        sink.stop()
        dns.stop()
    [received] = held_in(sink)
    assert received.recipients == ["ops@gone.test"]


def held_in(sink: SmtpSink) -> list:
    return [m for m in sink.messages() if "held-back" in str(m.message["Subject"])]


class Silent:
    """A TCP listener that accepts and never answers: an SMTP server hung before its greeting."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() under way, which close() alone does not
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


def hung_server_config(tmp_path: Path, port: int) -> Path:
    transports = f"""
    [transports.smtp]
    servers = ["127.0.0.1:{port}"]
    tls = "none"
    """  # the default timeouts: 30 s to connect, 5 min for the greeting
    return write_config(tmp_path, route="smtp", to="ops@test.example", transports=transports, group_wait="0s", held_back=False)


def test_stop_within_the_bound_while_a_transport_hangs(tmp_path):
    server = Silent()
    config = hung_server_config(tmp_path, server.port)
    try:
        proc = start(config)
        wait_for(lambda: server.held, what="the agent to connect")
        took = terminate(proc, signal.SIGTERM)
    finally:
        server.close()
    log = log_of(proc)
    assert took < STOP_BOUND, f"exit took {took:.1f} s\n{log}"
    assert len(queued(tmp_path)) == 1, log  # the attempt was cut short: the mail waits for the next start


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
def test_a_second_signal_exits_at_once_and_loses_nothing(tmp_path, second):
    server = Silent()
    config = hung_server_config(tmp_path, server.port)
    try:
        proc = start(config)
        wait_for(lambda: server.held, what="the agent to connect")
        took = terminate(proc, signal.SIGTERM, second, gap=0.5)
    finally:
        server.close()
    log = log_of(proc)
    assert took < 2.0, f"exit took {took:.1f} s after the second signal\n{log}"
    assert proc.returncode != 0, log
    assert len(queued(tmp_path)) == 1, log
    # The restart delivers to a server on a port of its own: the hung server's port, free again,
    # may be taken by anything on the machine in the meantime.
    with SmtpSink(tmp_path / "sink") as sink:
        text = config.read_text().replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{sink.port}")
        config.write_text(text.replace('tls = "none"', 'tls = "none"\nconnect_timeout = "2s"'))
        proc = start(config)
        try:
            got = wait_for(sink.messages, what="the mail delivered after the restart")
        except AssertionError:
            got = []  # told below, with the agent's log
        finally:
            terminate(proc, signal.SIGTERM)
            log = log_of(proc)
        assert got, f"the mail was not delivered after the restart\n{log}"
        assert [r.recipients for r in got] == [["ops@test.example"]], log
