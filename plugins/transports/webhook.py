"""The webhook transport: each alert mail POSTed as JSON in Alertmanager's webhook format (version 4).

Receivers written for Alertmanager's ``webhook_config`` take it unchanged: ``version``,
``receiver``, ``status``, ``alerts`` (each with ``status``, ``labels``, ``annotations``,
``startsAt``, ``endsAt``, ``generatorURL``, ``fingerprint``), ``groupLabels``,
``commonLabels``, ``commonAnnotations``, ``externalURL``, ``groupKey``, ``truncatedAlerts``.
The labels and annotations are the ones the alertmanager transport sends.

It is a transport like smtp: the durable queue holds the message and retries it. A 2xx
answer delivers it; 4xx sends it to badmail with the answer; 5xx, a timeout or no
connection is tried again later. Only mail this agent sealed (``X-Alertmail-Seal``) is
an alert: relayed or submitted mail is never turned into one, whatever its headers say;
it is left to the route's next transport. ``payload()`` is shared with the exec transport.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

from alertmail import (
    DeliveryResult,
    Envelope,
    RecipientStatus,
    Settings,
    Status,
    TransportContext,
    alert_key,
    hookimpl,
    message_bytes,
    resolve_secret,
    sealed_alerts,
    setting,
)

log = logging.getLogger("alertmail.transports.webhook")

ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: what Alertmanager sends as endsAt of a firing alert
OWN_LABELS = ("alertname", "instance", "severity")
ANSWER_SHOWN = 300  # characters of an HTTP answer kept as the reason


def fingerprint(labels: dict[str, str]) -> str:
    """Prometheus's label-set fingerprint: FNV-1a 64 over sorted names and values, 0xff after each."""
    value = 14695981039346656037
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode() + b"\xff":
                value = ((value ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return f"{value:016x}"


def webhook_alert(alert: dict[str, Any], hostname: str, generator_url: str | None = None) -> dict[str, Any]:
    """One alertmail alert as an alert of Alertmanager's webhook."""
    from alertmail.plugins.transports.alertmanager import _number, label_name, rfc3339

    rule = str(alert.get("rule", ""))
    instance = str(alert.get("host") or hostname)
    labels = {"alertname": rule, "instance": instance, "severity": str(alert.get("severity") or "warning")}
    for key, value in (alert.get("labels") or {}).items():
        key = label_name(key)
        labels["exported_" + key if key in OWN_LABELS else key] = str(value)
    kind, state = alert.get("kind"), alert.get("state")
    firing = not (kind == "resolved" or (kind == "flap-ended" and state == "ok"))
    value, comparison = alert.get("value"), alert.get("comparison")
    if comparison == "absent" or value is None:
        summary = f"{rule} on {instance}: no samples"
    else:
        summary = f"{rule} on {instance}: {_number(value)} {comparison} {_number(alert.get('threshold'))}"
    annotations = {"summary": summary, "description": str(alert.get("description") or summary), "value": _number(value)}
    if alert.get("runbook"):
        annotations["runbook_url"] = str(alert["runbook"])
    at = float(alert.get("at") or time.time())
    url = generator_url.replace("{rule}", rule).replace("{instance}", instance) if generator_url else ""
    return {
        "status": "firing" if firing else "resolved",
        "labels": labels,
        "annotations": annotations,
        "startsAt": rfc3339(float(alert.get("fired_at") or alert.get("since") or at)),
        "endsAt": ZERO_TIME if firing else rfc3339(at),
        "generatorURL": url,
        "fingerprint": fingerprint(labels),
    }


def _common(dicts: list[dict[str, str]]) -> dict[str, str]:
    if not dicts:
        return {}
    return {k: v for k, v in dicts[0].items() if all(d.get(k) == v for d in dicts[1:])}


def payload(alerts: list[dict[str, Any]], hostname: str, receiver: str, generator_url: str | None = None) -> dict[str, Any]:
    """The webhook body (version 4) for the alerts of one message."""
    items = [webhook_alert(a, hostname, generator_url) for a in alerts]
    common = _common([a["labels"] for a in items])
    group = {k: common[k] for k in ("alertname",) if k in common}
    return {
        "version": "4",
        "groupKey": "{}:" + json.dumps(group, sort_keys=True, separators=(",", ":")),
        "truncatedAlerts": 0,
        "status": "firing" if any(a["status"] == "firing" for a in items) else "resolved",
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": common,
        "commonAnnotations": _common([a["annotations"] for a in items]),
        "externalURL": "",
        "alerts": items,
    }


def alerts_of(
    data: bytes, state_dir: Path, envelope: Envelope, trusted: list[bytes] | None = None
) -> tuple[list[dict[str, Any]] | None, RecipientStatus | None]:
    """The alerts of a queued message this agent (or one whose key is ``trusted``) sealed; else (None, the status)."""
    try:
        keys = [key for key in (alert_key(state_dir), *(trusted or [])) if key]
        alerts, why = sealed_alerts(data, keys, time.time())
    except (OSError, ValueError) as exc:
        return None, RecipientStatus(Status.TEMPORARY, 451, f"cannot read the sealing key: {exc}", "4.3.0")
    if alerts is None:
        if why != "no alerts":
            log.warning("a message from <%s> claims alerts but is not taken as alerts: %s", envelope.sender, why)
        text = f"not an alert of this agent ({why}): left to the route's next transport, as mail"
        return None, RecipientStatus(Status.TEMPORARY, 451, text, "4.7.1")
    if not alerts:
        return None, RecipientStatus(Status.DELIVERED, 250, "carries no alerts (the heartbeat): nothing to hand over", "2.0.0")
    return alerts, None


@dataclass(frozen=True, slots=True, kw_only=True)
class PayloadSettings(Settings):
    """The keys of the alerts' JSON (Alertmanager's webhook format), the webhook's and exec's alike."""

    receiver: str = setting("str", "alertmail", nonempty=True, help="the receiver name in the JSON")
    generator_url: str | None = setting("str", None, help="link in each alert; {rule} and {instance} are replaced")
    keys: list[str] = setting("list", [], help="key files of other agents whose sealed alerts are taken too, through a relay")


@dataclass(frozen=True, slots=True, kw_only=True)
class WebhookSettings(PayloadSettings):
    """``[transports.webhook]``."""

    url: str = setting("str", None, required=True, help="where to POST, e.g. http://127.0.0.1:5001/alerts")
    headers: dict[str, Any] = setting("table", {}, help='extra request headers, e.g. { "X-Team" = "ops" }')
    bearer_token_env: str | None = setting("str", None, help="environment variable holding a token sent as Authorization: Bearer")
    bearer_token_file: Path | None = setting("path", None, help="file holding a token sent as Authorization: Bearer")
    timeout: float = setting("duration", 10.0, minimum=0.001, help="longest one request may take; then it is tried again later")
    ca_file: Path | None = setting("path", None, help="CA certificates for an https URL; default: the system's")


class WebhookTransport:
    """POSTs the alerts of each message to ``url`` as Alertmanager's webhook does."""

    name: ClassVar[str] = "webhook"
    options: ClassVar[type[WebhookSettings]] = WebhookSettings

    def __init__(self, settings: WebhookSettings, context: TransportContext) -> None:
        from alertmail.plugins.transports.alertmanager import trusted_keys

        self.trusted = trusted_keys("webhook", settings.keys, context.config_path)
        url = str(settings.url or "")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"transports.webhook.url: expected an http:// or https:// URL, got {url!r}")
        self.url = url
        self.headers = {str(k): str(v) for k, v in settings.headers.items()}
        for key, value in self.headers.items():
            if any(c in key + value for c in "\r\n"):
                raise ValueError(f"transports.webhook.headers.{key}: a header cannot hold CR or LF")
        self.settings = settings
        self.timeout = settings.timeout
        self.ca_file = settings.ca_file
        self.receiver = settings.receiver
        self.generator_url = settings.generator_url
        self.hostname = context.hostname
        self.state_dir = Path(context.state_dir)
        self._opener: Any = None  # built at the first request: urllib and ssl load only when used

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        alerts, status = alerts_of(message_bytes(message), self.state_dir, envelope, self.trusted)
        if alerts is not None:
            body = json.dumps(payload(alerts, self.hostname, self.receiver, self.generator_url)).encode()
            status = await asyncio.to_thread(self._post, body)
        assert status is not None
        return DeliveryResult.all(envelope.recipients, status)

    def _post(self, body: bytes) -> RecipientStatus:
        """One POST (blocking): 2xx delivered, 4xx permanent, anything else temporary."""
        import urllib.error
        import urllib.request

        if self._opener is None:
            handlers: list[Any] = [urllib.request.ProxyHandler({})]
            if self.ca_file:
                import ssl

                handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=str(self.ca_file))))
            self._opener = urllib.request.build_opener(*handlers)
        headers = {"Content-Type": "application/json", "User-Agent": "alertmail", **self.headers}
        try:
            token = resolve_secret(self.settings.as_table(), "bearer_token")
        except (LookupError, OSError) as exc:
            return RecipientStatus(Status.TEMPORARY, 451, f"cannot read the bearer token: {exc}", "4.3.0")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return RecipientStatus(Status.DELIVERED, 250, f"{self.url} answered {response.status}", "2.0.0", self.url)
        except urllib.error.HTTPError as exc:
            answer = _shown(exc.read(ANSWER_SHOWN * 4))
            text = f"{self.url} answered {exc.code} {exc.reason}: {answer}" if answer else f"{self.url} answered {exc.code}"
            if 400 <= exc.code < 500:
                return RecipientStatus(Status.PERMANENT, 554, text, "5.6.0", self.url)
            return RecipientStatus(Status.TEMPORARY, 451, text, "4.4.0", self.url)
        except (OSError, ValueError) as exc:  # no connection, a timeout, TLS refused
            reason = getattr(exc, "reason", None) or exc
            return RecipientStatus(Status.TEMPORARY, 451, f"{self.url}: {reason}", "4.4.1", self.url)


def _shown(data: bytes) -> str:
    text = " ".join(data.decode("utf-8", "replace").split())
    return text[:ANSWER_SHOWN] + ("..." if len(text) > ANSWER_SHOWN else "")


@hookimpl
def register_transports(register):
    register(WebhookTransport)
