"""From alert events to queued mails: grouping, threading, rendering, headers.

One incident has one thread: the mail that first announced it is the root, and
its reminders and its recovery reply to it (In-Reply-To, References) and go to
the recipients the first mail went to. Incident records are kept in
``state_dir/incidents.json`` so threading survives a restart.

Before a mail is composed, two kinds of noise control apply:

* **Silences** (``alertmail.notify.silences``). A silenced event is recorded (log line and
  ``state_dir/logs/alerts.jsonl``), not mailed; the notifier holds the newest event of
  each silenced incident (``state_dir/silenced.json``, so a restart keeps it). When no
  silence covers the incident any more and it is still firing, exactly one mail goes
  out (the firing mail, or "still firing" for an incident mailed before the silence),
  and threading goes on from there. An incident that ended while silenced sends
  nothing at all. The recovery of an incident that was mailed before the silence
  started is still sent: it closes a thread its recipients have open.
* **Storm cap** (``alertmail.notify.storm``): beyond a per-recipient number of mails per
  hour, events are folded into one digest per interval; nothing is dropped.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from alertmail.config.schema import Section, Settings, setting
from alertmail.fsutil import write_atomic
from alertmail.model import Envelope, message_bytes
from alertmail.notify.incidents import Held, Incident, closes, event_from_json, event_to_json
from alertmail.notify.journal import Journal
from alertmail.notify.runtime_silences import SilenceSet
from alertmail.notify.storm import StormGuard, render_digest
from alertmail.notify.storm import check_config as check_storm
from alertmail.rules.model import AlertEvent, Rule
from alertmail.rules.wire import ALERTS_HEADER, SEAL_HEADER, alert_key, encode_alerts, seal

if TYPE_CHECKING:
    from alertmail.render.view import RenderContext

log = logging.getLogger("alertmail.notify.notifier")


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifySettings(Settings):
    """``[notify]``: how alerts are grouped into mails, and the storm cap."""

    group_wait: float = setting(
        "duration",
        30.0,
        help="the first alert for a set of recipients goes out at once; what follows within this time is batched into one mail",
    )
    max_mails_per_hour: int = setting(
        "int",
        10,
        minimum=0,
        maximum=1_000_000,
        help="storm cap: most mails one recipient gets in any hour, digests included; 0 = no cap",
    )
    digest_interval: float = setting(
        "duration", 900.0, minimum=1.0, help="storm mode: events beyond the cap are folded into one digest mail this often"
    )


SECTION: Section[NotifySettings] = Section("notify", NotifySettings, check=check_storm)


# A mail that could not be rendered even as plain text is tried again this much later.
RENDER_RETRY = 60.0


class MailSink(Protocol):
    """Where the notifier puts its mails: the durable queue, or a replay's list in memory."""

    async def put(self, data: bytes, envelope: Envelope, *, route: list[str] | None = None, origin: str = "agent") -> str: ...


@dataclass
class Outgoing:
    """A rendered mail waiting for the queue (kept in memory while the queue cannot take it)."""

    data: bytes
    envelope: Envelope
    subject: str
    kind: str = "alert"  # or "digest"
    routes: list[list[str]] | None = None  # the routes it still has to be queued on; None: not begun


class Notifier:
    """Takes alert events; sends grouped, threaded, silenced and storm-capped mails to the queue.

    ``queue`` is anything with ``async put(data, envelope, route=..., origin=...)``: the
    durable queue in the agent, a list in memory for ``alertmail replay``. Every method
    takes the time as ``now`` so a recorded clock can drive it.
    """

    def __init__(
        self,
        *,
        sender: str,
        hostname: str,
        timezone: str,
        route: list[str],
        queue: MailSink,
        state_dir: Path,
        hook: Any = None,
        history: Callable[[str, Any], Sequence[tuple[float, float]]] | None = None,
        group_wait: float = 0.0,
        subject_prefix: str = "",
        context_for: Callable[[Sequence[AlertEvent]], dict] | None = None,
        silences: SilenceSet | None = None,
        max_mails_per_hour: int = 0,
        digest_interval: float = 900.0,
        rules: Sequence[Rule] = (),
        render_options: Mapping[str, Any] | None = None,
        durable: bool = True,
        seal_key: bytes | None = None,
    ) -> None:
        self.sender = sender
        self.hostname = hostname
        self.timezone = timezone
        self.route = route
        self.also_route: list[str] = []  # a second route every mail is also queued on ([mail].also_route)
        self.queue = queue
        self.hook = hook
        self.history = history
        self.group_wait = group_wait
        self.subject_prefix = subject_prefix
        self.context_for = context_for
        self.silences = silences if silences is not None else SilenceSet()
        self.storm = StormGuard(max_mails_per_hour, digest_interval)
        self.rules = {rule.name: rule for rule in rules}
        self.render_options = dict(render_options or {})  # more RenderContext fields: charts, templates_dir, units
        from alertmail.units import mail_domain

        self.domain = mail_domain(sender, hostname)  # Message-IDs: a fully qualified name, never the short host name
        self.state_dir = Path(state_dir)
        self.incidents_file = self.state_dir / "incidents.json"
        self.incidents: dict[str, Incident] = self._load_incidents()
        self.held_file = self.state_dir / "silenced.json"
        self.held: dict[str, Held] = self._load_held()
        self.journal = Journal(self.state_dir / "logs" / "alerts.jsonl")
        self._seal_key = seal_key  # STATE_DIR/alerts.key, read (or made) with the first mail
        self._waiting: dict[tuple[str, ...], list[AlertEvent]] = {}
        self._flush_at: dict[tuple[str, ...], float] = {}
        self._last_mail: dict[tuple[str, ...], float] = {}  # when each set of recipients last got a mail
        self._unsent: list[Outgoing] = []
        self._retry: list[tuple[float, list[AlertEvent]]] = []  # events no mail could be made of, and when to try again
        self._lock = asyncio.Lock()
        self.durable = durable  # fsync the state files (off for replays, whose state is thrown away)
        self._dirty: set[str] = set()  # state files to write at the end of this flush
        self.counts: Counter[str] = Counter()  # mails queued by kind, events "silenced" and "folded"; for /metrics

    def configure_noise(self, cfg: Any, rules: Sequence[Rule] = ()) -> None:
        """Take ``[notify]`` storm settings and ``[[silences]]`` from a config (at start and on reload)."""
        from alertmail.notify.runtime_silences import from_config

        notify = cfg.sections.get("notify", {})
        self.storm.max_per_hour = notify.get("max_mails_per_hour") or 0
        self.storm.digest_interval = notify.get("digest_interval") or 900.0
        self.silences = from_config(cfg)  # the run-time file is read again at the next flush
        self.rules = {rule.name: rule for rule in rules} or self.rules
        for held in self.held.values():  # restored from disk with a stand-in rule: take the configured one
            held.event = replace(held.event, rule=self.rules.get(held.event.rule.name, held.event.rule))

    # -- incidents ---------------------------------------------------------
    def _load_incidents(self) -> dict[str, Incident]:
        try:
            raw = json.loads(self.incidents_file.read_text())
            return {k: Incident.from_json(v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.error("%s is unreadable (%s); threading of open incidents starts anew", self.incidents_file, exc)
            return {}

    def _save_incidents(self) -> None:
        data = {k: v.__dict__ for k, v in self.incidents.items()}
        write_atomic(self.incidents_file, json.dumps(data, separators=(",", ":")).encode(), sync=self.durable)

    def _load_held(self) -> dict[str, Held]:
        try:
            raw = json.loads(self.held_file.read_text())
            return {k: Held(event_from_json(v["event"], self.rules), v["silence"], v["announced"]) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError, KeyError) as exc:
            log.error("%s is unreadable (%s); alerts held by silences are forgotten", self.held_file, exc)
            return {}

    def _save_held(self) -> None:
        data = {
            k: {"event": event_to_json(h.event), "silence": h.silence, "announced": h.announced} for k, h in self.held.items()
        }
        try:
            write_atomic(self.held_file, json.dumps(data, separators=(",", ":")).encode(), sync=self.durable)
        except OSError as exc:
            log.error("cannot save %s: %s", self.held_file, exc)

    def recipients_for(self, event: AlertEvent) -> tuple[str, ...]:
        known = self.incidents.get(event.incident)
        if known and event.kind != "firing":
            return tuple(known.to)
        return tuple(event.rule.to)

    # -- silences ----------------------------------------------------------
    def _silence(self, event: AlertEvent, now: float) -> str | None:
        """The id of the silence that keeps this event from being mailed, or None."""
        announced = event.incident in self.incidents
        if announced and closes(event):
            return None  # the recovery of a mailed incident closes a thread people have open
        silence = self.silences.match(event, now)
        return silence.id if silence is not None else None

    def _hold(self, event: AlertEvent, silence: str) -> None:
        if closes(event):
            self.held.pop(event.incident, None)  # ended while silenced: no mail at all
        else:
            announced = event.incident in self.incidents
            self.held[event.incident] = Held(event, silence, announced)
        self._dirty.add("held")

    def _release(self, now: float) -> list[AlertEvent]:
        """Events for held incidents no silence covers any more: one mail each."""
        out = []
        for incident, held in list(self.held.items()):
            if self.silences.match(held.event, now) is not None:
                continue
            del self.held[incident]
            event = held.event
            if event.kind != "flapping":
                # One mail with the incident's state now: the firing mail, or "still firing" if mailed before.
                event = replace(event, kind="reminder" if incident in self.incidents else "firing")
            event = replace(event, at=now)
            log.info("silence over for %s %s: mailing its %s", event.rule.name, dict(event.labels), event.kind)
            self.journal.record(event, "released", now)
            out.append(event)
        if out:
            self._dirty.add("held")
        return out

    # -- the flow ----------------------------------------------------------
    async def notify(self, events: Sequence[AlertEvent], now: float | None = None) -> None:
        """Take events; mail them now or after ``group_wait``, grouped by recipients.

        ``group_wait`` works on the leading edge: an event for recipients who have no mail
        waiting and got none within the last ``group_wait`` is mailed at once (by the flush
        at the end of this call); events that follow within ``group_wait`` of that mail are
        batched into the next one, sent when that ``group_wait`` ends. (Alertmanager's terms:
        ``group_wait`` 0 for a new group, ``group_interval`` = our ``group_wait`` after it.)
        """
        now = time.time() if now is None else now
        self.silences.refresh(now)
        self._enqueue(self._release(now), now)
        for event in events:
            if self.hook is not None:
                try:
                    self.hook.alert_event(event=event)
                except Exception:
                    log.exception("an alert_event observer failed")
            silence = self._silence(event, now)
            if silence is not None:
                log.info("silenced by %s: %s %s %s", silence, event.kind, event.rule.name, dict(event.labels))
                self.journal.record(event, f"silenced:{silence}", now)
                self._hold(event, silence)
                self.counts["silenced"] += 1
                continue
            if event.incident in self.held:
                self.held.pop(event.incident)  # a later event of it goes out normally
                self._dirty.add("held")
            self.journal.record(event, "notified", now)
            self._enqueue([event], now)
        await self.flush(now)

    def _enqueue(self, events: Sequence[AlertEvent], now: float) -> None:
        for event in events:
            rcpts = self.recipients_for(event)
            if not rcpts:
                log.warning("alert %s has no recipients; set [mail].to or the rule's to", event.rule.name)
                continue
            waiting = self._waiting.setdefault(rcpts, [])
            if event.kind == "reminder" and any(w.incident == event.incident for w in waiting):
                continue  # a reminder of a mail that has not gone out yet says nothing new
            waiting.append(event)
            if rcpts not in self._flush_at:
                self._flush_at[rcpts] = self._due(rcpts, now)

    def _due(self, rcpts: tuple[str, ...], now: float) -> float:
        """When a new group for ``rcpts`` goes out: at once (the leading edge) unless they had a
        mail within the last ``group_wait``; then one ``group_wait`` after that mail, and what
        arrives meanwhile joins it. Never later than ``group_wait`` from now (a clock set back)."""
        last = self._last_mail.get(rcpts)
        if last is None:
            return now
        return min(max(now, last + self.group_wait), now + self.group_wait)

    async def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Send every group whose wait is over (all of them with ``force``), then retry unsent mails.

        Also re-reads the run-time silences when their file changed, releases held
        alerts whose silence ended, and sends the digests that are due.
        """
        now = time.time() if now is None else now
        if self._lock.locked() and not force:
            # Another flush is rendering or queueing: what is due now goes with the next one (the
            # next tick), rather than a probe's observe() waiting here and overrunning its interval.
            return
        async with self._lock:
            self.silences.refresh(now)
            self._enqueue(self._release(now), now)
            for events in [events for at, events in self._retry if force or at <= now]:
                self._enqueue(events, now)
            self._retry = [(at, events) for at, events in self._retry if not (force or at <= now)]
            for rcpts in [r for r, at in self._flush_at.items() if force or at <= now]:
                events = self._waiting.pop(rcpts)
                del self._flush_at[rcpts]
                free = [r for r in rcpts if self.storm.allows(r, now)]
                for rcpt in rcpts:
                    if rcpt not in free:
                        log.info("storm cap reached for %s: %d event(s) folded into the next digest", rcpt, len(events))
                        self.storm.fold(rcpt, events, now)
                        self.counts["folded"] += len(events)
                if free:
                    # Rendering (charts) takes a while: off the event loop, which must keep serving.
                    mails, unrendered = await asyncio.to_thread(self._compose_apart, events, free, list(rcpts), now)
                    self._unsent.extend(mails)
                    if mails:
                        self.storm.sent(free, now)
                        self._last_mail[rcpts] = now
                    if unrendered:  # not mailed, so not settled: the rule states are not saved as notified
                        self._retry.append((now + RENDER_RETRY, unrendered))
                else:
                    self._track(events, list(rcpts), "")
            for rcpts in [r for r, at in self._last_mail.items() if at + self.group_wait <= now or at > now]:
                del self._last_mail[rcpts]  # quiet for a group_wait: their next alert leads again
            for rcpt, backlog in self.storm.due(now, force=force):
                self._unsent.append(await asyncio.to_thread(self._compose_digest, backlog.events, backlog.since, rcpt, now))
            self._save()
            while self._unsent:
                out = self._unsent[0]
                if out.routes is None:  # one queued message per route, each with its own retries
                    out.routes = [self.route, *([self.also_route] if self.also_route else [])]
                try:
                    msg_id = await self.queue.put(out.data, out.envelope, route=out.routes[0], origin="agent")
                except OSError as exc:
                    log.error("cannot queue %r yet (%s); kept in memory, retrying", out.subject, exc)
                    return
                out.routes.pop(0)
                if out.routes:
                    log.info(
                        "queued %s on %s; also queued on %s next", msg_id, " -> ".join(self.route), " -> ".join(out.routes[0])
                    )
                    continue
                self._unsent.pop(0)
                self.counts[out.kind] += 1
                self.journal.mail(out.subject, out.envelope.recipients, out.kind, now, str(msg_id))
                log.info("queued %s for %s: %s", msg_id, ", ".join(out.envelope.recipients), out.subject)

    def shift(self, delta: float) -> None:
        """The wall clock was stepped by ``delta`` seconds: move the group waits, the storm cap's hour and
        digests, and the times of the events waiting, so every wait runs on the monotonic clock and the
        mails show times of the wall clock after the step."""
        if not delta:
            return
        for rcpts in self._flush_at:
            self._flush_at[rcpts] += delta
        for rcpts in self._last_mail:
            self._last_mail[rcpts] += delta
        self.storm.shift(delta)
        for rcpts, waiting in self._waiting.items():
            self._waiting[rcpts] = [event.shifted(delta) for event in waiting]
        self._retry = [(at + delta, [event.shifted(delta) for event in events]) for at, events in self._retry]
        for backlog in self.storm.backlog.values():
            backlog.events[:] = [event.shifted(delta) for event in backlog.events]
        for held in self.held.values():
            held.event = held.event.shifted(delta)
            self._dirty.add("held")

    @property
    def settled(self) -> bool:
        """True when every event handed over is queued or held on disk: nothing lives only in memory."""
        return not self._waiting and not self._unsent and not self._retry and self.storm.next_due is None

    @property
    def next_flush(self) -> float | None:
        """When the next group or digest is due (None: nothing waits)."""
        times = [
            t
            for t in (
                min(self._flush_at.values(), default=None),
                self.storm.next_due,
                min((at for at, _ in self._retry), default=None),
            )
            if t is not None
        ]
        return min(times, default=None)

    def _track(self, events: Sequence[AlertEvent], incident_to: list[str], message_id: str) -> list[str]:
        """Open and close incident records for ``events``; the roots a mail about them replies to."""
        roots = []
        for event in events:
            known = self.incidents.get(event.incident)
            if known is None:
                if not closes(event):
                    self.incidents[event.incident] = Incident(root=message_id, to=incident_to, rule=event.rule.name)
            elif known.root and known.root not in roots:
                roots.append(known.root)
            if known is not None and not known.root and message_id:
                known.root = message_id  # announced first in a digest: later mails thread under this one
        for event in events:
            if closes(event):
                self.incidents.pop(event.incident, None)
        self._dirty.add("incidents")
        return roots

    def _save(self) -> None:
        """Write the state files changed since the last call: once per flush, not once per event."""
        if "held" in self._dirty:
            self._save_held()
        if "incidents" in self._dirty:
            try:
                self._save_incidents()
            except OSError as exc:
                log.error("cannot save %s: %s", self.incidents_file, exc)
        self._dirty.clear()

    def _headers(self, msg: EmailMessage, to: list[str], message_id: str, now: float) -> None:
        from alertmail.render.format import mailboxes

        for header in ("From", "To", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted"):
            del msg[header]
        msg["From"] = mailboxes([self.sender], f"alertmail on {self.hostname}")
        msg["To"] = mailboxes(to)
        msg["Date"] = email.utils.formatdate(now, usegmt=True)
        msg["Message-ID"] = message_id
        msg["Auto-Submitted"] = "auto-generated"

    def _compose_apart(
        self, events: list[AlertEvent], to: list[str], incident_to: list[str], now: float
    ) -> tuple[list[Outgoing], list[AlertEvent]]:
        """The mails for a group, and the events none could be made for.

        When the group's mail cannot be rendered, each event gets a mail of its own, and
        one that still fails a plain-text one: one bad alert never holds back the others.
        """
        try:
            return [self._compose(events, to, incident_to, now)], []
        except Exception:
            log.exception("rendering the mail of %d alert(s) failed; mailing each on its own", len(events))
        mails, unrendered = [], []
        for event in events:
            if len(events) > 1:
                try:
                    mails.append(self._compose([event], to, incident_to, now))
                    continue
                except Exception:
                    log.exception("rendering the mail of %s %s failed", event.rule.name, dict(event.labels))
            self.journal.record(event, "render-failed", now)
            try:
                mails.append(self._compose([event], to, incident_to, now, plain=True))
            except Exception:
                log.exception("even a plain mail of %s failed; trying again in %gs", event.rule.name, RENDER_RETRY)
                unrendered.append(event)
        return mails, unrendered

    def _compose(
        self, events: list[AlertEvent], to: list[str], incident_to: list[str], now: float, *, plain: bool = False
    ) -> Outgoing:
        # The rendering code loads with the first mail (in the composing thread), not with the idle agent.
        from alertmail.render.view import worst_first

        events = worst_first(events)  # renderers (plugins too) get the worst news first
        msg = self._render(events, plain=plain)
        message_id = email.utils.make_msgid(idstring=events[0].incident[:16], domain=self.domain)
        roots = self._roots(events)
        self._headers(msg, to, message_id, now)
        if roots:
            msg["In-Reply-To"] = roots[0]
            msg["References"] = " ".join(roots)
        msg["X-Alertmail-Incident"] = " ".join(sorted({e.incident for e in events}))
        kinds = sorted({e.kind for e in events})
        msg["X-Alertmail-Kind"] = ",".join(kinds)
        self.seal(msg, encode_alerts(events, self.hostname), now)  # the facts, for transports such as alertmanager
        data = message_bytes(msg)
        self._track(events, incident_to, message_id)  # only once the mail exists: a failure above opens no incident
        return Outgoing(data, Envelope(self.sender, tuple(to)), str(msg["Subject"]))

    def _roots(self, events: Sequence[AlertEvent]) -> list[str]:
        """The Message-IDs of the mails that opened the incidents of ``events``: what a mail about them replies to."""
        roots: list[str] = []
        for event in events:
            known = self.incidents.get(event.incident)
            if known is not None and known.root and known.root not in roots:
                roots.append(known.root)
        return roots

    def _compose_digest(self, events: list[AlertEvent], since: float, rcpt: str, now: float) -> Outgoing:
        msg = render_digest(events, since, self.storm, self._context_base(), self.journal.path)
        message_id = email.utils.make_msgid(idstring="digest", domain=self.domain)
        for event in events:
            known = self.incidents.get(event.incident)
            if known is not None and not known.root:
                known.root = message_id
        self._headers(msg, [rcpt], message_id, now)
        msg["X-Alertmail-Kind"] = "digest"
        msg["X-Alertmail-Digest"] = str(len(events))
        self.seal(msg, encode_alerts(events, self.hostname), now)
        for event in events:
            self.journal.record(event, f"digest:{rcpt}", now)
        return Outgoing(message_bytes(msg), Envelope(self.sender, (rcpt,)), str(msg["Subject"]), "digest")

    def seal(self, msg: EmailMessage, alerts: str | None, now: float) -> None:
        """Put ``alerts`` (the ``X-Alertmail-Alerts`` value; None for mail without alerts) into ``msg`` with the
        agent's seal: the alertmanager transport takes alerts only from sealed mail, never from what a
        relayed message's headers claim."""
        if alerts is not None:
            msg[ALERTS_HEADER] = alerts
        try:
            key = self._seal_key = self._seal_key or alert_key(self.state_dir)
        except (OSError, ValueError) as exc:
            key = None
            log.error("cannot read or make the sealing key (%s): this mail is not taken as an alert by alertmanager", exc)
        if key is not None:
            msg[SEAL_HEADER] = seal([alerts] if alerts is not None else [], key, now)

    def _context_base(self) -> RenderContext:
        from alertmail.render.view import RenderContext

        # A digest uses the user's templates and the probes' units as alert mails do; it has no charts.
        known = {k: v for k, v in self.render_options.items() if k in ("templates_dir", "units", "config_path", "label_names")}
        return RenderContext(hostname=self.hostname, timezone=self.timezone, subject_prefix=self.subject_prefix, **known)

    def _render(self, events: list[AlertEvent], *, plain: bool = False) -> EmailMessage:
        from alertmail.render.format import header_safe
        from alertmail.render.mail import plain_alert, render_alert
        from alertmail.render.view import RenderContext

        ctx = RenderContext(
            hostname=self.hostname,
            timezone=self.timezone,
            subject_prefix=self.subject_prefix,
            history=self.history or (lambda metric, labels: ()),
            extra={} if plain else self._context(events),
            **self.render_options,
        )
        if plain:
            return plain_alert(events, ctx)
        if self.hook is not None:
            try:
                custom = self.hook.render_alert(alert=events, context=ctx)
            except Exception:
                log.exception("a render_alert plugin failed; using the built-in renderer")
                custom = None
            if isinstance(custom, EmailMessage):
                # A plugin's subject is as untrusted as probe data.
                subject = header_safe(custom.get("Subject", ""), limit=250)
                del custom["Subject"]
                custom["Subject"] = subject
                return custom
        return render_alert(events, ctx)

    def _context(self, events: list[AlertEvent]) -> dict:
        if self.context_for is None:
            return {}
        try:
            return self.context_for(events)
        except Exception:
            log.exception("collecting context for the mail failed; sending it without")
            return {}
