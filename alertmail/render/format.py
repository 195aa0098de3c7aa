"""Pure formatting for mails: values, sizes, durations and labels as people read them, and text made safe for a header."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from alertmail.model import Labels, without_surrogates

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")


def header_safe(text: object, limit: int = 200) -> str:
    """One line of text with every control character (CR, LF, NUL, …) replaced and every byte that
    was not UTF-8 shown escaped (``\\xff``): safe in a header."""
    clean = _UNSAFE.sub(" ", without_surrogates(str(text))).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def mailboxes(addresses: Sequence[str], name: str | None = None) -> str:
    """An address header's value, each as ``name <address>`` (the name defaults to the local part).

    Receivers' spam filters count a bare address on an HTML mail with images against it.
    """
    import email.utils

    return ", ".join(email.utils.formataddr((header_safe(name or a.rpartition("@")[0]), a)) for a in addresses)


def format_value(value: float | None, against: float | None = None) -> str:
    """A measured value for people: one decimal from 1 up (93.4), three significant digits below (0.0123).

    With ``against`` (the threshold it is compared with), as many more digits as it takes
    to stay on its own side of that line: 90.04 against 90 reads "90.04", never "90".
    """
    if value is None:
        return "no data"
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    if abs(value) >= 1e6 or math.isinf(value):
        text = f"{value:.3g}"
    elif abs(value) >= 1:
        text = f"{value:.1f}".rstrip("0").rstrip(".")
    else:
        text = f"{value:.3g}"
    if against is None or not math.isfinite(against) or not math.isfinite(value) or value == against:
        return text
    digits = 3
    while digits < 17 and not _same_side(float(text), value, against):
        digits += 1
        text = f"{value:.{digits}g}"
    return text


def _same_side(shown: float, value: float, against: float) -> bool:
    return shown != against and (shown > against) == (value > against)


def format_threshold(value: float | None) -> str:
    """A configured number as it was written: above = 0.01 reads "0.01", above = 90 reads "90"."""
    if value is None:
        return "no data"
    if math.isnan(value) or math.isinf(value):
        return str(value)
    return f"{value:.15g}"


def format_bytes(value: float | None) -> str:
    """1536 -> "1.5 KiB"."""
    if value is None:
        return "unknown"
    size, unit = float(value), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def format_quantity(value: float | None, unit: str, *, against: float | None = None, exact: bool = False) -> str:
    """A value with its unit as probes declare it: "93.4 %", "1.5 GiB", "2.0 MiB/s", "3.2".

    ``exact`` prints a configured threshold as written; ``against`` is the threshold a
    measured value is compared with (see ``format_value``).
    """
    number = format_threshold(value) if exact else format_value(value, against)
    if value is None or unit in ("", "1", "count", "load"):
        return number
    if unit in ("percent", "%"):
        return f"{number} %"
    if unit in ("bytes", "B"):
        return format_bytes(value)
    if unit == "bytes/s":
        return f"{format_bytes(value)}/s"
    return f"{number} {unit}"


def byte_scale(values: Sequence[float]) -> tuple[float, str]:
    """The binary unit that suits the largest of ``values``: (divisor, name)."""
    top = max((abs(v) for v in values), default=0.0)
    divisor, name = 1.0, "B"
    for next_name in ("KiB", "MiB", "GiB", "TiB"):
        if top < divisor * 1024:
            break
        divisor, name = divisor * 1024, next_name
    return divisor, name


def format_labels(labels: Labels) -> str:
    return ", ".join(f"{header_safe(k, 60)}={header_safe(v, 120)}" for k, v in labels)


def human_duration(seconds: float) -> str:
    """A span rounded for people, written as the config writes durations: 45 -> "45s", 720 -> "12m",
    7500 -> "2h5m", 93600 -> "1d2h"."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def guess_unit(metric: str) -> str:
    """A unit from the metric's name when no probe declared one, in the probes' words."""
    name = metric.rsplit(".", 1)[-1]
    for suffix, unit in (("_percent", "percent"), ("_bytes_per_s", "bytes/s"), ("_bytes", "bytes"), ("_seconds", "s")):
        if name.endswith(suffix) or name == suffix[1:]:
            return unit
    return ""
