"""The badmail folder, as IIS kept it: ``<id>.bad`` the message, ``<id>.bdr`` the reason.

``<id>.bad`` starts with ``X-Sender:`` / ``X-Receiver:`` lines (the failed recipients),
then the message as it was queued, so copying it into ``pickup/`` sends it again.

A file refused by the pickup folder is never copied: ``take_file`` renames it into
badmail whole (no byte written, a sparse file stays sparse); only where it cannot be
renamed (another filesystem) is a bounded excerpt (``EXCERPT`` bytes) kept instead,
and the ``.bdr`` says how much of how much.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from alertmail.fsutil import fsync_dir, write_atomic
from alertmail.model import Envelope
from alertmail.queue.entry import Entry, new_id, valid_id
from alertmail.units import format_duration

ENVELOPE_HEADERS = (b"x-sender:", b"x-receiver:")
COPY_PIECE = 1 << 20
# What is kept of a refused file that cannot be renamed into badmail.
EXCERPT = 64 << 10


def stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(when))


def with_envelope(envelope: Envelope, data: bytes) -> bytes:
    """``data`` with X-Sender / X-Receiver lines first (the IIS pickup format)."""
    lines = [f"X-Sender: {envelope.sender}"] + [f"X-Receiver: {r}" for r in envelope.recipients]
    return "\r\n".join(lines).encode("utf-8") + b"\r\n" + data


def split_envelope(data: bytes) -> tuple[Envelope | None, bytes]:
    """The envelope from leading X-Sender / X-Receiver lines, and the message after them."""
    sender: str | None = None
    recipients: list[str] = []
    pos = 0
    while True:
        end = data.find(b"\n", pos)
        if end < 0:
            break
        line = data[pos:end].rstrip(b"\r")
        lower = line.lower()
        if not lower.startswith(ENVELOPE_HEADERS):
            break
        value = line.split(b":", 1)[1].strip().decode("utf-8", "replace").strip("<>")
        if lower.startswith(b"x-sender:"):
            sender = value
        elif value:
            recipients.append(value)
        pos = end + 1
    if not recipients:
        return None, data
    return Envelope(sender or "", tuple(recipients)), data[pos:]


@dataclass(frozen=True)
class BadmailItem:
    """One message in badmail, as ``badmail list`` shows it."""

    id: str
    time: float
    size: int
    reason: str  # the first line of the .bdr
    replies: tuple[str, ...] = ()  # each failed recipient's last reply, as the .bdr lists them


class Badmail:
    """Writes and reads ``state_dir/badmail``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def write(self, entry: Entry, data: bytes, *, reason: str, dsn: str, now: float | None = None) -> Path:
        """Write ``<id>.bad`` (failed recipients only) and ``<id>.bdr``; blocking, atomic each."""
        now = time.time() if now is None else now
        self.folder.mkdir(parents=True, exist_ok=True)
        failed = entry.failed
        write_atomic(self.folder / f"{entry.id}.bad", with_envelope(Envelope(entry.sender, tuple(failed)), data))
        return write_atomic(self.folder / f"{entry.id}.bdr", self.describe(entry, reason=reason, dsn=dsn, now=now).encode())

    def reject(self, data: bytes | BinaryIO, *, reason: str, origin: str, now: float | None = None) -> str:
        """File ``data``, which never became a queued message (no envelope), with ``reason``; its id (blocking).

        ``data`` may be an open binary file: it is copied from where it stands in pieces,
        so a file of any size costs no more memory than one piece.
        """
        now = time.time() if now is None else now
        if isinstance(data, bytes):
            size, pieces = len(data), iter([data])
        else:
            size = os.fstat(data.fileno()).st_size - data.tell()
            pieces = iter(functools.partial(data.read, COPY_PIECE), b"")
        entry = Entry(id=new_id(), created=now, sender="", recipients={}, origin=origin, size=size)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"{entry.id}.bad", itertools.chain([with_envelope(Envelope("", ()), b"")], pieces))
        description = self.describe(entry, reason=reason, dsn="none (no envelope to send one to)", now=now)
        write_atomic(self.folder / f"{entry.id}.bdr", description.encode())
        return entry.id

    def take_file(
        self, path: Path, fd: int, st: os.stat_result, *, reason: str, origin: str, now: float | None = None
    ) -> tuple[str, str]:
        """Move the refused file ``path`` (open as ``fd``, ``st`` its fstat) into badmail with ``reason``
        (blocking); its id, and what became of it ("moved whole" or the excerpt kept).

        Renamed, never copied: badmail costs no disk for it, whatever its size. When it cannot
        be renamed (another filesystem), its first ``EXCERPT`` bytes are kept and it is removed.
        A file found swapped for another after the rename is put back and nothing is filed
        (``FileNotFoundError``): the scan then sees what now stands there.
        """
        now = time.time() if now is None else now
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = Entry(id=new_id(), created=now, sender="", recipients={}, origin=origin, size=st.st_size)
        target = self.folder / f"{entry.id}.bad"
        try:
            os.rename(path, target)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            kept = _read_at(fd, EXCERPT)
            write_atomic(target, with_envelope(Envelope("", ()), kept))
            fate = f"only its first {len(kept)} of {st.st_size} bytes are kept here (it could not be moved: {exc.strerror})"
            _unlink_if_same(path, st)
        else:
            now_there = os.lstat(target)
            if (now_there.st_dev, now_there.st_ino) != (st.st_dev, st.st_ino):
                os.rename(target, path)  # not the file that was read: not ours to file
                raise FileNotFoundError(errno.ENOENT, "replaced while being moved", str(path))
            with contextlib.suppress(OSError):  # another user's file keeps its owner; at least not readable by all
                os.chmod(target, 0o640)
            fate = f"moved here whole ({st.st_size} bytes, renamed, not copied)"
            fsync_dir(self.folder)
            fsync_dir(path.parent)
        description = self.describe(entry, reason=f"{reason}; {fate}", dsn="none (no envelope to send one to)", now=now)
        write_atomic(self.folder / f"{entry.id}.bdr", description.encode())
        return entry.id, fate

    @staticmethod
    def describe(entry: Entry, *, reason: str, dsn: str, now: float) -> str:
        """The human-readable reason: recipients, last replies, attempts, times."""
        lines = [
            f"{reason}",
            "",
            f"Message:   {entry.id} ({entry.size} bytes, from {entry.origin})",
            f"Sender:    <{entry.sender}>",
            f"Queued:    {stamp(entry.created)}",
            f"Attempts:  {entry.attempts}" + (f", the last at {stamp(entry.last_try)}" if entry.last_try else ""),
            f"Given up:  {stamp(now)}, after {format_duration(now - entry.created)}",
            f"Route:     {' -> '.join(entry.route) if entry.route else 'the default route'}",
            f"DSN:       {dsn}",
            "",
            "Recipients:",
        ]
        for rcpt, state in entry.recipients.items():
            detail = state.reply or "no reply"
            where = ", ".join(x for x in (f"via {state.transport}" if state.transport else "", state.remote) if x)
            lines.append(f"  <{rcpt}>  {state.status}: {detail}" + (f" ({where})" if where else ""))
        return "\n".join(lines) + "\n"

    def items(self) -> list[BadmailItem]:
        """Every message in badmail, oldest first."""
        out: list[BadmailItem] = []
        if not self.folder.is_dir():
            return out
        for path in self.folder.glob("*.bad"):
            msg_id = path.stem
            if not valid_id(msg_id):
                continue
            try:
                stat = path.stat()
            except OSError:  # resent or deleted meanwhile
                continue
            try:
                text = (self.folder / f"{msg_id}.bdr").read_text(errors="replace")
            except OSError:
                text = "(no reason file)"
            reason, _, rest = text.partition("\n")
            _, _, listed = rest.partition("\nRecipients:\n")
            replies = tuple(line.strip() for line in listed.splitlines() if line.strip().startswith("<"))
            out.append(BadmailItem(msg_id, stat.st_mtime, stat.st_size, reason, replies))
        return sorted(out, key=lambda i: (i.time, i.id))

    def read(self, msg_id: str) -> tuple[Envelope | None, bytes]:
        """The envelope and message of ``<id>.bad`` (a regular file: a symlink is never followed)."""
        if not valid_id(msg_id):
            raise FileNotFoundError(f"no badmail message {msg_id!r}")
        fd = os.open(self.folder / f"{msg_id}.bad", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            return split_envelope(fh.read())

    def remove(self, msg_id: str) -> None:
        for suffix in (".bad", ".bdr"):
            (self.folder / f"{msg_id}{suffix}").unlink(missing_ok=True)

    async def resend(self, msg_id: str, queue) -> str:  # queue: alertmail.queue.Queue
        """Put ``<id>.bad`` back into ``queue``; remove it from badmail; return the new queue id."""
        import asyncio

        envelope, data = await asyncio.to_thread(self.read, msg_id)
        if envelope is None:
            raise ValueError(f"{msg_id}.bad has no X-Receiver line; add one to say where it goes")
        new_id = await queue.put(data, envelope, origin="resend")
        await asyncio.to_thread(self.remove, msg_id)
        return new_id


def _read_at(fd: int, size: int) -> bytes:
    """Up to ``size`` bytes from the start of the open file ``fd``."""
    parts: list[bytes] = []
    got = 0
    while got < size and (piece := os.pread(fd, min(COPY_PIECE, size - got), got)):
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def _unlink_if_same(path: Path, st: os.stat_result) -> None:
    """Remove ``path`` when it is still the file ``st`` describes."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
        path.unlink(missing_ok=True)
