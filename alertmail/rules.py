"""Threshold rules: a pure state machine per rule and label set (no I/O, no clock).

    ok -> pending -> firing -> ok        (plus flapping)

The engine takes samples and the current time and returns the alert events that
state changes produce; the caller owns the clock, which keeps it testable.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from alertmail.model import Labels, Option, Sample

RULE_OPTIONS: dict[str, Option] = {
    "name": Option("str", required=True, help="a unique name like \"disk-root-full\""),
    "metric": Option("str", required=True, help="the metric to watch, e.g. \"disk.used_percent\""),
    "labels": Option("table", {}, help="label matchers: exact values or globs, e.g. { mount = \"/\" }"),
    "above": Option("number", help="fire when the value is above this"),
    "below": Option("number", help="fire when the value is below this"),
    "warning": Option("number", help="warning level (the threshold when above/below is not given)"),
    "critical": Option("number", help="critical level"),
    "clear": Option("number", help="recovery threshold (hysteresis); default: the threshold"),
    "for": Option("duration", 0.0, help="how long the condition must hold before firing"),
    "repeat": Option("duration", 0.0, help="reminder interval while firing; 0 = off"),
    "keep_firing_for": Option("duration", 0.0, help="stay firing this long after the condition clears"),
    "over": Option("duration", 0.0, help="window to aggregate over"),
    "agg": Option("str", "last", choices=("avg", "min", "max", "last", "rate")),
    "absent": Option("duration", 0.0, help="fire when no sample arrives for this long"),
    "severity": Option("str", "warning", help="severity shown in the subject"),
    "to": Option("list", None, help="recipients; default: [mail].to"),
    "description": Option("str", "", help="a line of text put into the mail"),
    "flapping": Option("bool", True, help="detect flapping (Nagios percent state change)"),
}


class State(enum.Enum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    FLAPPING = "flapping"


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    labels: Mapping[str, str] = field(default_factory=dict)
    above: float | None = None
    below: float | None = None
    warning: float | None = None
    critical: float | None = None
    clear: float | None = None
    for_: float = 0.0
    repeat: float = 0.0
    keep_firing_for: float = 0.0
    over: float = 0.0
    agg: str = "last"
    absent: float = 0.0
    severity: str = "warning"
    to: tuple[str, ...] = ()
    description: str = ""
    flapping: bool = True

    def matches(self, sample: Sample) -> bool:
        """True when the sample's metric is this rule's and its labels pass the matchers (exact or glob)."""
        raise NotImplementedError


@dataclass(frozen=True)
class AlertEvent:
    """One state change of one alert (rule + label set), as the notifier mails it."""

    kind: str  # "firing", "reminder", "resolved", "flapping", "flap-ended"
    rule: Rule
    labels: Labels
    value: float | None
    threshold: float | None
    comparison: str  # ">" or "<" (or "absent")
    severity: str
    since: float  # when the condition started to hold
    at: float  # when this event happened
    incident: str  # stable id of the incident: firing, reminders and recovery share it


def rules_from_config(raw: Any, check: Any, *, default_to: Iterable[str]) -> list[Rule]:
    """Build rules from the ``[[rules]]`` array; problems go to ``check`` (a config.Checker)."""
    raise NotImplementedError


class RuleEngine:
    """Evaluates samples against rules; returns AlertEvents for state changes."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        raise NotImplementedError

    def observe(self, samples: Iterable[Sample], now: float) -> list[AlertEvent]:
        raise NotImplementedError

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven events: reminders (repeat), absent series, keep_firing_for expiry."""
        raise NotImplementedError
