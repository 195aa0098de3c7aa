"""The service manager's notify protocol (``sd_notify``), spoken without libsystemd.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET``; the agent sends ``READY=1``
once it is up, ``RELOADING=1`` / ``READY=1`` around a reload, ``STOPPING=1``, a one-line
``STATUS=``, and ``WATCHDOG=1`` at half of ``WATCHDOG_USEC`` from its event loop, so
a loop that hangs gets the service restarted. Without ``NOTIFY_SOCKET`` every call is a
no-op. A failure to send is logged once and never stops the agent.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("alertmail.sdnotify")


def _address(value: str) -> str | bytes:
    """A socket path, or an abstract-namespace name (``@name`` in the variable)."""
    return b"\0" + value[1:].encode() if value.startswith("@") else value


class ServiceManager:
    """The connection to systemd's notify socket, when there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        path = environ.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = _address(path) if path else None
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_interval = _watchdog_interval(environ)

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True when it went out."""
        if self._address is None:
            return False
        text = "\n".join(line.replace("\n", " ") for line in assignments)
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(text.encode("utf-8", "replace"), self._address)
        except OSError as exc:
            if not self._failed:  # the manager went away or the socket is wrong: say so once
                log.warning("cannot notify the service manager at NOTIFY_SOCKET: %s", exc)
                self._failed = True
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd tell this reload from an earlier one (Type=notify-reload).
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "") -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings: half of ``WATCHDOG_USEC``, when the watchdog is meant for us."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 2 / 1_000_000
