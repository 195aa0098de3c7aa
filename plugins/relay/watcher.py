"""The pickup folder: files dropped into ``state_dir/pickup`` are taken into the queue.

A file is read, queued (durable), and only then removed; a crash in between sends it
twice rather than never. The envelope comes from leading ``X-Sender:`` /
``X-Receiver:`` lines when there are any (as IIS reads them), otherwise from the
headers: the sender from ``Sender:`` or ``From:``, the recipients from ``To:``, ``Cc:``
and ``Bcc:``; the ``Bcc:`` header itself is removed. A file that is not a message
goes to ``badmail/`` with the reason.

Files still being written: names starting with a dot or ending in ``.tmp`` are never
taken (writers write such a name, then rename it into place, as alertmail's own
pickup transport does). For writers that write in place, a file is taken only once
its size and modification time have stayed the same for one scan interval, or it was
last modified at least one interval ago.

What is taken, and how (the folder may be writable by others than the relay's user):
only regular files with a single link, opened with ``O_NOFOLLOW`` and checked with
``fstat`` on the open file before anything is read. A symbolic link, a FIFO, a folder,
a socket or a hard link (which could point at ``/etc/shadow``) is left in place and
reported once with the reason. A file over ``max_size`` is never read into memory. A
refused file (too large, more recipients than ``max_recipients``, not a message) is
renamed into ``badmail/`` with the reason, never copied: a sparse 2 GB file costs badmail
no disk; where it cannot be renamed (another filesystem) only a bounded excerpt is kept.
File names reach the log with control characters escaped.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from alertmail import AlertmailError, Envelope
from alertmail.intake import Badmail, Intake, QueueWriteError, split_envelope

log = logging.getLogger("alertmail.relay.pickup")

# Files taken into the queue at once: concurrent puts share one commit round.
BATCH = 64
_HEADER_NAME = re.compile(rb"^[!-9;-~]+[ \t]*:")
_ADDRESS = re.compile(
    r"^[^\s<>()\[\],;:\\\"@]+(?:\.[^\s<>()\[\],;:\\\"@]+)*@[A-Za-z0-9.\-\[\]:]+$|^\"[^\"\r\n]*\"@[A-Za-z0-9.\-]+$"
)
_LINE_END = re.compile(rb"\r?\n")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Pieces in which a file is read.
COPY_CHUNK = 1 << 20


def shown(name: str) -> str:
    """A file name for the log: control characters as ``\\xNN`` (a newline cannot start a forged line)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)


def refusal(st: os.stat_result) -> str | None:
    """Why a pickup entry is never taken (left in place), or None for a regular file with one link."""
    mode = st.st_mode
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device)"
    if st.st_nlink > 1:
        return f"a hard link ({st.st_nlink} names for one file; it may be another user's file)"
    return None


class PickupError(AlertmailError, ValueError):
    """The file is not a message alertmail can send; the text says why."""


def parse_pickup(data: bytes) -> tuple[Envelope, bytes]:
    """The envelope and the message (CRLF line ends, no Bcc header) of a pickup file."""
    envelope, message = split_envelope(data)
    message = _LINE_END.sub(b"\r\n", message)
    if not message.strip():
        raise PickupError("the file is empty")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    end = message.find(b"\r\n\r\n")
    head, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    fields = _header_fields(head)
    if envelope is None:
        envelope = _envelope_from_headers(b"".join(fields))
    for address in (envelope.sender, *envelope.recipients):
        if address and not _ADDRESS.match(address):
            raise PickupError(f"not a mail address: {address!r}")
    kept = [f for f in fields if f.split(b":", 1)[0].strip().lower() != b"bcc"]
    return envelope, b"".join(kept) + body


def _header_fields(head: bytes) -> list[bytes]:
    """The header section as whole fields (folded lines joined), each ending in CRLF."""
    fields: list[bytes] = []
    for number, line in enumerate(head.split(b"\r\n")[:-1], 1):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        elif _HEADER_NAME.match(line):
            fields.append(line + b"\r\n")
        else:
            shown = line[:40].decode("ascii", "backslashreplace")
            raise PickupError(f'header line {number} is not "Name: value": {shown!r}')
    return fields


def _envelope_from_headers(head: bytes) -> Envelope:
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head + b"\r\n")
    try:
        recipients = [a.addr_spec for name in ("To", "Cc", "Bcc") for h in headers.get_all(name, []) for a in h.addresses]
        senders = headers.get_all("Sender", []) or headers.get_all("From", [])
        sender = next((a.addr_spec for h in senders for a in h.addresses), "")
    except (TypeError, ValueError, AttributeError) as exc:
        raise PickupError(f"cannot read the address headers: {exc}") from None
    recipients = list(dict.fromkeys(r for r in recipients if r))
    if not recipients:
        raise PickupError("no recipients: no X-Receiver line and no To, Cc or Bcc header")
    return Envelope(sender, tuple(recipients))


@dataclass
class PickupWatcher:
    """Scans the folder every ``interval`` seconds and queues what is ready."""

    folder: Path
    queue: Intake
    badmail: Badmail
    hostname: str
    interval: float = 1.0
    max_size: int = 10_000_000
    route: list[str] | None = None
    max_recipients: int = 100
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)
    # entries left in place, by name, with what they were when reported (reported once each)
    _reported: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.folder.mkdir, parents=True, exist_ok=True)
        self._task = asyncio.create_task(self._run(), name="relay-pickup")

    async def stop(self) -> None:
        """Stop scanning; a file being queued is finished first (it is short)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken scan must not end the watcher
                log.exception("pickup: scanning %s failed", self.folder)
            await asyncio.sleep(self.interval)

    async def scan(self) -> int:
        """Queue every ready file once; return how many were taken."""
        ready = await asyncio.to_thread(self._ready, time.time_ns())
        taken = 0
        for start in range(0, len(ready), BATCH):
            # shield: a stop during a batch lets its files finish, so none is queued twice
            results = await asyncio.shield(asyncio.gather(*(self.take(p) for p in ready[start : start + BATCH])))
            taken += sum(results)
        return taken

    def _ready(self, now_ns: int) -> list[Path]:
        """Files that are complete: stable since the last scan or old enough (blocking)."""
        seen: dict[str, tuple[int, int]] = {}
        ready = []
        settle_ns = int(self.interval * 1e9)
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        reported: dict[str, tuple[int, int, str]] = {}
        for item in entries:
            if item.name.startswith(".") or item.name.endswith(".tmp"):
                continue
            try:
                stat_ = item.stat(follow_symlinks=False)
            except OSError:
                continue
            reason = refusal(stat_)
            if reason is not None:
                key3 = (stat_.st_dev, stat_.st_ino, reason)
                if self._reported.get(item.name) != key3:
                    log.warning("pickup: %s is left in place, never taken: it is %s", shown(item.name), reason)
                reported[item.name] = key3
                continue
            key = (stat_.st_size, stat_.st_mtime_ns)
            if self._seen.get(item.name) == key or now_ns - stat_.st_mtime_ns >= settle_ns:
                ready.append(Path(item.path))
            else:
                seen[item.name] = key
        self._reported = reported
        self._seen = seen
        return sorted(ready)

    async def take(self, path: Path) -> bool:
        """Queue one file, then remove it; a bad one goes to badmail. True when it left pickup."""
        try:
            opened = await asyncio.to_thread(self._open, path)
        except FileNotFoundError:
            return False  # taken by someone else meanwhile
        except OSError as exc:
            log.error("pickup: cannot read %s: %s", shown(path.name), exc.strerror or exc)
            return False
        if opened is None:
            return False  # not a regular file with one link: reported by the scan, left in place
        fd, st = opened
        try:
            if st.st_size > self.max_size:
                reason = f"larger than max_size ({st.st_size} > {self.max_size} bytes)"
                return await asyncio.to_thread(self._refuse, path, fd, st, reason)
            data = await asyncio.to_thread(_read_up_to, fd, self.max_size + 1)
            try:
                if len(data) > self.max_size:  # grew since fstat
                    raise PickupError(f"larger than max_size (over {self.max_size} bytes)")
                envelope, message = parse_pickup(data)
                if len(envelope.recipients) > self.max_recipients:
                    raise PickupError(f"too many recipients ({len(envelope.recipients)} > max_recipients {self.max_recipients})")
            except PickupError as exc:
                return await asyncio.to_thread(self._refuse, path, fd, st, str(exc))
        finally:
            os.close(fd)
        trace = (
            f"Received: by {self.hostname} (alertmail pickup) id {secrets.token_hex(6)}; {format_datetime(datetime.now(UTC))}\r\n"
        )
        try:
            msg_id = await self.queue.put(trace.encode() + message, envelope, route=self.route, origin="pickup")
        except QueueWriteError as exc:
            log.error("pickup: cannot queue %s, left in place: %s", shown(path.name), exc)
            return False
        await asyncio.to_thread(_unlink_same, path, st)
        log.info("pickup: %s queued as %s", shown(path.name), msg_id)
        return True

    def _open(self, path: Path) -> tuple[int, os.stat_result] | None:
        """The file opened for reading, with its fstat; None (closed) when it is not to be taken (blocking).

        O_NOFOLLOW refuses a symlink put in place since the scan; O_NONBLOCK keeps a FIFO
        from blocking the open; fstat describes the very file that will be read.
        """
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
        try:
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            raise
        if refusal(st) is not None:
            os.close(fd)
            return None
        return fd, st

    def _refuse(self, path: Path, fd: int, st: os.stat_result, reason: str) -> bool:
        """Move a file that is not a message into badmail with the reason, renamed, never copied (blocking)."""
        text = f"pickup file {shown(path.name)!r} is not a message alertmail can send: {reason}"
        try:
            msg_id, fate = self.badmail.take_file(path, fd, st, reason=text, origin="pickup")
        except FileNotFoundError:
            return False  # gone or replaced meanwhile: the next scan sees what stands there now
        except OSError as exc:
            log.error("pickup: cannot move %s to badmail, left in place: %s", shown(path.name), exc.strerror or exc)
            return False
        log.warning("pickup: %s refused, in badmail as %s: %s; %s", shown(path.name), msg_id, reason, fate)
        return True


def _read_up_to(fd: int, limit: int) -> bytes:
    parts, size = [], 0
    while size < limit and (chunk := os.read(fd, min(COPY_CHUNK, limit - size))):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)


def _unlink_same(path: Path, st: os.stat_result) -> None:
    """Remove ``path`` when it is still the file that was read (not one renamed into its place)."""
    try:
        now = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        path.unlink(missing_ok=True)
