"""The alertmanager transport: alert mails become Alertmanager alerts (API v2).

The notifier writes the events of each alert mail (and digest) into its
``X-Alertmail-Alerts`` header; this transport reads them with ``alerts_in`` and
POSTs them to ``/api/v2/alerts`` of every URL in ``urls`` (all members of an HA
cluster, as Alertmanager asks of its clients). It is a transport like smtp: the
durable queue holds the message and retries it while no Alertmanager answers, a
4xx answer sends it to badmail with the reply.

* an alert's labels: ``alertname`` (the rule), ``instance`` (the host that saw it), ``severity``,
  the series' labels, then ``[transports.alertmanager].labels``; annotations
  ``summary``, ``description``, ``value``, and ``runbook_url`` when the rule has a
  ``runbook``; ``startsAt`` when it fired, ``endsAt`` when it resolved;
* a mail that carries no alerts (a DSN, the heartbeat, relayed mail) has nothing
  for Alertmanager: it counts as delivered, with a reply saying so;
* while an alert fires, it is sent again every ``resend`` with ``endsAt`` 4 × that
  ahead, as Prometheus does, so Alertmanager neither resolves it on its own
  (``resolve_timeout``) nor keeps it for long after the agent is gone;
* times are sent on Alertmanager's clock: the ``Date`` of its answers tells how far this
  host's clock is off, and a request sent with times off by more than ``CLOCK_SLACK``
  is sent again, corrected (a host a minute ahead would otherwise resolve its alerts a
  minute late, or keep them active forever if it is a year ahead);
* what was handed over is remembered in ``STATE_DIR/alertmanager.json`` per alert,
  with the time of its event: an older event retried from the queue after a newer
  one went through (a firing mail delivered after its recovery) is not sent again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import math
import re
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
    format_duration,
    hookimpl,
    message_bytes,
    read_key,
    sealed_alerts,
    setting,
    write_atomic,
)

log = logging.getLogger("alertmail.transports.alertmanager")

OWN_LABELS = ("alertname", "instance", "severity")
FORGET_AFTER = 3 * 86400.0  # how long a resolved alert is remembered: as long as a sealed message is taken
PROBE_INTERVAL = 60.0  # how often an unreachable Alertmanager is tried when resend is off
CLOCK_SLACK = 5.0  # clock differences below this are left alone (Date has whole seconds)
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def rfc3339(when: float) -> str:
    return dt.datetime.fromtimestamp(when, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def date_of(headers: Any) -> float | None:
    """The time in an HTTP answer's Date header, if it has a readable one."""
    import email.utils

    try:
        return email.utils.parsedate_to_datetime(headers.get("Date")).timestamp()
    except (TypeError, ValueError, AttributeError):
        return None


def label_name(name: str) -> str:
    name = _INVALID.sub("_", str(name)) or "_"
    return "_" + name if name[0].isdigit() else name


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value:g}"


def trusted_keys(transport: str, files: list[Any], config_path: Path | None) -> list[bytes]:
    """The keys of other agents (their ``STATE_DIR/alerts.key``) whose sealed alerts are taken too, through a relay."""
    base = Path(config_path).parent if config_path is not None else Path(".")
    keys = []
    for i, name in enumerate(files):
        path = base / Path(str(name)).expanduser()
        try:
            keys.append(read_key(path))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise ValueError(
                f"transports.{transport}.keys[{i}]: cannot read {path} ({reason}); "
                "copy the agent's STATE_DIR/alerts.key there, or remove the entry"
            ) from None
    return keys


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertmanagerSettings(Settings):
    """``[transports.alertmanager]``."""

    urls: list[str] = setting(
        "list",
        None,
        required=True,
        nonempty=True,
        help='Alertmanager base URLs, every member of a cluster: ["http://am1:9093", ...]',
    )
    timeout: float = setting("duration", 10.0, minimum=0.001, help="longest one request may take")
    resend: float = setting(
        "duration",
        60.0,
        help="send firing alerts again this often (endsAt 4 x this ahead); 0 = off: resolve_timeout ends them",
    )
    labels: dict[str, Any] = setting("table", {}, help='labels added to every alert, e.g. { env = "prod" }')
    generator_url: str | None = setting("str", None, help="link in each alert; {rule} and {instance} are replaced")
    keys: list[str] = setting(
        "list",
        [],
        help="key files of other agents (their STATE_DIR/alerts.key) whose sealed alerts are taken too, through a relay",
    )
    missed_for: float = setting(
        "duration",
        300.0,
        help="an incident that began and ended while no Alertmanager answered is sent as firing this long; 0 = off",
    )


class AlertmanagerTransport:
    """Hands the alerts of each message to every Alertmanager in ``urls``."""

    name: ClassVar[str] = "alertmanager"
    options: ClassVar[type[AlertmanagerSettings]] = AlertmanagerSettings

    def __init__(self, settings: AlertmanagerSettings, context: TransportContext) -> None:
        for i, url in enumerate(settings.urls):
            if not url.lower().startswith(("http://", "https://")):
                raise ValueError(
                    f"transports.alertmanager.urls[{i}]: expected an http or https URL like http://am1:9093, got {url!r}"
                )
        self.urls = [url.rstrip("/") + "/api/v2/alerts" for url in settings.urls]
        self.timeout = settings.timeout
        self.resend = settings.resend
        self.extra = dict(settings.labels)
        self.generator_url = settings.generator_url
        self.hostname = context.hostname
        self.state_dir = Path(context.state_dir)
        self.state_file = self.state_dir / "alertmanager.json"
        self.missed_for = settings.missed_for
        self.trusted = trusted_keys("alertmanager", settings.keys, context.config_path)
        self._own_key: bytes | None = None  # STATE_DIR/alerts.key, read at the first message
        # Set by the delivery: tries at once the queued messages that wait for this transport.
        self.retry_waiting: Any = None
        self.down_since: float | None = None  # since when no Alertmanager has answered
        self._opener: Any = None  # built at the first request: urllib (and ssl) cost an agent without this transport memory
        self.known: dict[str, dict[str, Any]] = self._load()
        self._resender: asyncio.Task[None] | None = None
        self.skew: float | None = None  # Alertmanager's clock minus ours, once an answer told it
        if self.resend and any(k["active"] for k in self.known.values()):
            try:
                self._start_resending()
            except RuntimeError:  # built outside the event loop (a command that only looks)
                pass

    def _keys(self) -> list[bytes]:
        if self._own_key is None:
            self._own_key = alert_key(self.state_dir)
        return [key for key in (self._own_key, *self.trusted) if key is not None]

    # -- from alertmail's alerts to Alertmanager's ----------------------------------

    def _converted(self, alert: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
        """(key, Alertmanager alert without endsAt, active) for one alertmail alert; two on an escalation."""
        rule = str(alert.get("rule", ""))
        # The host the alert was seen on, also when a central relay passes the mail on to this transport.
        instance = str(alert.get("host") or self.hostname)
        labels = {"alertname": rule, "instance": instance, "severity": str(alert.get("severity") or "warning")}
        for key, value in (alert.get("labels") or {}).items():
            key = label_name(key)
            labels["exported_" + key if key in OWN_LABELS else key] = str(value)
        for key, value in self.extra.items():
            labels.setdefault(label_name(key), str(value))
        kind, state = alert.get("kind"), alert.get("state")
        active = not (kind == "resolved" or (kind == "flap-ended" and state == "ok"))
        value, comparison = alert.get("value"), alert.get("comparison")
        if comparison == "absent" or value is None:
            summary = f"{rule} on {instance}: no samples"
        else:
            summary = f"{rule} on {instance}: {_number(value)} {comparison} {_number(alert.get('threshold'))}"
        if kind == "flapping" or state == "flapping":
            summary += " (flapping)"
        at = float(alert.get("at") or time.time())
        body: dict[str, Any] = {
            "labels": labels,
            "annotations": {"summary": summary, "description": str(alert.get("description") or summary), "value": _number(value)},
            "startsAt": float(alert.get("fired_at") or alert.get("since") or at),  # made RFC 3339 when sent
        }
        if alert.get("runbook"):
            body["annotations"]["runbook_url"] = str(alert["runbook"])
        if self.generator_url:
            body["generatorURL"] = self.generator_url.replace("{rule}", rule).replace("{instance}", instance)
        out = [(json.dumps(sorted(labels.items())), body, active)]
        previous = alert.get("previous_severity")
        if kind == "escalated" and previous and previous != labels["severity"]:
            # The severity is a label: the alert at the old level is another alert, which ends now.
            old = {**body, "labels": {**labels, "severity": str(previous)}}
            out.append((json.dumps(sorted(old["labels"].items())), old, False))
        return out

    def _payload(self, alerts: list[dict[str, Any]], now: float) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """The alerts to POST and the records to keep once Alertmanager has them; events older than a kept one are left out."""
        payload, records = [], {}
        for alert in alerts:
            at = float(alert.get("at") or now)
            if "sealed_at" in alert:
                at = min(at, float(alert["sealed_at"]) + CLOCK_SLACK)  # no event is later than its mail
            for key, body, active in self._converted(alert):
                known = self.known.get(key)
                if known is not None and known["at"] > at:
                    continue
                told = known.get("told") if known is not None and known["alert"]["startsAt"] == body["startsAt"] else None
                records[key] = {"at": at, "active": active, "alert": body, "told": told}
                if not active and alert.get("kind") == "resolved" and self.missed_for and (told is None or told > at):
                    payload.append(self._missed(body, at, now))
                    continue
                payload.append(self._timed(body, active, at if not active else now))
        return payload, records

    def _missed(self, body: dict[str, Any], ended: float, now: float) -> dict[str, Any]:
        """An incident Alertmanager never had as firing before it ended (it was unreachable all along): as an alert
        that fires for ``missed_for``, so its receivers hear of it, with its real times in the annotations.

        Sent only as resolved, Alertmanager would notify nobody: it tells receivers of alerts that fired.
        """
        began = float(body["startsAt"])
        note = (
            f"fired at {rfc3339(began)} and resolved at {rfc3339(ended)} ({format_duration(max(ended - began, 0))}) "
            "while Alertmanager could not be reached"
        )
        annotations = {**body["annotations"], "missed": note}
        annotations["summary"] = f"{annotations['summary']} (ended while Alertmanager was unreachable)"
        return {**body, "annotations": annotations, "endsAt": now + self.missed_for}

    def _timed(self, body: dict[str, Any], active: bool, when: float) -> dict[str, Any]:
        if not active:
            return {**body, "endsAt": when}
        if self.resend:
            return {**body, "endsAt": when + 4 * self.resend}
        return body

    # -- the transport ---------------------------------------------------------------

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        data = message_bytes(message)
        now = time.time()
        try:
            alerts, why = sealed_alerts(data, self._keys(), now)
        except (OSError, ValueError) as exc:  # the own key cannot be read or made
            failure = RecipientStatus(Status.TEMPORARY, 451, f"cannot read the sealing key: {exc}", "4.3.0")
            return DeliveryResult.all(envelope.recipients, failure)
        if alerts is None:
            # Mail that this agent (or an agent whose key is in `keys`) did not seal: relayed mail, a DSN,
            # anything an outsider wrote. Never read as alerts, whatever its headers claim; it is mail, for
            # the next transport of the route.
            if why != "no alerts":
                log.warning("a message from <%s> claims alerts but is not taken as alerts: %s", envelope.sender, why)
            text = f"not an alert of this agent ({why}): left to the route's next transport, as mail"
            return DeliveryResult.all(envelope.recipients, RecipientStatus(Status.TEMPORARY, 451, text, "4.7.1"))
        if not alerts:
            log.info("the agent's own mail without alerts (the heartbeat): nothing for Alertmanager")
            done = RecipientStatus(Status.DELIVERED, 250, "carries no alerts: nothing to hand to Alertmanager", "2.0.0")
            return DeliveryResult.all(envelope.recipients, done)
        payload, records = self._payload(alerts, now)
        if not payload:
            done = RecipientStatus(Status.DELIVERED, 250, "Alertmanager has newer events of these alerts already", "2.0.0")
            return DeliveryResult.all(envelope.recipients, done)
        status = await self._post(payload)
        if status.status is not Status.PERMANENT:
            # Kept even when nobody answered: the next message or re-send brings Alertmanager the newest state.
            if status.status is Status.DELIVERED:
                for record in records.values():
                    if record["active"] and record["told"] is None:
                        record["told"] = now  # Alertmanager has it firing from now on
            self.known.update(records)
            self._save(now)
            if self.resend and any(r["active"] for r in records.values()):
                self._start_resending()
        return DeliveryResult.all(envelope.recipients, status)

    async def _post(self, payload: list[dict[str, Any]]) -> RecipientStatus:
        """One POST to every URL (two when the answers show our clock is off); delivered when any member took it."""
        answers = await self._post_all(payload)
        if self._clock_moved(answers):
            answers = await self._post_all(payload)
        accepted = [url for url, (ok, _, _, _) in zip(self.urls, answers, strict=True) if ok]
        failed = [f"{url}: {text}" for url, (ok, _, text, _) in zip(self.urls, answers, strict=True) if not ok]
        self._reachable(bool(accepted), "; ".join(failed))
        if accepted:
            note = f"; not taken by {'; '.join(failed)}" if failed else ""
            return RecipientStatus(
                Status.DELIVERED, 250, f"{len(payload)} alert(s) taken by {', '.join(accepted)}{note}", "2.0.0"
            )
        if all(permanent for _, permanent, _, _ in answers):
            return RecipientStatus(Status.PERMANENT, 554, "; ".join(failed), "5.6.0")
        return RecipientStatus(Status.TEMPORARY, 451, "; ".join(failed), "4.4.1")

    async def _post_all(self, payload: list[dict[str, Any]]) -> list[tuple[bool, bool, str, float | None]]:
        skew = self.skew or 0.0
        timed = [
            {**alert, **{key: rfc3339(alert[key] + skew) for key in ("startsAt", "endsAt") if key in alert}} for alert in payload
        ]
        body = json.dumps(timed).encode()
        return list(await asyncio.gather(*(asyncio.to_thread(self._post_one, url, body) for url in self.urls)))

    def _clock_moved(self, answers: list[tuple[bool, bool, str, float | None]]) -> bool:
        """Take Alertmanager's clock from the Date of its answers; True when the times just sent were off by it."""
        dates = [date for *_, date in answers if date is not None]
        if not dates:
            return False
        measured = dates[0] - time.time()
        skew = measured if abs(measured) >= CLOCK_SLACK else 0.0
        moved = abs(skew - (self.skew or 0.0)) >= CLOCK_SLACK
        self.skew = skew
        if moved:
            log.warning(
                "this host's clock is %+.0f s off Alertmanager's (%s); alert times are sent on Alertmanager's clock",
                -skew,
                self.urls[0],
            )
        return moved

    def _post_one(self, url: str, body: bytes) -> tuple[bool, bool, str, float | None]:
        """(accepted, permanent failure, reply text, Alertmanager's time from the answer's Date)."""
        import urllib.error
        import urllib.request

        if self._opener is None:
            # Proxies from the environment are not used: Alertmanager is on the operator's own network.
            self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return True, False, f"{response.status} {response.reason}", date_of(response.headers)
        except urllib.error.HTTPError as exc:
            reply = exc.read(500).decode("utf-8", "replace").strip()
            text = f"{exc.code} {exc.reason}" + (f": {reply}" if reply else "")
            permanent = 400 <= exc.code < 500 and exc.code not in (408, 429)
            return False, permanent, text, date_of(exc.headers)
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a malformed URL
            reason = getattr(exc, "reason", exc)
            return False, isinstance(exc, ValueError), f"{type(reason).__name__}: {reason}", None

    # -- an Alertmanager that does not answer -------------------------------------------

    def _reachable(self, answered: bool, failures: str) -> None:
        """Note whether any Alertmanager took the last request; when one does again after an outage, the
        messages waiting in the queue for this transport are tried at once, not at their next scheduled try."""
        now = time.time()
        if not answered:
            if self.down_since is None:
                self.down_since = now
                log.warning(
                    "no Alertmanager answers (%s); tried again every %s, and what waits goes as soon as one does",
                    failures,
                    format_duration(self.resend or PROBE_INTERVAL),
                )
            try:
                self._start_resending()
            except RuntimeError:  # no event loop (a one-off send from the command line)
                pass
            return
        if self.down_since is None:
            return
        log.info("Alertmanager answers again after %s unreachable", format_duration(max(now - self.down_since, 0.0)))
        self.down_since = None
        if self.retry_waiting is not None:
            try:
                self.retry_waiting()
            except Exception:
                log.exception("trying the messages waiting for Alertmanager failed; they go at their next try")

    # -- sending again while firing -----------------------------------------------------

    def _start_resending(self) -> None:
        if self._resender is None or self._resender.done():
            self._resender = asyncio.get_running_loop().create_task(self._resend_loop(), name="alertmanager resend")

    async def _resend_loop(self) -> None:
        """Every ``resend``: the firing alerts again; while no Alertmanager answers, a request all the same
        (an empty one when nothing fires), so its return is seen within one ``resend``."""
        while True:
            await asyncio.sleep(self.resend or PROBE_INTERVAL)
            now = time.time()
            records = [k for k in self.known.values() if k["active"]] if self.resend else []
            if not records and self.down_since is None:
                return
            status = await self._post([self._timed(k["alert"], True, now) for k in records])
            if status.status is Status.DELIVERED:
                untold = [record for record in records if record.get("told") is None]
                for record in untold:
                    record["told"] = now
                if untold:
                    self._save(now)
            elif records:
                log.warning("re-sending %d firing alert(s) to Alertmanager: %s", len(records), status.message)

    async def close(self) -> None:
        if self._resender is not None:
            self._resender.cancel()
            await asyncio.gather(self._resender, return_exceptions=True)

    # -- what was handed over ---------------------------------------------------------

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("%s is unreadable (%s); firing alerts are sent again with their next event", self.state_file, exc)
            return {}
        kept = {k: v for k, v in data.items() if isinstance(v, dict) and {"at", "active", "alert"} <= v.keys()}
        for record in kept.values():
            # Kept by a version that did not note it: a firing alert it handed over had been taken.
            record.setdefault("told", record["at"] if record["active"] else None)
        return kept

    def _save(self, now: float) -> None:
        for key in [k for k, v in self.known.items() if not v["active"] and now - v["at"] > FORGET_AFTER]:
            del self.known[key]
        try:
            write_atomic(self.state_file, json.dumps(self.known, separators=(",", ":")).encode())
        except OSError as exc:
            log.error("cannot save %s: %s", self.state_file, exc)


@hookimpl
def register_transports(register):
    register(AlertmanagerTransport)
