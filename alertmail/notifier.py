"""From alert events to queued mails: grouping, threading, rendering, headers.

One incident has one thread: the mail that first announced it is the root, and
its reminders and its recovery reply to it (In-Reply-To, References) and go to
the recipients the first mail went to. Incident records are kept in
``state_dir/incidents.json`` so threading survives a restart.
"""

from __future__ import annotations

import asyncio
import email.policy
import email.utils
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from alertmail.fsutil import write_atomic
from alertmail.model import Envelope
from alertmail.render import RenderContext, header_safe, render_alert
from alertmail.rules import AlertEvent

log = logging.getLogger("alertmail.notifier")

_DOMAIN_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")


@dataclass
class Incident:
    """What is remembered of one incident between its mails."""

    root: str  # Message-ID of the first mail about it
    to: list[str]
    rule: str
    references: list[str] = field(default_factory=list)


@dataclass
class Outgoing:
    """A rendered mail waiting for the queue (kept in memory while the queue cannot take it)."""

    data: bytes
    envelope: Envelope
    subject: str


class Notifier:
    def __init__(
        self,
        *,
        sender: str,
        hostname: str,
        timezone: str,
        route: list[str],
        queue: Any,
        state_dir: Path,
        hook: Any = None,
        history: Callable[[str, Any], Sequence[tuple[float, float]]] | None = None,
        group_wait: float = 0.0,
        subject_prefix: str = "",
        context_for: Callable[[Sequence[AlertEvent]], dict] | None = None,
    ) -> None:
        self.sender = sender
        self.hostname = hostname
        self.timezone = timezone
        self.route = route
        self.queue = queue
        self.hook = hook
        self.history = history
        self.group_wait = group_wait
        self.subject_prefix = subject_prefix
        self.context_for = context_for
        self.domain = _DOMAIN_UNSAFE.sub("-", hostname).strip("-.") or "localhost"
        self.incidents_file = Path(state_dir) / "incidents.json"
        self.incidents: dict[str, Incident] = self._load_incidents()
        self._waiting: dict[tuple[str, ...], list[AlertEvent]] = {}
        self._flush_at: dict[tuple[str, ...], float] = {}
        self._unsent: list[Outgoing] = []
        self._lock = asyncio.Lock()

    # -- incidents ---------------------------------------------------------
    def _load_incidents(self) -> dict[str, Incident]:
        try:
            raw = json.loads(self.incidents_file.read_text())
            return {k: Incident(**v) for k, v in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, TypeError) as exc:
            log.error("%s is unreadable (%s); threading of open incidents starts anew", self.incidents_file, exc)
            return {}

    def _save_incidents(self) -> None:
        data = {k: v.__dict__ for k, v in self.incidents.items()}
        write_atomic(self.incidents_file, json.dumps(data, indent=1).encode())

    def recipients_for(self, event: AlertEvent) -> tuple[str, ...]:
        known = self.incidents.get(event.incident)
        if known and event.kind != "firing":
            return tuple(known.to)
        return tuple(event.rule.to)

    # -- the flow ----------------------------------------------------------
    async def notify(self, events: Sequence[AlertEvent], now: float | None = None) -> None:
        """Take events; mail them now or after ``group_wait``, grouped by recipients."""
        now = time.time() if now is None else now
        for event in events:
            if self.hook is not None:
                try:
                    self.hook.alert_event(event=event)
                except Exception:
                    log.exception("an alert_event observer failed")
            rcpts = self.recipients_for(event)
            if not rcpts:
                log.warning("alert %s has no recipients; set [mail].to or the rule's to", event.rule.name)
                continue
            self._waiting.setdefault(rcpts, []).append(event)
            # A firing opens the window; later events join the mail it will become.
            self._flush_at.setdefault(rcpts, now + self.group_wait)
        await self.flush(now)

    async def flush(self, now: float | None = None, *, force: bool = False) -> None:
        """Send every group whose wait is over (all of them with ``force``), then retry unsent mails."""
        now = time.time() if now is None else now
        async with self._lock:
            for rcpts in [r for r, at in self._flush_at.items() if force or at <= now]:
                events = self._waiting.pop(rcpts)
                del self._flush_at[rcpts]
                self._unsent.append(self._compose(events, list(rcpts), now))
            while self._unsent:
                out = self._unsent[0]
                try:
                    msg_id = await self.queue.put(out.data, out.envelope, route=self.route, origin="agent")
                except OSError as exc:
                    log.error("cannot queue %r yet (%s); kept in memory, retrying", out.subject, exc)
                    return
                self._unsent.pop(0)
                log.info("queued %s for %s: %s", msg_id, ", ".join(out.envelope.recipients), out.subject)

    @property
    def next_flush(self) -> float | None:
        return min(self._flush_at.values(), default=None)

    def _compose(self, events: list[AlertEvent], to: list[str], now: float) -> Outgoing:
        msg = self._render(events)
        message_id = email.utils.make_msgid(idstring=events[0].incident[:16], domain=self.domain)
        roots = []
        for event in events:
            known = self.incidents.get(event.incident)
            if known is None:
                self.incidents[event.incident] = Incident(root=message_id, to=to, rule=event.rule.name)
            elif known.root not in roots:
                roots.append(known.root)
        for header in ("From", "To", "Date", "Message-ID", "In-Reply-To", "References", "Auto-Submitted"):
            del msg[header]
        msg["From"] = self.sender
        msg["To"] = ", ".join(to)
        msg["Date"] = email.utils.formatdate(now, localtime=False)
        msg["Message-ID"] = message_id
        if roots:
            msg["In-Reply-To"] = roots[0]
            msg["References"] = " ".join(roots)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Alertmail-Incident"] = " ".join(sorted({e.incident for e in events}))
        kinds = sorted({e.kind for e in events})
        msg["X-Alertmail-Kind"] = ",".join(kinds)
        for event in events:
            if event.kind == "resolved":
                self.incidents.pop(event.incident, None)
        try:
            self._save_incidents()
        except OSError as exc:
            log.error("cannot save %s: %s", self.incidents_file, exc)
        return Outgoing(msg.as_bytes(policy=email.policy.SMTP), Envelope(self.sender, tuple(to)), str(msg["Subject"]))

    def _render(self, events: list[AlertEvent]) -> EmailMessage:
        ctx = RenderContext(
            hostname=self.hostname,
            timezone=self.timezone,
            subject_prefix=self.subject_prefix,
            history=self.history or (lambda metric, labels: ()),
            extra=self._context(events),
        )
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
