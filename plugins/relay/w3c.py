"""The relay's W3C extended log: ``state_dir/logs/relayYYYYMMDD.log``, one file per UTC day.

Each file opens with the directives IIS writes (``#Software``, ``#Version``, ``#Date``,
``#Fields``); they are written again whenever the log is reopened, as the format allows.
Values never contain a space (it becomes ``+``) nor a control character (``%XX``), so
one line is always one record and untrusted input cannot forge a second one.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

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
_ESCAPES = {c: f"%{c:02X}" for c in range(0x21)} | {0x20: "+", 0x7F: "%7F", ord("%"): "%25"}


def w3c_value(value: object) -> str:
    """One field value: ``-`` when empty, spaces as ``+``, control characters as ``%XX``."""
    text = "" if value is None else str(value)
    if not text:
        return "-"
    return text.translate(_ESCAPES)


class W3CLog:
    """Appends records to the day's file; rolls over at UTC midnight.

    Writes go to an in-memory buffer and reach the file once a second or when the
    buffer grows, so a busy relay does one small write() per second instead of one
    per command. The log is a record of activity, not a durability promise.
    """

    def __init__(self, folder: Path, software: str, *, prefix: str = "relay") -> None:
        self.folder = Path(folder)
        self.software = software
        self.prefix = prefix
        self._day = ""
        self._second = -1  # the date and time fields are formatted once per second
        self._stamp = ""
        self._file: io.BufferedWriter | None = None
        self._pending: list[str] = []
        self._last_flush = time.monotonic()

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
        """Add one line; the values are escaped here, whatever they contain."""
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

    def _roll(self, day: str, stamp: time.struct_time) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path_for(day), "ab")  # noqa: SIM115 - kept open across calls
        self._day = day
        self._pending.extend(
            [
                f"#Software: {self.software}\n",
                "#Version: 1.0\n",
                f"#Date: {time.strftime('%Y-%m-%d %H:%M:%S', stamp)}\n",
                f"#Fields: {' '.join(FIELDS)}\n",
            ]
        )

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if self._pending and self._file is not None:
            self._file.write("".join(self._pending).encode("ascii", "backslashreplace"))
            self._file.flush()
        self._pending.clear()

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
            self._day = ""
            self._second = -1
