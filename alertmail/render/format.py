"""Pure formatting for mails: values, sizes, durations and labels as people read them, and text made safe for a header."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from alertmail.model import Labels

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")


def header_safe(text: object, limit: int = 200) -> str:
    """One line of text with every control character (CR, LF, NUL, …) replaced: safe in a header."""
    clean = _UNSAFE.sub(" ", str(text)).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def format_value(value: float | None) -> str:
    if value is None:
        return "no data"
    if math.isnan(value):
        return "NaN"
    if abs(value) >= 1e6 or (abs(value) < 0.01 and value != 0):
        return f"{value:.3g}"
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


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


def format_quantity(value: float | None, unit: str) -> str:
    """A value with its unit as probes declare it: "93.4 %", "1.5 GiB", "2.0 MiB/s", "3.2"."""
    if value is None or unit in ("", "1", "count", "load"):
        return format_value(value)
    if unit in ("percent", "%"):
        return f"{format_value(value)} %"
    if unit in ("bytes", "B"):
        return format_bytes(value)
    if unit == "bytes/s":
        return f"{format_bytes(value)}/s"
    return f"{format_value(value)} {unit}"


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
    """45 -> "45 s", 720 -> "12 min", 7500 -> "2 h 5 min", 93600 -> "1 d 2 h"."""
    seconds = max(round(seconds), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def guess_unit(metric: str) -> str:
    """A unit from the metric's name when no probe declared one, in the probes' words."""
    name = metric.rsplit(".", 1)[-1]
    for suffix, unit in (("_percent", "percent"), ("_bytes_per_s", "bytes/s"), ("_bytes", "bytes"), ("_seconds", "s")):
        if name.endswith(suffix) or name == suffix[1:]:
            return unit
    return ""
