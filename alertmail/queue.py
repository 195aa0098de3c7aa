"""The durable queue: one spool folder shared by the agent's alerts and the relay.

Layout of ``state_dir/queue``::

    <id>.msg        first line: the entry's metadata as JSON; then the message bytes.
                    Written once (temp file, fsync, rename, folder fsync), never changed.
    <id>.json       the entry's metadata after delivery attempts (rewritten atomically);
                    when present it supersedes the first line of <id>.msg.
    .<id>.*.tmp     a file being written; a crash leaves it behind and start() drops it.
    control/        requests from the command line to a running agent (retry, delete).
    lock            held (flock) by the one process that owns the queue.

A message counts as queued once its ``.msg`` file is renamed into place and the folder
is fsynced; only then does ``put()`` return. Concurrent ``put()`` calls are committed
together: their files are written and fsynced in parallel threads (the filesystem
journal folds concurrent fsyncs into one commit) and one folder fsync covers the batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alertmail.model import Envelope, RecipientStatus, Status

log = logging.getLogger("alertmail.queue")

ID_PATTERN = re.compile(r"^[0-9a-f]{12,40}$")
# More puts than this wait for the next commit round; keeps one round's latency bounded.
BATCH_MAX = 512
WRITE_THREADS = 8
# What the command line can ask a running agent to do; "resend" takes a badmail id.
REQUESTS = ("retry", "delete", "resend")


class QueueWriteError(OSError):
    """A message could not be made durable (disk full, permissions); nothing half-written remains."""


class QueueLocked(RuntimeError):
    """Another process owns this queue folder (an agent is running on the same state_dir)."""


def new_id() -> str:
    """A message id that sorts by creation time: milliseconds in hex, then randomness."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(4)}"


def valid_id(text: str) -> bool:
    return bool(ID_PATTERN.match(text))


@dataclass
class RecipientState:
    """Where one recipient of a queued message stands."""

    status: str = "pending"  # "pending" | "delivered" | "failed"
    code: int = 0
    message: str = ""
    enhanced: str = ""
    remote: str = ""
    transport: str = ""  # the transport that gave the last result
    time: float = 0.0  # of the last result
    reported: bool = False  # a DSN about its failure has gone out (or was not due)

    def record(self, result: RecipientStatus, transport: str, when: float) -> None:
        self.status = {Status.DELIVERED: "delivered", Status.PERMANENT: "failed"}.get(result.status, "pending")
        self.code, self.message, self.enhanced, self.remote = result.code, result.message, result.enhanced, result.remote
        self.transport, self.time = transport, when

    @property
    def reply(self) -> str:
        """The last reply as one line, e.g. ``550 5.1.1 no such user``."""
        parts = [str(self.code) if self.code else "", self.enhanced, self.message]
        return " ".join(p for p in parts if p)


@dataclass
class Entry:
    """The metadata of one queued message."""

    id: str
    created: float
    sender: str
    recipients: dict[str, RecipientState]
    route: list[str] | None = None  # None: the configured default route
    origin: str = "agent"  # "agent", "relay", "pickup", "dsn", "resend"
    size: int = 0
    attempts: int = 0
    next_try: float = 0.0
    last_try: float = 0.0
    last_error: str = ""
    delay_notified: bool = False

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.sender, tuple(self.recipients))

    @property
    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "pending"]

    @property
    def failed(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "failed"]

    @property
    def delivered(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "delivered"]

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=True).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        data: dict[str, Any] = json.loads(raw)
        fields = RecipientState.__dataclass_fields__
        data["recipients"] = {
            r: RecipientState(**{k: v for k, v in s.items() if k in fields}) for r, s in data["recipients"].items()
        }
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class QueueStats:
    """Counters for the benchmark and the logs."""

    fsyncs: int = 0
    commits: int = 0
    puts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fsynced(self, n: int = 1) -> None:
        with self.lock:
            self.fsyncs += n


class Queue:
    """The spool folder: ``put`` makes a message durable; delivery reads, updates and removes entries."""

    def __init__(self, folder: Path, *, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self.stats = QueueStats()
        self._entries: dict[str, Entry] = {}
        self._pending: list[tuple[Entry, bytes, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock_fd: int | None = None
        self._listeners: list[Callable[[Entry], None]] = []

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Own the folder, drop what a crash left half-written, load the queued entries."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "control").mkdir(exist_ok=True)
        if not self.acquire_lock():
            raise QueueLocked(f"{self.folder} is in use by another alertmail process")
        self._pool = concurrent.futures.ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="queue-write")
        self._entries = await asyncio.to_thread(self.recover)
        self._wakeup = asyncio.Event()
        self._committer = asyncio.create_task(self._commit_loop(), name="queue-commit")
        if self._entries:
            log.info("queue: %d message(s) to resume in %s", len(self._entries), self.folder)

    async def close(self) -> None:
        """Finish the commit round in progress, then let go of the folder."""
        if self._committer is not None:
            while self._pending:
                await asyncio.sleep(0.005)
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                pass
            self._committer = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.release_lock()

    def acquire_lock(self) -> bool:
        """Take the folder's lock without waiting; False when another process holds it."""
        if self._lock_fd is not None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> dict[str, Entry]:
        """Drop temp files and orphans; return every complete entry (blocking: run in a thread)."""
        entries: dict[str, Entry] = {}
        names = {p.name for p in self.folder.iterdir() if p.is_file()}
        for name in names:
            if name.startswith("."):
                log.info("queue: dropping %s, left half-written by a crash", name)
                (self.folder / name).unlink(missing_ok=True)
        for name in sorted(n for n in names if n.endswith(".msg") and not n.startswith(".")):
            msg_id = name[:-4]
            entry = self._read_entry(msg_id, has_state=f"{msg_id}.json" in names)
            if entry is not None:
                entries[msg_id] = entry
        for name in names:
            if name.endswith(".json") and not name.startswith(".") and f"{name[:-5]}.msg" not in names:
                (self.folder / name).unlink(missing_ok=True)  # the message was removed before its state
        return entries

    def _read_entry(self, msg_id: str, *, has_state: bool = True) -> Entry | None:
        try:
            if has_state:
                try:
                    return Entry.from_json((self.folder / f"{msg_id}.json").read_bytes())
                except FileNotFoundError:
                    pass
            with open(self.folder / f"{msg_id}.msg", "rb") as fh:
                return Entry.from_json(fh.readline())
        except FileNotFoundError:
            return None  # removed meanwhile, or never there
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("queue: cannot read entry %s: %s; left in place", msg_id, exc)
            return None

    # -- writing ------------------------------------------------------------

    async def put(self, data: bytes, envelope: Envelope, *, route: list[str] | None = None, origin: str = "agent") -> str:
        """Queue ``data`` for ``envelope``; return its id once it is durable.

        Raises QueueWriteError when it cannot be made durable; then nothing of it remains.
        """
        if self._wakeup is None:
            raise RuntimeError("Queue.start() was not called")
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        for address in (envelope.sender, *envelope.recipients):
            if "\r" in address or "\n" in address:
                raise ValueError(f"CR or LF in envelope address {address!r}")
        now = time.time()
        entry = Entry(
            id=new_id(),
            created=now,
            sender=envelope.sender,
            recipients={r: RecipientState() for r in dict.fromkeys(envelope.recipients)},
            route=list(route) if route else None,
            origin=origin,
            size=len(data),
            next_try=now,
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, bytes(data), done))
        self._wakeup.set()
        await done
        self._entries[entry.id] = entry
        self.stats.puts += 1
        for listener in self._listeners:
            listener(entry)
        return entry.id

    async def _commit_loop(self) -> None:
        """Commit whatever is pending; puts that arrive during a round form the next one."""
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
                try:
                    errors = await loop.run_in_executor(None, self._commit, [(e, d) for e, d, _ in batch])
                except Exception as exc:  # the commit itself broke: every put of the round fails
                    errors = [QueueWriteError(getattr(exc, "errno", None) or errno.EIO, f"cannot queue: {exc}")] * len(batch)
                self.stats.commits += 1
                for (_, _, done), error in zip(batch, errors):
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

    def _commit(self, batch: list[tuple[Entry, bytes]]) -> list[QueueWriteError | None]:
        """Write, fsync and rename every file of the round, then fsync the folder once (blocking)."""
        assert self._pool is not None
        results = list(self._pool.map(lambda item: self._write_one(*item), batch))
        placed = [entry for (entry, _), error in zip(batch, results) if error is None]
        if placed and self.fsync:
            try:
                self._fsync_folder()
            except OSError as exc:
                for entry in placed:
                    (self.folder / f"{entry.id}.msg").unlink(missing_ok=True)
                error = QueueWriteError(exc.errno, f"cannot make {self.folder} durable: {exc.strerror}")
                return [error] * len(batch)
        return results

    def _write_one(self, entry: Entry, data: bytes) -> QueueWriteError | None:
        final = self.folder / f"{entry.id}.msg"
        try:
            self._write_file(final, entry.to_json() + b"\n" + data)
        except OSError as exc:
            return QueueWriteError(exc.errno or errno.EIO, f"cannot queue message: {exc.strerror or exc}")
        return None

    def _write_file(self, path: Path, content: bytes) -> None:
        """Temp file (dot-named, so recovery drops it), fsync, rename; the folder is not fsynced here."""
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            try:
                view = memoryview(content)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
                    self.stats.fsynced()
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _fsync_folder(self) -> None:
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
            self.stats.fsynced()
        finally:
            os.close(fd)

    # -- reading and updating -------------------------------------------------

    def add_listener(self, listener: Callable[[Entry], None]) -> None:
        """Call ``listener(entry)`` after each successful put (delivery wakes up on it)."""
        self._listeners.append(listener)

    def entries(self) -> list[Entry]:
        """The queued entries, oldest first."""
        return sorted(self._entries.values(), key=lambda e: (e.created, e.id))

    def get(self, msg_id: str) -> Entry | None:
        return self._entries.get(msg_id)

    def __len__(self) -> int:
        return len(self._entries)

    def read_message(self, msg_id: str) -> bytes:
        """The message bytes of an entry (blocking; small alert mails make this cheap)."""
        with open(self.folder / f"{msg_id}.msg", "rb") as fh:
            fh.readline()
            return fh.read()

    async def read(self, msg_id: str) -> bytes:
        return await asyncio.to_thread(self.read_message, msg_id)

    async def update(self, entry: Entry) -> None:
        """Make ``entry``'s metadata durable: delivered recipients are never sent to again."""
        await asyncio.to_thread(self.write_state, entry)

    def write_state(self, entry: Entry) -> None:
        if not (self.folder / f"{entry.id}.msg").exists():
            return  # deleted meanwhile (``queue delete``): do not resurrect its state
        try:
            self._write_file(self.folder / f"{entry.id}.json", entry.to_json())
            if self.fsync:
                self._fsync_folder()
        except OSError as exc:
            raise QueueWriteError(exc.errno, f"cannot update {entry.id}: {exc.strerror or exc}") from exc
        self._entries[entry.id] = entry

    async def remove(self, msg_id: str) -> None:
        """Forget a message: its state goes first, so a crash between leaves no stale state."""
        self._entries.pop(msg_id, None)
        await asyncio.to_thread(self.delete_files, msg_id)

    def delete_files(self, msg_id: str) -> None:
        # No fsync: if a crash undoes the unlink the message is delivered again (at-least-once).
        (self.folder / f"{msg_id}.json").unlink(missing_ok=True)
        (self.folder / f"{msg_id}.msg").unlink(missing_ok=True)

    # -- requests from the command line -------------------------------------

    def request(self, action: str, msg_id: str = "all") -> Path:
        """Leave a request (``retry``, ``delete``, ``resend`` from badmail) for the running agent."""
        if action not in REQUESTS or not (msg_id == "all" or valid_id(msg_id)):
            raise ValueError(f"bad request {action} {msg_id}")
        control = self.folder / "control"
        control.mkdir(parents=True, exist_ok=True)
        path = control / f"{action}-{msg_id}"
        path.touch()
        return path

    def take_requests(self) -> list[tuple[str, str]]:
        """The pending requests as (action, id), removed from the folder (blocking, cheap)."""
        out = []
        try:
            names = os.listdir(self.folder / "control")
        except FileNotFoundError:
            return out
        for name in names:
            action, _, msg_id = name.partition("-")
            (self.folder / "control" / name).unlink(missing_ok=True)
            if action in REQUESTS and (msg_id == "all" or valid_id(msg_id)):
                out.append((action, msg_id))
        return out

    def apply_request(self, action: str, msg_id: str, now: float | None = None) -> list[str]:
        """Carry out one request on the loaded entries; return the ids it touched (blocking)."""
        now = time.time() if now is None else now
        targets = list(self._entries) if msg_id == "all" else [msg_id] if msg_id in self._entries else []
        for target in targets:
            if action == "delete":
                self._entries.pop(target, None)
                self.delete_files(target)
            else:
                entry = self._entries[target]
                entry.next_try = now
                self.write_state(entry)
        return targets

    def load(self, ids: Iterable[str] | None = None) -> None:
        """Read entries from disk without owning the folder (the command line's view)."""
        if ids is None:
            self._entries = {}
            if not self.folder.is_dir():
                return
            names = set(os.listdir(self.folder))
            for name in names:
                if name.endswith(".msg") and not name.startswith("."):
                    entry = self._read_entry(name[:-4], has_state=f"{name[:-4]}.json" in names)
                    if entry is not None:
                        self._entries[entry.id] = entry
            return
        for msg_id in ids:
            entry = self._read_entry(msg_id)
            if entry is not None:
                self._entries[msg_id] = entry
