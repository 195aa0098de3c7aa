"""What the notifier remembers between mails and across restarts.

An ``Incident`` is the thread of one alert: the Message-ID of its first mail and the
people it went to (``state_dir/incidents.json``). A ``Held`` event is the newest of an
incident kept back by a silence (``state_dir/silenced.json``); events are written as
JSON with enough of their rule to render the mail if the rule is gone by then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alertmail.rules.model import AlertEvent, Rule


@dataclass
class Incident:
    """What is remembered of one incident between its mails."""

    root: str  # Message-ID of the first mail about it
    to: list[str]
    rule: str

    @classmethod
    def from_json(cls, data: Any) -> Incident:
        if isinstance(data, dict):
            # Files written by earlier versions also carry "references", which nothing read.
            data = {k: v for k, v in data.items() if k != "references"}
        return cls(**data)


def closes(event: AlertEvent) -> bool:
    """Does this event end its incident?"""
    return event.kind == "resolved" or (event.kind == "flap-ended" and event.state == "ok")


def event_to_json(event: AlertEvent) -> dict[str, Any]:
    rule = event.rule
    return {
        "kind": event.kind,
        "labels": [list(p) for p in event.labels],
        "value": event.value,
        "threshold": event.threshold,
        "comparison": event.comparison,
        "severity": event.severity,
        "since": event.since,
        "at": event.at,
        "incident": event.incident,
        "fired_at": event.fired_at,
        "state": event.state,
        "percent_change": event.percent_change,
        "reason": event.reason,
        "rule": {
            "name": rule.name,
            "metric": rule.metric,
            "to": list(rule.to),
            "description": rule.description,
            "severity": rule.severity,
            "runbook": rule.runbook,
        },
    }


def event_from_json(record: dict[str, Any], rules: dict[str, Rule]) -> AlertEvent:
    r = record["rule"]
    # The rule as configured now when it still exists; else enough of it to render the mail.
    rule = rules.get(r["name"]) or Rule(
        name=r["name"],
        metric=r["metric"],
        to=tuple(r["to"]),
        description=r.get("description", ""),
        severity=r.get("severity", "warning"),
        runbook=r.get("runbook", ""),
    )
    return AlertEvent(
        kind=record["kind"],
        rule=rule,
        labels=tuple((str(k), str(v)) for k, v in record["labels"]),
        value=record["value"],
        threshold=record["threshold"],
        comparison=record["comparison"],
        severity=record["severity"],
        since=record["since"],
        at=record["at"],
        incident=record["incident"],
        fired_at=record.get("fired_at"),
        state=record.get("state", ""),
        percent_change=record.get("percent_change"),
        reason=record.get("reason", ""),
    )


@dataclass
class Held:
    """The newest event of an incident kept back by a silence."""

    event: AlertEvent
    silence: str  # id of the silence that holds it
    announced: bool  # its incident was mailed before the silence caught it
