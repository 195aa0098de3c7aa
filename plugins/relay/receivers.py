"""The relay's receiving processes: started, watched, restarted when they die, stopped with the agent.

The agent binds the listening sockets once and hands them to ``[relay].workers``
processes (``receiver.py``), which all accept on them: a connection waits in the
socket's backlog until one of them takes it, so a process that dies loses no waiting
connection and the port never stops answering. Each process commits what it receives
to the shared queue folder and names the segment on its standard output; the agent
adopts the segment and delivers from it (several writers, one reader, as Postfix's
``smtpd``/``cleanup`` processes and its one ``qmgr``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import sys
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from alertmail import AlertmailError
from alertmail.intake import Intake
from alertmail.plugins.relay.receiver import COUNTERS, STRIDE, Slots, Spec

if TYPE_CHECKING:
    from alertmail.plugins.relay.policy import RelayPolicy

log = logging.getLogger("alertmail.relay")

# A process that dies sooner than this after its start is restarted after a growing pause.
STEADY = 10.0
MAX_PAUSE = 10.0
# Longest wait for a new process to say "ready".
READY_TIMEOUT = 60.0
# What a receiving process may take beyond stop_timeout to close its queue and exit before it is killed.
STOP_GRACE = 2.0
# How often the queue folder is listed for segments whose writer died before naming them.
RESCAN_INTERVAL = 2.0


class Anvil:
    """Sessions per client and failed AUTH per client, counted for every receiving process (as Postfix's anvil).

    Sessions are counted for clients outside ``allow`` only (the caps apply to them):
    the processes ask before they admit such a client and tell when its session ends.
    Failed AUTH are counted for every client. A client is an IPv4 address or an IPv6
    network of ``ipv6_prefix`` bits (``RelayPolicy.client_key``).
    """

    def __init__(self, policy: RelayPolicy) -> None:
        self.policy = policy
        self.sessions: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.failures: dict[str, collections.deque[float]] = {}

    def answer(self, index: int, line: str) -> str | None:
        """The reply to one request of process ``index`` ("yes"/"no"), or None for news that needs none."""
        word, _, ip = line.partition(" ")
        if word == "admit":
            # ``ip`` is a client key: an IPv4 address or an IPv6 network (RelayPolicy.client_key)
            if sum(counts.total() for counts in self.sessions.values()) >= self.policy.outside_connections:
                return "full"  # the rest of max_connections is reserved for `allow` clients
            total = sum(counts[ip] for counts in self.sessions.values())
            if total >= self.policy.max_connections_per_client:
                return "no"
            self.sessions[index][ip] += 1
            return "yes"
        if word == "release":
            counts = self.sessions[index]
            counts[ip] -= 1
            if counts[ip] <= 0:
                del counts[ip]
            return None
        if word in ("blocked", "failed"):
            now = time.monotonic()
            recent = self.failures.get(ip)
            if recent is not None:
                while recent and recent[0] <= now - self.policy.rate_window:
                    recent.popleft()
            if word == "failed":
                if recent is None:
                    if len(self.failures) >= 100_000:  # bounded memory under a spread-out attack
                        self.failures.pop(next(iter(self.failures)))
                    recent = self.failures[ip] = collections.deque()
                recent.append(now)
            elif recent is not None and not recent:
                del self.failures[ip]
                recent = None
            return "yes" if recent is not None and len(recent) >= self.policy.max_auth_failures else "no"
        return None

    def forget(self, index: int) -> None:
        """Process ``index`` ended: its sessions ended with it."""
        self.sessions.pop(index, None)


class ReceiverFailed(AlertmailError, OSError):
    """A receiving process could not start (the first start of the relay fails with it)."""


class Receivers:
    """``count`` receiving processes on ``sockets``, feeding ``queue``."""

    def __init__(self, count: int, sockets: Iterable[socket.socket], queue: Intake, spec: Spec) -> None:
        self.count = count
        self.sockets = list(sockets)
        self.addresses = [sock.getsockname()[:2] for sock in self.sockets]
        self.queue = queue
        self.spec = spec
        self.processes: dict[int, asyncio.subprocess.Process] = {}
        self.restarts = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._anvils: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self.anvil = Anvil(spec.policy)
        # Per process its open sessions (summed for max_connections) and its counters (for /metrics).
        self._slots_fd = os.memfd_create("alertmail-relay-slots") if hasattr(os, "memfd_create") else _temp_fd()
        os.ftruncate(self._slots_fd, Slots.size(count))
        self.slots = Slots(self._slots_fd, count)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes.values() if p.returncode is None]

    @property
    def counts(self) -> collections.Counter[str]:
        return collections.Counter({name: self.slots.total(name) for name in COUNTERS})

    async def start(self) -> None:
        """Start every process and wait until each accepts; ReceiverFailed when one cannot."""
        ready = [asyncio.get_running_loop().create_future() for _ in range(self.count)]
        for index in range(self.count):
            self._tasks.append(asyncio.create_task(self._keep(index, ready[index]), name=f"relay-receiver-{index}"))
        self._tasks.append(asyncio.create_task(self._rescan(), name="relay-rescan"))
        try:
            await asyncio.gather(*ready)
        except BaseException:
            await self.stop(0)
            raise

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        mine, theirs = socket.socketpair()
        try:
            spec = dataclasses.replace(self.spec, index=index, anvil=theirs.fileno(), slots=self._slots_fd, processes=self.count)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "alertmail.plugins.relay.receiver",
                str(os.getpid()),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                pass_fds=(*spec.fds, spec.anvil, spec.slots),
            )
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(spec))
        process.stdin.close()
        self.processes[index] = process
        self._anvils[index] = asyncio.create_task(self._serve_anvil(index, mine), name=f"relay-anvil-{index}")
        return process

    async def _serve_anvil(self, index: int, sock: socket.socket) -> None:
        """Answer the requests of process ``index`` until it closes its end."""
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        try:
            while line := await reader.readline():
                reply = self.anvil.answer(index, line.decode("ascii", "replace").strip())
                if reply is not None:
                    writer.write(reply.encode() + b"\n")
        except (OSError, ValueError):
            pass
        finally:
            writer.close()

    async def _keep(self, index: int, ready: asyncio.Future[None]) -> None:
        """Run process ``index``; start it again whenever it ends, until the relay stops."""
        pause = 0.1
        while not self._stopping:
            started = time.monotonic()
            try:
                process = await self._spawn(index)
            except OSError as exc:
                if not ready.done():
                    ready.set_exception(ReceiverFailed(f"cannot start a receiving process: {exc}"))
                    return
                log.error("relay: cannot start receiving process %d: %s", index, exc)
            else:
                await self._follow(index, process, ready)
                code = await process.wait()
                self._ended(index)
                if self._stopping:
                    return
                if not ready.done():
                    ready.set_exception(ReceiverFailed(f"a receiving process exited with {describe(code)} before it was ready"))
                    return
                log.error("relay: receiving process %d (pid %d) %s; starting it again", index, process.pid, describe(code))
                self.restarts += 1
            if time.monotonic() - started >= STEADY:
                pause = 0.1
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    async def _follow(self, index: int, process: asyncio.subprocess.Process, ready: asyncio.Future[None]) -> None:
        """Read what the process tells until it closes its output."""
        assert process.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        said_ready = False
        while True:
            try:
                timeout = None if said_ready else max(0.0, deadline - time.monotonic())
                line = await asyncio.wait_for(process.stdout.readline(), timeout)
            except TimeoutError:
                log.error("relay: receiving process %d did not start within %ss", index, READY_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                return
            except ValueError:  # a line longer than the reader's limit: not from a receiver
                continue
            if not line:
                return
            word, _, rest = line.decode("utf-8", "replace").rstrip("\n").partition(" ")
            if word == "segment":
                self.queue.adopt(rest)
            elif word == "ready":
                said_ready = True
                if not ready.done():
                    ready.set_result(None)

    async def _rescan(self) -> None:
        """Adopt segments whose writer was killed between committing and naming them."""
        while True:
            await asyncio.sleep(RESCAN_INTERVAL)
            try:
                found = self.queue.adopt_new()
            except OSError as exc:
                log.warning("relay: cannot list the queue folder: %s", exc)
                continue
            if found:
                log.info("relay: %d message(s) adopted from segments a receiving process left unnamed", found)

    async def stop(self, timeout: float) -> None:
        """SIGTERM every process; they finish their transactions in flight within ``timeout``, else SIGKILL.

        Cancelled (the agent's own stop bound came first), it kills what is left at once
        rather than leave a receiving process behind the agent: a message not yet
        answered 250 is sent again by its client, and a segment already committed is
        adopted below or at the next start.
        """
        self._stopping = True
        # The port stops answering once every process has closed its copy of the sockets too.
        for sock in self.sockets:
            sock.close()
        for process in self.processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout + STOP_GRACE
        try:
            for process in self.processes.values():
                try:
                    await asyncio.wait_for(process.wait(), max(0.1, deadline - time.monotonic()))
                except TimeoutError:
                    log.error("relay: receiving process %d did not stop in time; killed", process.pid)
                    await _kill(process)
            # Each keeper reads its process's last lines (segments to adopt) and returns; then the rescan goes.
            keepers = self._tasks[:-1]
            if keepers:
                await asyncio.wait(keepers, timeout=STOP_GRACE)
        except asyncio.CancelledError:
            for process in self.processes.values():
                if process.returncode is None:
                    log.error("relay: receiving process %d was still stopping at the agent's stop bound; killed", process.pid)
                    await _kill(process)
            raise
        finally:
            for task in [*self._tasks, *self._anvils.values()]:
                task.cancel()
            await asyncio.gather(*self._tasks, *self._anvils.values(), return_exceptions=True)
            self._tasks.clear()
            # Segments named just before the processes ended are taken now, not at the next start.
            with contextlib.suppress(OSError):
                self.queue.adopt_new()
            os.close(self._slots_fd)

    def _ended(self, index: int) -> None:
        """Process ``index`` is gone: so are its sessions."""
        self.anvil.forget(index)
        self.slots.view[index * STRIDE] = 0
        task = self._anvils.pop(index, None)
        if task is not None:
            task.cancel()


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()


def _temp_fd() -> int:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="alertmail-relay-")
    os.unlink(path)
    return fd


def describe(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def default_count() -> int:
    """``workers = "auto"``: a receiving process per core this process may run on but one, the delivering one's.

    At least one. More receiving processes than that commit rounds of their own side by
    side, whose fsyncs wait for each other in the file system's journal: on two cores two
    receiving processes accepted less than one (docs/relay.md has the figures).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)
