"""The relay's W3C extended log: ``state_dir/logs/relayYYYYMMDD.log``, one file per UTC day.

Each file opens with the directives IIS writes (``#Software``, ``#Version``, ``#Date``,
``#Fields``); they are written again whenever the log is reopened, as the format allows.
Values never contain a space (it becomes ``+``) nor a control character (``%XX``), so
one line is always one record and untrusted input cannot forge a second one.

The log never changes what the relay answers or delivers: when it cannot be written
(disk full, folder read-only) its lines go to stderr instead, a warning says so at most
once a minute, and the file is tried again at each flush until it can be written.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger("alertmail.relay")

FIELDS = (
    "date",
    "time",
    "c-ip",
    "cs-username",
    "s-ip",
    "s-port",
    "cs-method",
    "cs-uri-query",
    "sc-status",
    "sc-bytes",
    "cs-bytes",
    "time-taken",
)
# Lines are buffered in memory and written at most this often (and at close).
FLUSH_INTERVAL = 1.0
# While the log cannot be written, a warning at most this often (seconds).
WARN_INTERVAL = 60.0
_ESCAPES = {c: f"%{c:02X}" for c in range(0x21)} | {0x20: "+", 0x7F: "%7F", ord("%"): "%25"}


def w3c_value(value: object) -> str:
    """One field value: ``-`` when empty, spaces as ``+``, control characters as ``%XX``."""
    text = value if type(value) is str else "" if value is None else str(value)
    if not text:
        return "-"
    # Most values (addresses, verbs, IPs) hold nothing to escape: printable, no space, no "%".
    if text.isprintable() and " " not in text and "%" not in text:
        return text
    return text.translate(_ESCAPES)


class W3CLog:
    """Appends records to the day's file; rolls over at UTC midnight.

    Writes go to an in-memory buffer and reach the file once a second or when the
    buffer grows, so a busy relay does one small write() per second instead of one
    per command. The log is a record of activity, not a durability promise: no method
    raises; what cannot reach the file goes to stderr.
    """

    def __init__(self, folder: Path, software: str, *, prefix: str = "relay") -> None:
        self.folder = Path(folder)
        self.software = software
        self.prefix = prefix
        self._day = ""
        self._second = -1  # the date and time fields are formatted once per second
        self._stamp = ""
        self._fd: int | None = None
        self._pending: list[str] = []
        self._last_flush = time.monotonic()
        self._failing = False  # the last write failed; lines go to stderr
        self._last_warning = -WARN_INTERVAL
        self._lost = 0  # lines sent to stderr since the last warning

    def path_for(self, day: str) -> Path:
        return self.folder / f"{self.prefix}{day}.log"

    def record(
        self,
        *,
        client_ip: str,
        username: str | None,
        server_ip: str,
        server_port: int,
        method: str,
        query: str,
        status: int,
        sent: int,
        received: int,
        taken_ms: int,
        now: float | None = None,
    ) -> None:
        """Add one line; the values are escaped here, whatever they contain. Never raises."""
        try:
            second = int(time.time() if now is None else now)
            if second != self._second:
                stamp = time.gmtime(second)
                day = time.strftime("%Y%m%d", stamp)
                if day != self._day:
                    self._roll(day, stamp)
                self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", stamp)
            # Numbers need no escaping; only the strings go through w3c_value.
            self._pending.append(
                f"{self._stamp} {w3c_value(client_ip)} {w3c_value(username)} {w3c_value(server_ip)} {server_port} "
                f"{w3c_value(method)} {w3c_value(query)} {status} {sent} {received} {taken_ms}\n"
            )
            if len(self._pending) >= 512 or time.monotonic() - self._last_flush >= FLUSH_INTERVAL:
                self.flush()
        except Exception:  # the log must never change a reply
            log.exception("relay: a W3C log record failed")

    def _roll(self, day: str, stamp: time.struct_time) -> None:
        self.flush()
        self._close_file()
        self._day = day
        self._pending[:0] = self._directives(stamp)

    def _directives(self, stamp: time.struct_time) -> list[str]:
        return [
            f"#Software: {self.software}\n",
            "#Version: 1.0\n",
            f"#Date: {time.strftime('%Y-%m-%d %H:%M:%S', stamp)}\n",
            f"#Fields: {' '.join(FIELDS)}\n",
        ]

    def _open(self) -> int:
        """The day's file, opened (again) for appending; a line cut by a failed write is ended."""
        if self._fd is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path_for(self._day), os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    _write_all(fd, b"\n")
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
        return self._fd

    def flush(self) -> None:
        """Write what is pending to the file, or to stderr when the file cannot be written. Never raises."""
        self._last_flush = time.monotonic()
        if not self._pending or not self._day:
            return
        lines, self._pending = self._pending, []
        data = "".join(lines).encode("ascii", "backslashreplace")
        try:
            if self._failing:
                # Written again after a failure: the directives first, as on any reopening.
                data = "".join(self._directives(time.gmtime())).encode() + data
            _write_all(self._open(), data)
        except OSError as exc:
            self._close_file()
            self._degrade(data, lines, exc)
            return
        if self._failing:
            self._failing = False
            log.warning("relay: the W3C log %s is written again (%d lines went to stderr)", self.path_for(self._day), self._lost)
            self._lost = 0
            self._last_warning = -WARN_INTERVAL

    def _degrade(self, data: bytes, lines: list[str], exc: OSError) -> None:
        """Lines that could not be written go to stderr; a warning at most once per WARN_INTERVAL."""
        self._failing = True
        self._lost += len(lines)
        try:
            sys.stderr.write("".join(f"w3c: {line}" for line in lines if not line.startswith("#")))
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL:
            self._last_warning = now
            log.warning(
                "relay: cannot write the W3C log %s: %s; its lines go to stderr (%d so far) until it can be written",
                self.path_for(self._day),
                exc.strerror or exc,
                self._lost,
            )

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None

    def close(self) -> None:
        self.flush()
        self._close_file()
        self._day = ""
        self._second = -1


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
