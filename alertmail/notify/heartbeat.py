"""The heartbeat: a "still watching" mail on a schedule, and the journal it summarises.

``[heartbeat] every = "1d"`` (or ``"7d"`` with ``day = "mon"``) ``at = "08:00"`` in
``[agent].timezone`` mails ``to`` (default ``[mail].to``) a summary of the period:
alert events by kind, time spent firing per rule, what silences held back and which
silences are in force, and the queue's state. Its absence is the signal: a
recipient who does not get it knows the agent (or the mail path) is down.

The journal (``state_dir/logs/alerts.jsonl``) gets one JSON line per alert event the
notifier handled, with its fate (``notified``, ``silenced:ID``, ``released``,
``digest:RCPT``); and one per mail queued. It rotates to ``alerts.jsonl.1`` at 2 MB.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from alertmail.config.schema import Checker, Option, Section
from alertmail.units import format_duration, valid_address

log = logging.getLogger("alertmail.notify.heartbeat")

HEARTBEAT_OPTIONS: dict[str, Option] = {
    "every": Option(
        "duration", None, help='send a heartbeat this often: "1d" (daily at `at`) or "7d" (weekly on `day`); unset = off'
    ),
    "at": Option("str", "08:00", help="time of day of a daily or weekly heartbeat, in [agent].timezone"),
    "day": Option("str", "mon", help="day of a weekly heartbeat", choices=("mon", "tue", "wed", "thu", "fri", "sat", "sun")),
    "to": Option("list", [], addresses=True, help="recipients; default: [mail].to"),
}

ROTATE_AT = 2 * 1024 * 1024
DAY = 86400.0
WEEK = 7 * DAY


# -- the summary -------------------------------------------------------------------


@dataclass
class RuleSummary:
    rule: str
    events: dict[str, int] = field(default_factory=dict)  # kind -> count
    firing_seconds: float = 0.0
    incidents: int = 0  # fired in the period
    open: int = 0  # still firing at the end of the period


@dataclass
class Summary:
    """What happened between ``start`` and ``end``: pure data from the journal and the queue."""

    start: float
    end: float
    rules: dict[str, RuleSummary]
    silenced: int  # events held back by silences
    mails: dict[str, int]  # kind ("alert", "digest") -> mails queued
    mail_ids: list[str]  # queue ids of those mails
    queue: dict[str, Any]
    silences: list[str]  # descriptions of silences in force at the end
    # What the agent watches: "probes" (names), "intervals" (seconds), "rules" (count), "missed" (probe -> runs)
    watching: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> int:
        return sum(sum(r.events.values()) for r in self.rules.values())


_ENDS = ("resolved",)


def summarise(
    lines: Iterable[Mapping[str, Any]],
    start: float,
    end: float,
    *,
    queue: Mapping[str, Any] | None = None,
    silences: Sequence[str] = (),
) -> Summary:
    """Fold journal lines (which may begin before ``start``) into the summary of [start, end)."""
    rules: dict[str, RuleSummary] = {}
    opened: dict[str, tuple[str, float]] = {}  # incident -> (rule, firing since)
    silenced = 0
    mails: dict[str, int] = {}
    mail_ids: list[str] = []
    for line in sorted(lines, key=lambda x: x["t"]):
        t = line["t"]
        if t >= end:
            break
        if "mail" in line:
            if t >= start:
                mails[line.get("kind", "alert")] = mails.get(line.get("kind", "alert"), 0) + 1
                if line.get("id"):
                    mail_ids.append(str(line["id"]))
            continue
        fate = str(line.get("fate", ""))
        if fate.startswith("digest:") or fate == "render-failed":
            continue  # the same event was counted when it was notified
        rule, kind, incident = line.get("rule", "?"), line.get("kind", "?"), line.get("incident", "")
        if fate != "released":  # a released event is the mail for one counted before
            if t >= start:
                summary = rules.setdefault(rule, RuleSummary(rule))
                summary.events[kind] = summary.events.get(kind, 0) + 1
                if fate.startswith("silenced"):
                    silenced += 1
        if kind == "firing" and incident not in opened:
            opened[incident] = (rule, t)
            if t >= start:
                rules.setdefault(rule, RuleSummary(rule)).incidents += 1
        elif kind in _ENDS or (kind == "flap-ended" and line.get("state") == "ok"):
            if incident in opened:
                name, began = opened.pop(incident)
                _add_firing(rules, name, began, t, start)
    for name, began in opened.values():
        _add_firing(rules, name, began, end, start)
        rules[name].open += 1
    return Summary(start, end, rules, silenced, mails, mail_ids, dict(queue or {}), list(silences))


def _add_firing(rules: dict[str, RuleSummary], rule: str, began: float, ended: float, start: float) -> None:
    seconds = ended - max(began, start)
    if seconds > 0:
        rules.setdefault(rule, RuleSummary(rule)).firing_seconds += seconds


def mail_outcomes(ids: Iterable[str], queue: Any, badmail_folder: Path | None) -> dict[str, int]:
    """Where the mails with these queue ids are now: still queued, given up (badmail), else delivered."""
    out = {"delivered": 0, "waiting": 0, "failed": 0}
    for msg_id in ids:
        if queue is not None and queue.get(msg_id) is not None:
            out["waiting"] += 1
        elif badmail_folder is not None and (Path(badmail_folder) / f"{msg_id}.bad").exists():
            out["failed"] += 1
        else:
            out["delivered"] += 1
    return out


def queue_figures(queue: Any, badmail_folder: Path | None, start: float, now: float) -> dict[str, Any]:
    """Counts the queue exposes: messages waiting, deferred, the oldest, and badmail in the period."""
    entries = list(queue.entries()) if queue is not None else []
    deferred = [e for e in entries if e.attempts > 0]
    figures: dict[str, Any] = {
        "queued": len(entries),
        "deferred": len(deferred),
        "oldest_seconds": max((now - e.created for e in entries), default=0.0),
        "last_error": deferred[0].last_error if deferred else "",
        "accepted_since_start": getattr(getattr(queue, "stats", None), "puts", None),
    }
    if badmail_folder is not None:
        from alertmail.queue.badmail import Badmail

        figures["badmail"] = sum(1 for item in Badmail(badmail_folder).items() if start <= item.time < now)
    return figures


# -- the mail ------------------------------------------------------------------------


def render_heartbeat(
    summary: Summary, *, hostname: str, timezone: str, subject_prefix: str = "", templates_dir: Path | None = None
) -> EmailMessage:
    """The "still watching" mail in the alert mail's style, text and HTML (``alertmail.render.heartbeat``)."""
    # The rendering code loads with the first heartbeat, not with the idle agent.
    from alertmail.render.heartbeat import render_heartbeat_mail
    from alertmail.render.view import RenderContext

    ctx = RenderContext(hostname=hostname, timezone=timezone, subject_prefix=subject_prefix, templates_dir=templates_dir)
    return render_heartbeat_mail(summary, ctx)


def trigger_args(options: Mapping[str, Any], timezone: str) -> tuple[str, dict[str, Any]]:
    """APScheduler (trigger, kwargs) for ``[heartbeat]``: daily or weekly at ``at``, else an interval."""
    every = float(options["every"])
    hour, _, minute = str(options.get("at") or "08:00").partition(":")
    if every == DAY:
        return "cron", {"hour": int(hour), "minute": int(minute or 0), "timezone": timezone}
    if every == WEEK:
        return "cron", {
            "day_of_week": options.get("day") or "mon",
            "hour": int(hour),
            "minute": int(minute or 0),
            "timezone": timezone,
        }
    return "interval", {"seconds": every}


def check_config(options: Mapping[str, Any], check: Checker, config: Any = None) -> None:
    """Cross-key checks of ``[heartbeat]``; problems go to ``check`` (a config.Checker)."""
    for i, address in enumerate(options.get("to") or []):
        if not valid_address(address):
            check.error(f"heartbeat.to[{i}]", f"not a valid mail address: {address!r}; write it as user@example.com")
    if not options.get("every"):
        return
    at = str(options.get("at") or "")
    hour, _, minute = at.partition(":")
    if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60 and len(minute) == 2):
        check.error("heartbeat.at", f'expected a time like "08:00", got {at!r}')
    if options["every"] < 60:
        check.error("heartbeat.every", 'a heartbeat more often than every minute is noise; use "1d" or "7d"')


SECTION: Section[Any] = Section("heartbeat", HEARTBEAT_OPTIONS, check=check_config)


class Heartbeat:
    """Builds and queues the heartbeat mail from the notifier's journal and the queue's state."""

    def __init__(
        self,
        *,
        options: Mapping[str, Any],
        notifier: Any,
        queue: Any,
        badmail_folder: Path | None,
        default_to: Sequence[str],
        watching: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.every = float(options["every"])
        self.to = list(options.get("to") or default_to)
        self.notifier = notifier
        self.queue = queue
        self.badmail_folder = badmail_folder
        self.watching = watching  # what the agent watches now, for the mail's "watching" line
        # The agent counts missed probe runs from its start; the mail tells those since the previous
        # heartbeat: the counts it last reported, and when (None: nothing reported since the start).
        self.missed_reported: dict[str, int] = {}
        self.missed_since: float | None = None
        self._missed_now: dict[str, int] = {}

    def compose(self, now: float) -> EmailMessage:
        n = self.notifier
        start = now - self.every
        # Incidents that began before the period still count their firing time within it.
        lines = n.journal.read(since=start - 4 * self.every)
        n.silences.refresh(now)
        summary = summarise(
            lines,
            start,
            now,
            queue=queue_figures(self.queue, self.badmail_folder, start, now),
            silences=[
                f"{s.id}: {s.describe_matchers()}; {s.schedule.describe(n.timezone)}" + (f" — {s.comment}" if s.comment else "")
                for s in n.silences.active(now)
            ],
        )
        summary.queue["mail_outcomes"] = mail_outcomes(summary.mail_ids, self.queue, self.badmail_folder)
        if self.watching is not None:
            try:
                summary.watching = self._since_last(self.watching())
            except Exception:  # a nicety: the heartbeat goes without it
                log.exception("heartbeat: what the agent watches could not be read")
        return render_heartbeat(
            summary,
            hostname=n.hostname,
            timezone=n.timezone,
            subject_prefix=n.subject_prefix,
            templates_dir=n.render_options.get("templates_dir"),
        )

    def _since_last(self, watching: dict[str, Any]) -> dict[str, Any]:
        """``watching`` with its missed runs counted since the previous heartbeat rather than the agent's start."""
        counts = {str(k): int(v) for k, v in (watching.get("missed") or {}).items()}
        self._missed_now = counts
        reported = self.missed_reported
        since_last = {k: max(0, n - reported.get(k, 0)) for k, n in counts.items()}
        return {**watching, "missed": {k: n for k, n in since_last.items() if n}, "missed_since": self.missed_since}

    def carry_over(self, previous: Heartbeat) -> None:
        """Take over what the heartbeat a reload replaces had reported."""
        self.missed_reported, self.missed_since = previous.missed_reported, previous.missed_since

    async def send(self, now: float | None = None) -> str | None:
        """Queue the heartbeat; the queue id, or None when there is nobody to send it to."""
        import email.policy
        import email.utils
        import time

        from alertmail.model import Envelope, message_bytes
        from alertmail.render.format import mailboxes

        now = time.time() if now is None else now
        if not self.to:
            log.warning("heartbeat: no recipients; set [heartbeat].to or [mail].to")
            return None
        n = self.notifier
        msg = self.compose(now)
        msg["From"] = mailboxes([n.sender], f"alertmail on {n.hostname}")
        msg["To"] = mailboxes(self.to)
        msg["Date"] = email.utils.format_datetime(datetime.fromtimestamp(now, UTC))  # "+0000": UTC; "-0000" means unknown
        msg["Message-ID"] = email.utils.make_msgid(idstring="heartbeat", domain=n.domain)
        msg["Auto-Submitted"] = "auto-generated"
        msg["X-Alertmail-Kind"] = "heartbeat"
        n.seal(msg, None, now)  # the agent's own mail: nothing for Alertmanager, not mail to pass on
        msg_id = await self.queue.put(message_bytes(msg), Envelope(n.sender, tuple(self.to)), route=n.route, origin="agent")
        n.journal.mail(str(msg["Subject"]), self.to, "heartbeat", now, msg_id)
        if self.watching is not None:
            self.missed_reported, self.missed_since = self._missed_now, now
        log.info("heartbeat %s queued for %s", msg_id, ", ".join(self.to))
        return msg_id


def watching(agent: Any) -> dict[str, Any]:
    """What ``agent`` (an alertmail.agent.Agent) watches: its probes, their intervals, its rules, missed runs."""
    return {
        "probes": sorted(agent.probes),
        "intervals": [interval for _, interval, _ in agent.probes.values()],
        "rules": len(agent.rules),
        "missed": dict(agent.missed),
    }


def schedule(scheduler: Any, agent: Any) -> Heartbeat | None:
    """Add (or replace) the heartbeat job of ``agent`` (an alertmail.agent.Agent) per its ``[heartbeat]``."""
    job = scheduler.get_job("heartbeat")
    previous = getattr(job.func, "__self__", None) if job else None
    if job:
        scheduler.remove_job("heartbeat")
    options = agent.cfg.sections.get("heartbeat") or {}
    if not options.get("every"):
        return None
    heartbeat = Heartbeat(
        options=options,
        notifier=agent.notifier,
        queue=agent.queue,
        badmail_folder=agent.state_dir / "badmail",
        default_to=agent.cfg.mail["to"],
        watching=lambda: watching(agent),
    )
    if isinstance(previous, Heartbeat):  # a reload: the missed runs already reported stay reported
        heartbeat.carry_over(previous)
    trigger, kwargs = trigger_args(options, agent.cfg.agent["timezone"])
    # A heartbeat late by a stalled loop is still worth sending: an hour of grace, and never two at once.
    scheduler.add_job(
        heartbeat.send,
        trigger,
        id="heartbeat",
        name="heartbeat",
        coalesce=True,
        max_instances=1,
        misfire_grace_time=3600,
        **kwargs,
    )
    log.info("heartbeat to %s every %s", ", ".join(heartbeat.to) or "nobody", format_duration(heartbeat.every))
    return heartbeat
