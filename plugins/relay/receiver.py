"""One receiving process of the relay: SMTP sessions on sockets it inherits, committed to the shared queue.

Started by ``receivers.Receivers`` as ``python -m alertmail.plugins.relay.receiver``; never
by hand. What it needs comes pickled on standard input (a ``Spec``, made and checked by
the agent); what it tells the agent goes out on standard output, one line each:

    ready                       the listener is accepting
    segment <name>              a commit round is durable in the queue folder: adopt it

Its counters (what /metrics shows) and its number of open sessions are kept in memory
shared with the agent and the other receiving processes (``Slots``).

Every message is durable in the queue before its 250, as in one process: the commit
happens here, and the agent's delivery takes the segment from the folder. SIGTERM stops
it gracefully (transactions in flight finish); it also stops when the agent is gone,
so a ``kill -9`` of the agent leaves no receiver behind.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alertmail.intake import IntakeWriter, setup_logging

if TYPE_CHECKING:
    from alertmail.plugins.relay.policy import RelayPolicy
    from alertmail.plugins.relay.settings import RelaySettings

log = logging.getLogger("alertmail.relay")

# How often the log buffer reaches its file and the agent is looked for.
WATCH_INTERVAL = 1.0
# Longest wait for the agent's count of a client's sessions or failed AUTH; then this process decides alone.
ANVIL_TIMEOUT = 2.0


@dataclass(frozen=True)
class Spec:
    """What a receiving process is told by the agent (pickled on its standard input)."""

    index: int
    fds: tuple[int, ...]  # listening sockets, inherited
    settings: RelaySettings  # [relay] as the agent checked it
    policy: RelayPolicy  # made of the settings by the agent (users file read, networks parsed)
    writer: IntakeWriter  # how this process puts mail into the agent's queue
    anvil: int  # a socket to the agent, which counts sessions per client and failed AUTH for all processes
    slots: int  # shared memory: per process its open sessions and its counters (Slots)
    processes: int
    logs: Path
    software: str
    log_level: str
    log_format: str
    event_loop: str  # "uvloop" or "asyncio", as the agent resolved [relay].event_loop


# What /metrics shows of the relay, kept per process after its number of open sessions.
COUNTERS = ("sessions", "sessions_refused", "accepted", "refused")
STRIDE = 1 + len(COUNTERS)


class Slots:
    """Memory shared by the agent and the receiving processes: per process, 8-byte integers.

    ``[open sessions, sessions, sessions_refused, accepted, refused]``; each process
    writes only its own, so no lock is needed. A process started again in the place of
    one that died goes on from its counters: they never go back.
    """

    def __init__(self, fd: int, processes: int) -> None:
        import mmap

        self.processes = processes
        self._map = mmap.mmap(fd, 8 * STRIDE * processes)
        self.view = memoryview(self._map).cast("q")

    @staticmethod
    def size(processes: int) -> int:
        return 8 * STRIDE * processes

    def sessions(self) -> int:
        return sum(self.view[i * STRIDE] for i in range(self.processes))

    def total(self, counter: str) -> int:
        at = 1 + COUNTERS.index(counter)
        return sum(self.view[i * STRIDE + at] for i in range(self.processes))

    def counters(self, index: int) -> SlotCounters:
        return SlotCounters(self.view, index * STRIDE + 1)


class SlotCounters:
    """A process's counters in the shared slots, used as ``RelayServer.counts`` is (``counts["accepted"] += 1``)."""

    def __init__(self, view: memoryview, start: int) -> None:
        self._view = view
        self._start = start

    def __getitem__(self, key: str) -> int:
        return int(self._view[self._start + COUNTERS.index(key)])

    def __setitem__(self, key: str, value: int) -> None:
        self._view[self._start + COUNTERS.index(key)] = value

    def get(self, key: str, default: int = 0) -> int:
        return self[key] if key in COUNTERS else default


class SharedLimits:
    """The connection caps and the AUTH-failure limit counted across every receiving process.

    The total of sessions is read from the shared ``Slots``; what is counted per client goes to the agent and back
    (``receivers.Anvil``), only for clients outside ``allow``, to whom the caps apply.
    """

    def __init__(self, spec: Spec) -> None:

        self.index = spec.index
        self.slots = Slots(spec.slots, spec.processes)
        self.anvil = socket.socket(fileno=spec.anvil)
        self.anvil.setblocking(True)
        self.anvil.settimeout(ANVIL_TIMEOUT)
        self._buffer = b""

    def total(self) -> int:
        return self.slots.sessions()

    def set_mine(self, sessions: int) -> None:
        self.slots.view[self.index * STRIDE] = sessions

    def ask(self, question: str) -> bool | None:
        """The agent's yes or no; None when it does not answer in time (the caller decides alone)."""
        word = self.answer(question)
        return None if word is None else word == "yes"

    def answer(self, question: str) -> str | None:
        """The agent's answer ("yes", "no", "full"); None when it does not answer in time."""
        try:
            self.anvil.sendall(question.encode() + b"\n")
            while b"\n" not in self._buffer:
                chunk = self.anvil.recv(64)
                if not chunk:
                    return None
                self._buffer += chunk
        except OSError:
            self._buffer = b""
            return None
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("ascii", "replace")

    def tell(self, news: str) -> None:
        try:
            self.anvil.sendall(news.encode() + b"\n")
        except OSError:
            pass


def shared_server(base: type) -> type:
    """``listener.RelayServer`` whose caps count the sessions of every receiving process."""

    class SharedRelayServer(base):
        limits: SharedLimits

        def admit(self, session: Any) -> str | None:
            policy, limits = self.policy, self.limits
            if limits.total() >= policy.max_connections:
                self.counts["sessions_refused"] += 1
                return "too many connections"
            if not session.client_allowed:
                # the agent counts the sessions of clients outside `allow`: per client, and all together
                answer = limits.answer(f"admit {session.client_key}")
                if answer in ("no", "full"):
                    self.counts["sessions_refused"] += 1
                    return "too many connections" if answer == "full" else f"too many connections from {session.client_key}"
            self.counts["sessions"] += 1
            self.connections.add(session)
            limits.set_mine(len(self.connections))
            return None

        def release(self, session: Any) -> None:
            if session in self.connections:
                self.connections.discard(session)
                self.limits.set_mine(len(self.connections))
                if not session.client_allowed:
                    self.limits.tell(f"release {session.client_key}")

        def auth_blocked(self, ip: str) -> bool:
            return self.limits.ask(f"blocked {ip}") is True

        def auth_failed(self, ip: str) -> bool:
            return self.limits.ask(f"failed {ip}") is True

    return SharedRelayServer


def _die_with_parent() -> None:
    """Ask Linux for SIGTERM when the agent dies (whatever kills it); elsewhere the watch below does it."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        try:
            ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        except (OSError, AttributeError):
            pass


class Receiver:
    """The listener of one receiving process and what it reports."""

    def __init__(self, spec: Spec, parent: int) -> None:
        self.spec = spec
        self.parent = parent
        self.out = sys.stdout.buffer

    def tell(self, line: str) -> None:
        try:
            self.out.write(line.encode() + b"\n")
            self.out.flush()
        except (OSError, ValueError):
            pass  # the agent is gone; the parent watch stops this process

    async def run(self) -> None:
        from alertmail.plugins.relay.listener import RelayServer, tls_context
        from alertmail.plugins.relay.w3c import W3CLog

        spec = self.spec
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        queue = spec.writer.open(lambda segment: self.tell(f"segment {segment}"))
        w3c = W3CLog(spec.logs, spec.software)
        settings = spec.settings
        tls = tls_context(str(settings.tls_cert), str(settings.tls_key)) if settings.tls_cert and settings.tls_key else None
        server = shared_server(RelayServer)(spec.policy, queue, w3c, tls)
        server.limits = SharedLimits(spec)
        server.counts = server.limits.slots.counters(spec.index)
        sockets = [socket.socket(fileno=fd) for fd in spec.fds]
        await server.start_sockets(sockets)
        self.tell("ready")
        try:
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), WATCH_INTERVAL)
                except TimeoutError:
                    pass
                if os.getppid() != self.parent:
                    log.warning("relay: receiving process %d: the agent is gone; stopping", spec.index)
                    break
                w3c.flush()
        finally:
            await server.stop(settings.stop_timeout)
            await queue.close()
            w3c.close()


def main() -> None:
    # The agent's pid comes as the argument: asked here, a parent that died while this process
    # was starting would read as the process that adopted it.
    parent = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else os.getppid()
    _die_with_parent()
    if os.getppid() != parent:
        return
    # Ctrl-C in a terminal reaches the whole process group: the agent stops this process itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    spec: Spec = pickle.load(sys.stdin.buffer)
    setup_logging(spec.log_level, spec.log_format)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    factory = None
    if spec.event_loop == "uvloop":  # the agent checked that it is installed
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(Receiver(spec, parent).run())


if __name__ == "__main__":
    main()
