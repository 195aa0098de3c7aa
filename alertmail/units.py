"""Units people write in the config and read in mails: durations, sizes, addresses."""

from __future__ import annotations

import math
import re
from typing import Any

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*$", re.IGNORECASE)
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\\\"]+@[A-Za-z0-9.-]+$|^[^@\s<>]+@\[[0-9A-Fa-f:.]+\]$")


# The longest duration the config takes: ten years. Beyond it timers, dates (year 9999)
# and thread timeouts overflow; nothing an alerting agent waits for is that long.
DURATION_MAX = 3650 * 86400.0
_TOO_LONG = 'longer than the longest duration allowed, "3650d" (ten years); shorten it'


def parse_duration(value: Any) -> float:
    """Seconds from 30, "30s", "5m", "2h", "1d", "1h30m"; "0" is zero; at most DURATION_MAX."""
    if isinstance(value, bool):
        raise ValueError('expected a duration like "30s", "5m", "2h", "1d"')
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if not math.isfinite(seconds):
            raise ValueError(f'expected a finite duration like "30s", "5m", "2h", "1d", got {value!r}')
        if seconds < 0:
            raise ValueError("a duration cannot be negative")
        if seconds > DURATION_MAX:
            raise ValueError(f"{value!r} seconds is {_TOO_LONG}")
        return seconds
    if not isinstance(value, str):
        raise ValueError(f'expected a duration like "30s", "5m", "2h", "1d", got {value!r}')
    text = value.strip().lower()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f'expected a duration like "30s", "5m", "2h", "1d", got {value!r}')
    if not math.isfinite(total) or total > DURATION_MAX:
        raise ValueError(f"{value!r} is {_TOO_LONG}")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages: 90 -> "1m30s".

    A negative span (a clock that stepped back, a stamp from the future) reads "0s".
    """
    seconds = max(0, round(seconds))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_size(value: Any) -> int:
    """Bytes from 10485760, "10MB", "512KiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            size = float(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
            if math.isfinite(size):
                return int(size)
    raise ValueError(f'expected a size like "10MB" or a number of bytes, got {value!r}')


def parse_address(value: Any, default_port: int | None = None) -> tuple[str, int]:
    """("host", port) from "host:port", "[10.0.0.1]:25", "[::1]:2525" or "host"."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'expected "host:port", got {value!r}')
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in {value!r}")
        host, rest = text[1:end], text[end + 1 :]
    elif text.count(":") == 1:
        host, _, tail = text.partition(":")
        rest = ":" + tail
    else:
        host, rest = text, ""
    port: int
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError(f'expected "host:port", got {value!r}')
        port = int(rest[1:])
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f'expected "host:port" with a port, got {value!r}')
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return host, port


def valid_address(address: str) -> bool:
    """A bare addr-spec (user@domain) with nothing that could break a header or an SMTP command."""
    return isinstance(address, str) and len(address) <= 254 and bool(_ADDRESS.fullmatch(address))
