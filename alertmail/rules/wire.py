"""Alert events in a form other programs read: the ``X-Alertmail-Alerts`` header of alert mails.

The notifier puts the events a mail is about into this header, so a transport that
hands alerts to another system (Alertmanager) reads the facts, not the prose. The value
is JSON, zlib-compressed and base64-encoded in words of 64 characters: pure ASCII that
mail headers fold and unfold without change, whatever a probe put into its labels.

The JSON is an object ``{"v": 1, "host": ..., "alerts": [...]}`` (``host``: the
agent's hostname, which a relay passing the mail on keeps); each alert has ``rule``,
``kind`` (firing, escalated, reminder, resolved, flapping, flap-ended), ``state``,
``labels`` (an object), ``severity``, ``previous_severity``, ``value``, ``threshold``,
``comparison``, ``since``, ``at``, ``fired_at`` (Unix times), ``incident``,
``description``, ``runbook`` (the rule's URL, empty when it has none) and ``reason`` (why
it happened when the value does not say: a recovery caused by a configuration change;
empty otherwise).
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Iterable
from typing import Any

from alertmail.rules.model import AlertEvent

ALERTS_HEADER = "X-Alertmail-Alerts"
VERSION = 1
_WORD = 64


def event_fields(event: AlertEvent) -> dict[str, Any]:
    return {
        "rule": event.rule.name,
        "kind": event.kind,
        "state": event.state,
        "labels": dict(event.labels),
        "severity": event.severity,
        "previous_severity": event.previous_severity,
        "value": event.value,
        "threshold": event.threshold,
        "comparison": event.comparison,
        "since": event.since,
        "at": event.at,
        "fired_at": event.fired_at,
        "incident": event.incident,
        "description": event.rule.description,
        "reason": event.reason,
        "runbook": event.rule.runbook,
    }


def encode_alerts(events: Iterable[AlertEvent], hostname: str = "") -> str:
    """The header value for ``events`` seen on ``hostname``."""
    payload = json.dumps({"v": VERSION, "host": hostname, "alerts": [event_fields(e) for e in events]}, separators=(",", ":"))
    text = base64.b64encode(zlib.compress(payload.encode("utf-8", "surrogatepass"))).decode("ascii")
    return " ".join(text[i : i + _WORD] for i in range(0, len(text), _WORD))


def decode_alerts(value: str) -> list[dict[str, Any]]:
    """The alerts of a header value, each with the ``host`` it was seen on; ValueError when it is not one."""
    try:
        payload = json.loads(zlib.decompress(base64.b64decode("".join(str(value).split()), validate=True)))
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"{ALERTS_HEADER} is not readable: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("v") != VERSION or not isinstance(payload.get("alerts"), list):
        raise ValueError(f"{ALERTS_HEADER}: expected version {VERSION} with a list of alerts")
    host = str(payload.get("host") or "")
    return [{**a, "host": host} for a in payload["alerts"] if isinstance(a, dict)]


def alerts_in(message: bytes) -> list[dict[str, Any]] | None:
    """The alerts a queued message carries; None when it carries none (a DSN, a heartbeat, relayed mail)."""
    import email.parser
    import email.policy

    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
    values = headers.get_all(ALERTS_HEADER)
    if not values:
        return None
    return [alert for value in values for alert in decode_alerts(str(value))]
