"""The durable queue: one spool folder shared by the agent's alerts and the relay.

Layout of ``state_dir/queue``::

    <seg>.seg       one commit round: for each message a record that carries its lengths
                    and checksums (``alertmail.queue.segment``): a header line, a line of
                    JSON metadata, the message bytes. Written once (temp file, fsync,
                    rename, folder fsync) and never changed.
    <seg>.done      ids of that segment's messages that are finished (appended; no
                    fsync: a crash that loses a line means one more delivery, never less).
    <id>.json       a message's metadata after delivery attempts (rewritten atomically,
                    fsynced): a header line with its length and CRC-32, then the JSON. It
                    supersedes the metadata line in the segment for how each recipient
                    stands, never for the envelope: one that fails its checksum or disagrees
                    with the verified record is set aside and the message starts over.
    .<name>.tmp     a file being written; a crash leaves it behind and start() drops it.
    control/        requests from the command line to a running agent (retry, delete, resend).
    corrupt/        damaged bytes set aside, never deleted: ``<seg>.seg`` a damaged segment
                    (its intact messages were written into a new one), ``<id>.msg`` a message
                    found damaged when read for delivery, ``<id>.json`` a damaged state file or
                    the state of a message lost in damage; ``.txt`` next to each says what was
                    wrong and names every message lost, with what is known of it.
    lock            held (flock) by the one process that owns the queue.

Every record is verified when the queue loads and the message again when it is read for
delivery: a message that fails is never delivered. Files that are not the queue's own
(a folder named ``x.seg``, ``notes.seg``) are skipped with a warning, never fatal.

A message counts as queued once its segment is renamed into place and the folder is
fsynced; only then does ``put()`` return. Concurrent ``put()`` calls form one commit
round and share one segment, so two fsyncs make a whole round durable (group commit).
A segment is deleted when all its messages are finished.

What a commit round wrote is also kept in memory (up to ``FRESH_MAX`` bytes) until the
message is first read for delivery: the bytes delivered are the very bytes whose
checksum went to disk, without a read and a thread hop per message; so are the
messages of an adopted segment, whose checksums the adoption's scan just verified. A message read
again (a retry, after a restart, from the command line) comes from its segment,
verified. Finished messages are marked in batches: what several delivery workers
finish at once costs one thread hop, and a segment whose messages all finished in the
batch is deleted without a ``.done`` line for each.

Other processes may add segments to a queue they do not own (the relay's receiving
processes): a ``SharedWriter`` commits rounds exactly as ``put()`` does, in its own
process, and tells the owner each new segment's name; the owner ``adopt()``s it, and
``adopt_new()`` finds any segment whose news was lost (its writer was killed between the
rename and the telling). Only the owner reads, updates and removes entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alertmail.errors import AlertmailError
from alertmail.fsutil import fsync_dir, lock, write_atomic
from alertmail.model import Envelope
from alertmail.queue import segment as records
from alertmail.queue.entry import Entry, RecipientState, new_id, route_key_for, valid_id

log = logging.getLogger("alertmail.queue.spool")

# More puts than this wait for the next commit round; keeps one round's size bounded.
BATCH_MAX = 1024
# Bytes of freshly committed messages kept for their first delivery (oldest dropped first).
FRESH_MAX = 16 << 20
# What the command line can ask a running agent to do; "resend" takes a badmail id.
REQUESTS = ("retry", "delete", "resend")


class QueueWriteError(AlertmailError, OSError):
    """A message could not be made durable (disk full, permissions); nothing half-written remains."""


class QueueCorrupt(AlertmailError, ValueError):
    """A queued message's bytes do not match their checksum or length: it is never delivered."""


class QueueLocked(AlertmailError, RuntimeError):
    """Another process owns this queue folder (an agent is running on the same state_dir)."""


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

    def __init__(
        self,
        folder: Path,
        *,
        fsync: bool = True,
        clock: Callable[[], float] = time.time,
        sign: Callable[[bytes], bytes] | None = None,
        sign_origins: Collection[str] = ("agent",),
    ) -> None:
        self.folder = Path(folder)
        self.fsync = fsync
        self.clock = clock  # stamps ``created`` and the first ``next_try``; tests pass their own
        # DKIM: what these origins put is signed once, before it is made durable, so retries send the same bytes.
        self.sign = sign
        self.sign_origins = frozenset(sign_origins)
        self.stats = QueueStats()
        # The routes the config names, by key ("mail.route": [...]): a put records which one it follows.
        self.routes: dict[str, list[str]] = {}
        self._entries: dict[str, Entry] = {}
        self._live: dict[str, set[str]] = {}  # segment -> ids not yet finished
        self._pending: list[tuple[Entry, bytes, asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._committer: asyncio.Task[None] | None = None
        self._committing = False  # a round is being written
        self._lock_fd: int | None = None
        self._writer_only = False  # a SharedWriter's queue: commits rounds, keeps no entries
        self._shared = False  # other processes write segments here (shared_writer() was asked for)
        self._ended: set[str] = set()  # with _shared: segments removed since adopt_new() last listed the folder
        self._listeners: list[Callable[[Entry], None]] = []
        self._fresh: dict[str, bytes] = {}  # id -> bytes just committed, not read for delivery yet
        self._fresh_bytes = 0
        # Finished messages waiting to be marked (id, segment, last of its segment) and who waits for it.
        self._retiring: list[tuple[str, str, bool]] = []
        self._retired: asyncio.Future[None] | None = None
        self._retirer: asyncio.Task[None] | None = None
        # What load() found damaged, by segment, for recover() to set aside and `queue list --corrupt` to show.
        self.damaged: dict[str, records.Scan] = {}
        # Files load() could not read (permissions, I/O errors): damage too, kept in place for a fix.
        self.unreadable: dict[str, str] = {}  # file name -> why
        self.bad_states: dict[str, str] = {}  # id -> why its state file was not taken (set aside by recover())
        self.lost: dict[str, str] = {}  # id -> what the state file of a message lost in damage says of it
        self._waiting_states: set[str] = set()  # ids whose state file waits with its unreadable segment

    # -- life cycle ---------------------------------------------------------

    async def start(self) -> None:
        """Own the folder, drop what a crash left half-written, load the queued entries."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "control").mkdir(exist_ok=True)
        if not self.acquire_lock():
            raise QueueLocked(f"{self.folder} is in use by another alertmail process")
        await asyncio.to_thread(self.recover)
        self._wakeup = asyncio.Event()
        self._committer = asyncio.create_task(self._commit_loop(), name="queue-commit")
        if self._entries:
            log.info("queue: %d message(s) to resume in %s", len(self._entries), self.folder)

    async def close(self) -> None:
        """Finish the commit round in progress, then let go of the folder."""
        if self._retirer is not None:
            await asyncio.wait([self._retirer])
        if self._committer is not None:
            while self._pending or self._committing:
                await asyncio.sleep(0.005)
            self._committer.cancel()
            try:
                await self._committer
            except asyncio.CancelledError:
                pass
            self._committer = None
        self.release_lock()

    def acquire_lock(self) -> bool:
        """Take the folder's lock without waiting; False when another process holds it."""
        if self._lock_fd is not None:
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / "lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            locked = lock(fd, wait=False)
        except OSError:
            os.close(fd)
            raise
        if not locked:
            os.close(fd)
            return False
        # The owner's pid, so the command line can wake it (SIGUSR1) when it leaves a request.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd
        return True

    def owner(self) -> int | None:
        """The pid of the process that holds the folder's lock, as it wrote it; None when unknown."""
        try:
            text = (self.folder / "lock").read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self) -> None:
        """Drop temp files and leftovers of finished messages, set damage aside, then load (blocking: run in a thread)."""
        for name in os.listdir(self.folder):
            if name.startswith("."):
                path = self.folder / name
                if path.is_file() and not path.is_symlink():
                    log.info("queue: dropping %s, left half-written by a crash", name)
                    path.unlink(missing_ok=True)
                else:
                    log.warning("queue: skipping %s: not a file the queue writes", name)
        self.load()
        for segment in list(self.damaged):
            self._set_aside(segment)
        for msg_id, reason in [*self.bad_states.items(), *self.lost.items()]:
            path = self.folder / f"{msg_id}.json"
            if path.is_file():
                kept = self._move_to_corrupt(path, path.name, [reason])
                log.error("queue: state file of message %s set aside in %s: %s", msg_id, kept, reason)
        for name, reason in self.unreadable.items():
            log.error("queue: %s is damaged, kept in place: %s", name, reason)
        for name in os.listdir(self.folder):
            stem, _, suffix = name.partition(".")
            orphan = (suffix == "done" and stem not in self._live and f"{stem}.seg" not in self.unreadable) or (
                suffix == "json" and stem not in self._entries and stem not in self._waiting_states
            )
            if orphan and valid_id(stem) and (self.folder / name).is_file():
                (self.folder / name).unlink(missing_ok=True)
        for segment, live in list(self._live.items()):
            if not live:  # every message finished, the segment's removal was cut short
                self._retire_segment(segment)

    def load(self) -> None:
        """Read every unfinished entry from the folder (blocking); the command line uses it without the lock.

        Only records that verify are loaded; what does not is noted in ``damaged``.
        """
        self._entries, self._live, self.damaged = {}, {}, {}
        self.unreadable, self.bad_states, self.lost, self._waiting_states = {}, {}, {}, set()
        if not self.folder.is_dir():
            return
        names = set(os.listdir(self.folder))
        for name in sorted(names):
            if not name.endswith(".seg") or name.startswith("."):
                continue
            segment = name[:-4]
            path = self.folder / name
            if not valid_id(segment):
                log.warning("queue: skipping stray %s: not a segment the queue wrote", path)
                continue
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue  # finished and removed since the listing
            if not stat.S_ISREG(mode):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
                self.unreadable[name] = f"named like a segment but {kind}; left as it is"
                continue
            try:
                scan = records.scan(path)
            except FileNotFoundError:
                continue  # finished and removed since the listing (another process owns the queue)
            except OSError as exc:
                self.unreadable[name] = f"unreadable ({exc.strerror or exc}); its messages wait until it can be read"
                continue
            if scan.damage:
                self.damaged[segment] = scan
            done = self._done_ids(segment) if f"{segment}.done" in names else set()
            live = self._live.setdefault(segment, set())
            for entry in scan.entries:
                if entry.id in done or entry.id in self._entries:
                    continue  # finished, or already read from the segment that replaced a damaged one
                entry.segment = segment
                if f"{entry.id}.json" in names:
                    entry = self._with_state(entry)
                self._entries[entry.id] = entry
                live.add(entry.id)
        for name in sorted(names):
            stem, _, suffix = name.partition(".")
            if suffix == "json" and valid_id(stem) and stem not in self._entries and (self.folder / name).is_file():
                self._orphan_state(stem, names)

    def _orphan_state(self, msg_id: str, names: set[str]) -> None:
        """A state file whose message was not loaded: left over by a finished message (stale), or
        the last word on a message lost in damage, which is then named in ``lost``."""
        try:
            state, _ = records.read_state((self.folder / f"{msg_id}.json").read_bytes())
        except FileNotFoundError:
            return  # removed since the listing
        except OSError as exc:
            self.bad_states[msg_id] = f"state file of message {msg_id} unreadable ({exc.strerror or exc})"
            return
        except records.DamagedRecord as exc:
            self.bad_states[msg_id] = f"state file of message {msg_id} damaged ({exc.args[0]}); no queued record of it"
            return
        segment = str(state.segment)
        if f"{segment}.seg" in self.unreadable:
            self._waiting_states.add(msg_id)  # kept for when its segment can be read again
            return
        finished = f"{segment}.seg" not in names or msg_id in self._done_ids(segment)
        if segment in self.damaged or not finished:
            states = ", ".join(f"<{r}> {s.status}" for r, s in state.recipients.items())
            self.lost[msg_id] = (
                f"message {msg_id} not delivered: its record in segment {segment} is damaged or gone; "
                f"its last state says: {records.known(state)}, {state.attempts} attempt(s); {states}"
            )

    def _done_ids(self, segment: str) -> set[str]:
        try:
            return set((self.folder / f"{segment}.done").read_text().split())
        except FileNotFoundError:
            return set()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            self.unreadable[f"{segment}.done"] = f"unreadable ({reason}); its finished messages may go out once more"
            return set()

    def _set_aside(self, segment: str) -> None:
        """Copy the intact messages of a damaged segment into a new one, then move the damaged one to corrupt/.

        Durable in that order: a crash in between leaves both, and the next load reads each
        message once (the first segment read wins); nothing is ever deleted.
        """
        scan = self.damaged[segment]
        path = self.folder / f"{segment}.seg"
        live = [self._entries[i] for i in sorted(self._live.get(segment, ())) if self._entries[i].segment == segment]
        for damage in scan.damage:
            log.error("queue: segment %s is damaged, %s", segment, damage.describe())
        if live:
            raw = path.read_bytes()
            batch = []
            for entry in live:
                data = raw[entry.offset : entry.offset + entry.size]
                original = Entry.from_json(entry.to_json())
                batch.append((original, data))
            self._commit(batch)
            replacement = batch[0][0].segment
            self._live.pop(segment, None)
            for original, _ in batch:
                entry = self._entries[original.id]
                entry.segment, entry.offset = replacement, original.offset
                self._live.setdefault(replacement, set()).add(entry.id)
        kept = self._move_to_corrupt(path, f"{segment}.seg", [d.describe() for d in scan.damage])
        (self.folder / f"{segment}.done").unlink(missing_ok=True)
        self._live.pop(segment, None)
        log.error(
            "queue: %d intact message(s) of segment %s recovered; its bytes are kept in %s",
            len(live),
            segment,
            kept,
        )
        del self.damaged[segment]

    def _move_to_corrupt(self, path: Path, name: str, reasons: list[str]) -> Path:
        """Move ``path`` into corrupt/ (never over an earlier one), with a note of what was wrong."""
        corrupt = self.folder / "corrupt"
        corrupt.mkdir(exist_ok=True)
        target = corrupt / name
        while target.exists():
            target = corrupt / f"{target.stem}-{os.urandom(2).hex()}{target.suffix}"
        os.rename(path, target)
        note = f"set aside {time.strftime('%Y-%m-%d %H:%M:%S %z')} from {path}\n" + "".join(f"{r}\n" for r in reasons)
        write_atomic(target.with_suffix(target.suffix + ".txt"), note.encode(), sync=self.fsync)
        if self.fsync:
            fsync_dir(corrupt)
            self._fsync_folder()
        return target

    def corrupt(self) -> list[tuple[Path, str]]:
        """What is set aside in corrupt/ and what load() found damaged in place: (file, reasons)."""
        out: list[tuple[Path, str]] = []
        for segment, scan in sorted(self.damaged.items()):
            out.append((self.folder / f"{segment}.seg", "; ".join(d.describe() for d in scan.damage)))
        for name, reason in sorted(self.unreadable.items()):
            out.append((self.folder / name, reason))
        for msg_id, reason in sorted({**self.bad_states, **self.lost}.items()):
            out.append((self.folder / f"{msg_id}.json", reason))
        corrupt = self.folder / "corrupt"
        if corrupt.is_dir():
            for path in sorted(corrupt.iterdir()):
                if path.suffix == ".txt":
                    continue
                try:
                    note = path.with_suffix(path.suffix + ".txt").read_text(errors="replace").strip()
                except OSError:
                    note = ""
                out.append((path, "; ".join(note.splitlines()[1:]) or "(no note)"))
        return out

    def _with_state(self, entry: Entry) -> Entry:
        """``entry`` with the metadata its delivery attempts saved, when that verifies and agrees with
        the verified record; else ``entry`` as queued (its recipients all tried again: at least once)."""
        try:
            state, _ = records.read_state((self.folder / f"{entry.id}.json").read_bytes())
        except FileNotFoundError:
            return entry
        except OSError as exc:
            reason = f"unreadable ({exc.strerror or exc})"
        except records.DamagedRecord as exc:
            reason = str(exc.args[0])
        else:
            wrong = _disagreement(state, entry)
            if not wrong:
                state.segment, state.offset, state.size, state.crc = entry.segment, entry.offset, entry.size, entry.crc
                return state
            reason = f"it disagrees with the message's verified record ({wrong})"
        self.bad_states[entry.id] = (
            f"state file of message {entry.id} damaged: {reason}; "
            "delivery started over from the verified record (recipients already served may get it twice)"
        )
        log.error("queue: %s", self.bad_states[entry.id])
        return entry

    # -- writing ------------------------------------------------------------

    async def put(
        self,
        data: bytes,
        envelope: Envelope,
        *,
        route: Sequence[str] | None = None,
        origin: str = "agent",
        route_key: str | None = None,
        dkim: bool = False,
    ) -> str:
        """Queue ``data`` for ``envelope``; return its id once it is durable.

        ``route_key`` names the config key whose route it follows at each attempt ("mail.route",
        "relay.route"); None: worked out from ``route`` and ``origin`` (``entry.route_key_for``).
        It is DKIM-signed (when the queue has a signer) if ``origin`` is one of ``sign_origins``
        (the agent's own mail) or the caller asks with ``dkim`` (the relay, by its ``[relay] dkim``).

        Raises QueueWriteError when it cannot be made durable; then nothing of it remains.
        """
        if self._wakeup is None:
            raise RuntimeError("Queue.start() was not called")
        if not envelope.recipients:
            raise ValueError("a message needs at least one recipient")
        for address in (envelope.sender, *envelope.recipients):
            if "\r" in address or "\n" in address:
                raise ValueError(f"CR or LF in envelope address {address!r}")
        if self.sign is not None and (dkim or origin in self.sign_origins):
            data = await asyncio.to_thread(self.sign, bytes(data))
        now = self.clock()
        entry = Entry(
            id=new_id(),
            created=now,
            sender=envelope.sender,
            recipients={r: RecipientState() for r in dict.fromkeys(envelope.recipients)},
            route=list(route) if route else None,
            route_key=route_key_for(route, origin, self.routes) if route_key is None else route_key,
            origin=origin,
            size=len(data),
            next_try=now,
        )
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((entry, bytes(data), done))
        self._wakeup.set()
        # A caller that gives up waiting cancels only ``done``: the round still commits and registers the entry.
        await done
        return entry.id

    async def _commit_loop(self) -> None:
        """Commit whatever is pending; puts that arrive during a round form the next one."""
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch, self._pending = self._pending[:BATCH_MAX], self._pending[BATCH_MAX:]
                self._committing = True
                error: QueueWriteError | None = None
                try:
                    await asyncio.to_thread(self._commit, [(e, d) for e, d, _ in batch])
                except OSError as exc:
                    error = QueueWriteError(exc.errno or errno.EIO, f"cannot queue message: {exc.strerror or exc}")
                except Exception as exc:
                    error = QueueWriteError(errno.EIO, f"cannot queue message: {exc}")
                self.stats.commits += 1
                self._committing = False
                for entry, data, done in batch:
                    if error is None:
                        # Registered here, not in put(): a cancelled caller's message is still delivered.
                        if not self._writer_only:
                            self._entries[entry.id] = entry
                            self._live.setdefault(entry.segment, set()).add(entry.id)
                            self._keep_fresh(entry.id, data)
                        self.stats.puts += 1
                        for listener in self._listeners:
                            listener(entry)
                    if done.done():
                        continue
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)

    def _keep_fresh(self, msg_id: str, data: bytes) -> None:
        fresh = self._fresh
        fresh[msg_id] = data
        self._fresh_bytes += len(data)
        while self._fresh_bytes > FRESH_MAX and fresh:
            self._fresh_bytes -= len(fresh.pop(next(iter(fresh))))

    def _drop_fresh(self, msg_id: str) -> bytes | None:
        data = self._fresh.pop(msg_id, None)
        if data is not None:
            self._fresh_bytes -= len(data)
        return data

    def _commit(self, batch: list[tuple[Entry, bytes]]) -> None:
        """Write one segment for the round, fsync it, rename it, fsync the folder (blocking)."""
        segment = new_id()
        parts: list[bytes] = []
        position = 0
        for entry, data in batch:
            entry.segment = ""
            record, data_start = records.encode(entry, data)
            entry.segment, entry.offset = segment, position + data_start
            parts.append(record)
            position += len(record)
        path = self.folder / f"{segment}.seg"
        self._write_file(path, b"".join(parts))
        if self.fsync:
            try:
                self._fsync_folder()
            except OSError:
                path.unlink(missing_ok=True)
                raise

    def _write_file(self, path: Path, content: bytes) -> None:
        """Temp file (dot-named, so recovery drops it), fsync, rename; the folder is not fsynced here."""
        write_atomic(path, content, sync=self.fsync, sync_folder=False, fsynced=self.stats.fsynced)

    def _fsync_folder(self) -> None:
        fsync_dir(self.folder)
        self.stats.fsynced()

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
        """The message bytes of a queued entry, verified (blocking); QueueCorrupt when they do not match."""
        entry = self._entries.get(msg_id)
        if entry is None:
            raise FileNotFoundError(f"no message {msg_id} in {self.folder}")
        with open(self.folder / f"{entry.segment}.seg", "rb") as fh:
            fh.seek(entry.offset)
            data = fh.read(entry.size)
        if not records.data_ok(entry, data):
            raise QueueCorrupt(f"message {msg_id} in segment {entry.segment} is damaged (length or checksum)")
        return data

    async def quarantine(self, msg_id: str, reason: str) -> Path | None:
        """Take a message that failed verification out of the queue; its bytes go to corrupt/ first."""
        entry = self._entries.get(msg_id)
        if entry is None:
            return None

        def copy() -> Path:
            with open(self.folder / f"{entry.segment}.seg", "rb") as fh:
                fh.seek(entry.offset)
                data = fh.read(entry.size)
            corrupt = self.folder / "corrupt"
            corrupt.mkdir(exist_ok=True)
            target = corrupt / f"{msg_id}.msg"
            write_atomic(target, data, sync=self.fsync)
            note = f"set aside {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n{reason}\nmetadata: {entry.to_json().decode()}\n"
            write_atomic(corrupt / f"{msg_id}.msg.txt", note.encode(), sync=self.fsync)
            return target

        target = await asyncio.to_thread(copy)
        log.error("queue: message %s is damaged (%s); not delivered, its bytes are kept in %s", msg_id, reason, target)
        await self.remove(msg_id)
        return target

    async def read(self, msg_id: str) -> bytes:
        """The message bytes: those just committed on their first read, else read back verified (QueueCorrupt)."""
        data = self._drop_fresh(msg_id)
        if data is not None and msg_id in self._entries:
            return data
        return await asyncio.to_thread(self.read_message, msg_id)

    async def update(self, entry: Entry) -> None:
        """Make ``entry``'s metadata durable: delivered recipients are never sent to again."""
        await asyncio.to_thread(self.write_state, entry)

    def write_state(self, entry: Entry) -> None:
        if entry.id not in self._entries:
            return  # finished or deleted meanwhile: do not resurrect its state
        try:
            self._write_file(self.folder / f"{entry.id}.json", records.encode_state(entry))
            if self.fsync:
                self._fsync_folder()
        except OSError as exc:
            raise QueueWriteError(exc.errno or errno.EIO, f"cannot update {entry.id}: {exc.strerror or exc}") from exc
        self._entries[entry.id] = entry

    async def remove(self, msg_id: str) -> None:
        """Finish a message: it is neither delivered again nor shown any more."""
        entry = self._entries.pop(msg_id, None)
        if entry is None:
            return
        self._drop_fresh(msg_id)
        live = self._live.get(entry.segment, set())
        live.discard(msg_id)
        last = not live
        if last:
            self._segment_ends(entry.segment)
        self._retiring.append((msg_id, entry.segment, last))
        if self._retired is None:
            self._retired = asyncio.get_running_loop().create_future()
        retired = self._retired
        if self._retirer is None or self._retirer.done():
            self._retirer = asyncio.create_task(self._retire_loop(), name="queue-retire")
        # Shielded: a caller that gives up waiting does not undo the mark under way.
        await asyncio.shield(retired)

    async def _retire_loop(self) -> None:
        """Mark what is finished, a batch per thread hop; removals that arrive meanwhile form the next batch."""
        while self._retiring:
            batch, self._retiring = self._retiring, []
            retired, self._retired = self._retired, None
            try:
                await asyncio.to_thread(self._retire_batch, batch)
            except OSError as exc:
                # Not marked: the message goes out once more after a restart (at-least-once), never less.
                log.warning("queue: cannot mark %d finished message(s): %s", len(batch), exc)
            finally:
                if retired is not None and not retired.done():
                    retired.set_result(None)

    def _retire_batch(self, batch: list[tuple[str, str, bool]]) -> None:
        """Mark finished messages: a segment whose last message finished goes; others get ``.done`` lines (blocking)."""
        ended = {segment for _, segment, last in batch if last}
        lines: dict[str, list[str]] = {}
        for msg_id, segment, _ in batch:
            if segment not in ended:
                lines.setdefault(segment, []).append(msg_id)
        folder = f"{self.folder}{os.sep}"  # plain strings: a Path per file costs more than its unlink here
        for segment in ended:
            for suffix in (".seg", ".done"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{folder}{segment}{suffix}")
        for segment, ids in lines.items():
            self._mark_done(segment, ids)
        # The mark comes first: a crash between leaves a stale state file, never a live message without its state.
        for msg_id, _, _ in batch:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{folder}{msg_id}.json")

    def _retire(self, msg_id: str, segment: str, last: bool) -> None:
        # No fsync: if a crash undoes this the message is delivered again (at-least-once).
        if last:
            self._segment_ends(segment)
            self._retire_segment(segment)
        else:
            self._mark_done(segment, [msg_id])
        (self.folder / f"{msg_id}.json").unlink(missing_ok=True)

    def _mark_done(self, segment: str, ids: list[str]) -> None:
        fd = os.open(f"{self.folder}{os.sep}{segment}.done", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            os.write(fd, "".join(f"{i}\n" for i in ids).encode())
        finally:
            os.close(fd)

    def _segment_ends(self, segment: str) -> None:
        """``segment`` has no live message left; it is about to be deleted."""
        if self._shared:  # before it leaves _live: adopt_new() must never see it unknown while its file remains
            self._ended.add(segment)
        self._live.pop(segment, None)

    def _retire_segment(self, segment: str) -> None:
        if self._shared:
            self._ended.add(segment)
        (self.folder / f"{segment}.seg").unlink(missing_ok=True)
        (self.folder / f"{segment}.done").unlink(missing_ok=True)

    # -- segments written by other processes (alertmail.intake.Intake: a service's receiving processes) --

    def shared_writer(self) -> SharedWriter:
        """What another process needs to add messages to this queue (picklable)."""
        self._shared = True
        return SharedWriter(self.folder, self.fsync, self.sign, tuple(self.sign_origins))

    def adopt(self, segment: str) -> int:
        """Take in a segment another process committed to the folder; the number of messages it adds.

        A segment already known, retired, or not (or no longer) in the folder adds nothing.
        """
        if not valid_id(segment) or segment in self._live or segment in self._ended:
            return 0
        path = self.folder / f"{segment}.seg"
        try:
            # The scan verifies every message: their bytes are kept for delivery, which then
            # needs no thread hop, no second read and no second checksum per message.
            scan = records.scan(path, with_data=True)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            log.warning("queue: cannot read new segment %s yet: %s", path, exc)
            return 0
        live = self._live.setdefault(segment, set())
        added = []
        for entry in scan.entries:
            if entry.id in self._entries:
                continue
            entry.segment = segment
            self._entries[entry.id] = entry
            live.add(entry.id)
            added.append(entry)
            self._keep_fresh(entry.id, scan.data[entry.id])
        if scan.damage:
            self.damaged[segment] = scan
            self._set_aside(segment)
        for entry in added:
            self.stats.puts += 1
            for listener in self._listeners:
                listener(self._entries.get(entry.id, entry))
        return len(added)

    def adopt_new(self) -> int:
        """Adopt every segment in the folder the queue does not know yet (blocking, a folder listing)."""
        names = {name[:-4] for name in os.listdir(self.folder) if name.endswith(".seg") and not name.startswith(".")}
        self._ended &= names
        return sum(self.adopt(segment) for segment in sorted(names - self._live.keys() - self._ended))

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
        out: list[tuple[str, str]] = []
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
        """Carry out a ``retry`` or ``delete`` on the loaded entries; return the ids it touched (blocking)."""
        now = time.time() if now is None else now
        targets = list(self._entries) if msg_id == "all" else [msg_id] if msg_id in self._entries else []
        for target in targets:
            entry = self._entries[target]
            if action == "delete":
                del self._entries[target]
                self._drop_fresh(target)
                live = self._live.get(entry.segment, set())
                live.discard(target)
                self._retire(target, entry.segment, not live)
            else:
                entry.next_try = now
                self.write_state(entry)
        return targets


def _disagreement(state: Entry, record: Entry) -> str:
    """What a state file says that its message's verified record does not ("": they agree).

    The envelope, route and origin are fixed when a message is queued; a state file may
    change only how each recipient stands.
    """
    for name in ("id", "sender", "created", "origin", "route", "route_key"):
        if getattr(state, name) != getattr(record, name):
            return name
    if list(state.recipients) != list(record.recipients):
        return "recipients"
    return ""


@dataclass(frozen=True)
class SharedWriter:
    """Commits messages to a queue folder another process owns (``Queue.shared_writer()``).

    Durable as ``Queue.put()`` (group commit, the same segments); it keeps no entries. After
    each round ``on_segment(name)`` is called, before the puts of the round return, so the
    owner can be told to ``adopt()`` it.
    """

    folder: Path
    fsync: bool = True
    sign: Callable[[bytes], bytes] | None = None
    sign_origins: tuple[str, ...] = ("agent",)

    def open(self, on_segment: Callable[[str], None]) -> Queue:
        """A queue whose ``put()`` and ``close()`` work (the commit loop runs on the current event loop)."""
        queue = Queue(self.folder, fsync=self.fsync, sign=self.sign, sign_origins=self.sign_origins)
        queue._writer_only = True
        told: list[str] = []

        def committed(entry: Entry) -> None:
            if not told or told[-1] != entry.segment:
                told[:] = [entry.segment]
                on_segment(entry.segment)

        queue.add_listener(committed)
        queue._wakeup = asyncio.Event()
        queue._committer = asyncio.create_task(queue._commit_loop(), name="queue-commit")
        return queue
