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
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from alertmail import AlertmailError, Badmail, Envelope, QueueWriteError, split_envelope

log = logging.getLogger("alertmail.relay.pickup")

# Files taken into the queue at once: concurrent puts share one commit round.
BATCH = 64
_HEADER_NAME = re.compile(rb"^[!-9;-~]+[ \t]*:")
_ADDRESS = re.compile(
    r"^[^\s<>()\[\],;:\\\"@]+(?:\.[^\s<>()\[\],;:\\\"@]+)*@[A-Za-z0-9.\-\[\]:]+$|^\"[^\"\r\n]*\"@[A-Za-z0-9.\-]+$"
)
_LINE_END = re.compile(rb"\r?\n")


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
    queue: Any  # alertmail.queue.Queue
    badmail: Badmail
    hostname: str
    interval: float = 1.0
    max_size: int = 10_000_000
    route: list[str] | None = None
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)
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
        for item in entries:
            if item.name.startswith(".") or item.name.endswith(".tmp"):
                continue
            try:
                if not item.is_file(follow_symlinks=False):
                    continue
                stat = item.stat(follow_symlinks=False)
            except OSError:
                continue
            key = (stat.st_size, stat.st_mtime_ns)
            if self._seen.get(item.name) == key or now_ns - stat.st_mtime_ns >= settle_ns:
                ready.append(Path(item.path))
            else:
                seen[item.name] = key
        self._seen = seen
        return sorted(ready)

    async def take(self, path: Path) -> bool:
        """Queue one file, then remove it; a bad one goes to badmail. True when it left pickup."""
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return False  # taken by someone else meanwhile
        except OSError as exc:
            log.error("pickup: cannot read %s: %s", path, exc)
            return False
        try:
            if len(data) > self.max_size:
                raise PickupError(f"larger than max_size ({len(data)} > {self.max_size} bytes)")
            envelope, message = parse_pickup(data)
        except PickupError as exc:
            await asyncio.to_thread(self._reject, path, data, str(exc))
            return True
        trace = (
            f"Received: by {self.hostname} (alertmail pickup) id {secrets.token_hex(6)}; {format_datetime(datetime.now(UTC))}\r\n"
        )
        try:
            msg_id = await self.queue.put(trace.encode() + message, envelope, route=self.route, origin="pickup")
        except QueueWriteError as exc:
            log.error("pickup: cannot queue %s, left in place: %s", path.name, exc)
            return False
        await asyncio.to_thread(path.unlink, missing_ok=True)
        log.info("pickup: %s queued as %s", path.name, msg_id)
        return True

    def _reject(self, path: Path, data: bytes, reason: str) -> None:
        """Move a file that is not a message to badmail with the reason (blocking)."""
        text = f"pickup file {path.name!r} is not a message alertmail can send: {reason}"
        msg_id = self.badmail.reject(data, reason=text, origin="pickup")
        path.unlink(missing_ok=True)
        log.warning("pickup: %s moved to badmail as %s: %s", path.name, msg_id, reason)
