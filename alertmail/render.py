"""Rendering alert events into the subject and body of a mail (pure: values in, values out).

The notifier adds the envelope headers (From, To, Date, Message-ID, threading);
this module decides what people read.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from alertmail.config import format_duration
from alertmail.model import Labels
from alertmail.rules import AlertEvent

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")

KIND_WORDS = {
    "firing": "FIRING",
    "reminder": "STILL FIRING",
    "resolved": "RESOLVED",
    "flapping": "FLAPPING",
    "flap-ended": "SETTLED",
    "escalated": "ESCALATED",
}


def header_safe(text: object, limit: int = 200) -> str:
    """One line of text with every control character (CR, LF, NUL, …) replaced: safe in a header."""
    clean = _UNSAFE.sub(" ", str(text)).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def format_value(value: float | None) -> str:
    if value is None:
        return "no data"
    if value != value:  # NaN
        return "NaN"
    if abs(value) >= 1e6 or (abs(value) < 0.01 and value != 0):
        return f"{value:.3g}"
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def format_labels(labels: Labels) -> str:
    return ", ".join(f"{header_safe(k, 60)}={header_safe(v, 120)}" for k, v in labels)


@dataclass(frozen=True)
class RenderContext:
    """What the renderer may know besides the events."""

    hostname: str
    timezone: str = "UTC"
    subject_prefix: str = ""
    # history(metric, labels) -> [(timestamp, value), ...] for charts; empty when unknown.
    history: Callable[[str, Labels], Sequence[tuple[float, float]]] = lambda metric, labels: ()
    extra: dict = field(default_factory=dict)

    def local_time(self, timestamp: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(self.timezone))


def condition(event: AlertEvent) -> str:
    """`disk.used_percent 93.4 > 90` — the metric, its value and the threshold crossed."""
    metric = event.rule.metric
    if event.comparison == "absent":
        return f"{metric} absent"
    return f"{metric} {format_value(event.value)} {event.comparison} {format_value(event.threshold)}"


def subject(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    """`[CRITICAL] web01: disk-root-full — disk.used_percent 93.4 > 90 (for 2m)`."""
    first = events[0]
    if first.kind == "resolved":
        tag = "RESOLVED"
    elif first.kind == "flapping":
        tag = "FLAPPING"
    else:
        tag = first.severity.upper()
    if len(events) == 1:
        duration = f" (for {format_duration(first.at - first.since)})" if first.at > first.since else ""
        text = f"[{tag}] {ctx.hostname}: {first.rule.name} — {condition(first)}{duration}"
        if first.kind == "reminder":
            text = f"[{tag}] {ctx.hostname}: {first.rule.name} still firing — {condition(first)}{duration}"
    else:
        names = sorted({e.rule.name for e in events})
        text = f"[{tag}] {ctx.hostname}: {len(events)} alerts — {', '.join(names)}"
    if ctx.subject_prefix:
        text = f"{ctx.subject_prefix} {text}"
    return header_safe(text, limit=250)


def text_body(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    lines: list[str] = []
    for event in events:
        since = ctx.local_time(event.since)
        state = KIND_WORDS.get(event.kind, event.kind.upper())
        lines += [
            f"{state}: {event.rule.name} on {ctx.hostname}",
            "",
            f"  condition   {condition(event)}",
            f"  severity    {event.severity}",
            f"  since       {since:%Y-%m-%d %H:%M:%S %Z} ({format_duration(event.at - event.since)} ago)",
            f"  rule        {event.rule.name}",
        ]
        if event.labels:
            lines.append(f"  labels      {format_labels(event.labels)}")
        if event.rule.description:
            lines.append(f"  note        {event.rule.description}")
        lines.append("")
    lines.append(f"-- alertmail on {ctx.hostname}")
    return "\n".join(lines) + "\n"


def render_alert(events: Sequence[AlertEvent], ctx: RenderContext) -> EmailMessage:
    """The message for one or more events: Subject and body; no envelope headers."""
    msg = EmailMessage()
    msg["Subject"] = subject(events, ctx)
    msg.set_content(text_body(events, ctx))
    return msg
