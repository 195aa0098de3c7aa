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

Headers are what the sender of a message says, and a relay accepts mail from outsiders.
So the notifier also writes ``X-Alertmail-Seal``: an HMAC-SHA256, with the agent's key
in ``STATE_DIR/alerts.key``, over the alerts headers and the time of sealing
(``v=1; t=UNIX; k=KEY-ID; s=BASE64``). ``sealed_alerts`` gives the alerts only of a
message sealed with a key the reader trusts and sealed less than ``SEAL_MAX_AGE`` ago;
the heartbeat is sealed with no alerts (the agent's own mail, nothing to hand over).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path
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


# -- the seal: which alerts the agent itself (or a host holding its key) wrote ------------------

SEAL_HEADER = "X-Alertmail-Seal"
KEY_FILE = "alerts.key"
SEAL_MAX_AGE = 3 * 86400.0  # a sealed message older than this is not taken (a replay); > the queue's 2-day expire
_SEAL_CONTEXT = b"alertmail-seal-v1"


def alert_key(state_dir: Path, *, create: bool = True) -> bytes | None:
    """The agent's sealing key, ``STATE_DIR/alerts.key`` (32 random bytes, hex); made at first use, mode 0600.

    None when the file does not exist and ``create`` is false. OSError when it cannot be read or made.
    """
    path = Path(state_dir) / KEY_FILE
    for _ in range(2):
        try:
            return _key_from(path.read_bytes(), path)
        except FileNotFoundError:
            if not create:
                return None
        path.parent.mkdir(parents=True, exist_ok=True)
        import secrets

        temp = path.with_name(f".{KEY_FILE}.{os.getpid()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temp, path)  # never replaces a key another process made meanwhile
        except FileExistsError:
            pass
        finally:
            temp.unlink(missing_ok=True)
    return _key_from(path.read_bytes(), path)


def read_key(path: Path) -> bytes:
    """A key file another host made (its ``alerts.key``); OSError or ValueError when it is not one."""
    return _key_from(Path(path).read_bytes(), Path(path))


def _key_from(data: bytes, path: Path) -> bytes:
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ValueError(f"{path}: not a key: expected 64 hex digits, as alertmail writes into {KEY_FILE}") from None
    if len(key) < 16:
        raise ValueError(f"{path}: the key is too short ({len(key)} bytes); at least 16")
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(_SEAL_CONTEXT + key).hexdigest()[:12]


def _mac(key: bytes, when: int, values: Iterable[str]) -> str:
    text = "\n".join("".join(str(v).split()) for v in values)
    digest = hmac.new(key, _SEAL_CONTEXT + b"\n" + str(when).encode() + b"\n" + text.encode("ascii", "replace"), "sha256")
    return base64.b64encode(digest.digest()).decode("ascii")


def seal(alert_values: Iterable[str], key: bytes, now: float) -> str:
    """The ``X-Alertmail-Seal`` value over the ``X-Alertmail-Alerts`` values of a message (none: mail without alerts)."""
    when = int(now)
    return f"v=1; t={when}; k={key_id(key)}; s={_mac(key, when, list(alert_values))}"


def sealed_alerts(
    message: bytes, keys: Iterable[bytes], now: float, max_age: float = SEAL_MAX_AGE
) -> tuple[list[dict[str, Any]] | None, str]:
    """(alerts, "") for a message sealed with one of ``keys`` (an empty list: sealed mail without alerts,
    the heartbeat); (None, why) for any other message, whatever its headers say."""
    import email.parser
    import email.policy

    head = message.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head + b"\r\n\r\n")
    values = [str(v) for v in headers.get_all(ALERTS_HEADER) or []]
    seals = headers.get_all(SEAL_HEADER) or []
    if not seals:
        return None, "not sealed" if values else "no alerts"
    if len(seals) > 1:
        return None, f"{len(seals)} {SEAL_HEADER} headers"
    fields = dict(part.strip().partition("=")[::2] for part in "".join(str(seals[0]).split()).split(";") if part.strip())
    try:
        when = int(fields["t"])
    except (KeyError, ValueError):
        return None, f"{SEAL_HEADER} is not readable"
    by_id = {key_id(k): k for k in keys}
    key = by_id.get(fields.get("k", ""))
    if fields.get("v") != "1" or key is None:
        return None, f"sealed with a key this host does not trust (k={fields.get('k', '')[:12]})"
    if not hmac.compare_digest(_mac(key, when, values), fields.get("s", "")):
        return None, "the seal does not match the message (altered or forged)"
    if now - when > max_age:
        return None, f"sealed {int(now - when)} s ago, longer than {int(max_age)} s (an old message sent again)"
    try:
        # Each alert carries the time it was sealed: no event of it can be later than that.
        return [{**alert, "sealed_at": float(when)} for value in values for alert in decode_alerts(value)], ""
    except ValueError as exc:
        return None, str(exc)
