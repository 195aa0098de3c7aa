"""The heartbeat mail, "still watching", in the alert mail's style: what the agent watched, what fired,
what it mailed and how its queue stands.

Pure: ``heartbeat_variables`` takes the period's summary (``alertmail.notify.heartbeat.Summary``,
read by its attributes) and returns what ``heartbeat.txt.j2`` and ``heartbeat.html.j2`` see
(docs/templates.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from alertmail.render.format import header_safe
from alertmail.render.view import COLOURS, SEVERITY_COLOURS, RenderContext
from alertmail.units import format_duration


@dataclass(frozen=True)
class RuleRow:
    """One rule's period: how often it fired, for how long, whether it still fires, its events by kind."""

    rule: str
    fired: int
    firing_for: str
    open: int
    events: str


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def heartbeat_variables(summary: Any, ctx: RenderContext) -> dict[str, Any]:
    host = header_safe(ctx.hostname)
    every = format_duration(summary.end - summary.start)
    stamp = "%Y-%m-%d %H:%M %Z"
    period = f"{ctx.local_time(summary.start):{stamp}} to {ctx.local_time(summary.end):{stamp}}"
    rules = sorted(summary.rules.values(), key=lambda r: (-r.open, -r.firing_seconds, r.rule))
    rows = [
        RuleRow(
            rule=header_safe(r.rule),
            fired=r.incidents,
            firing_for=format_duration(r.firing_seconds) if r.firing_seconds else "-",
            open=r.open,
            events=", ".join(f"{n} {header_safe(k, 30)}" for k, n in sorted(r.events.items())) or "-",
        )
        for r in rules
    ]
    firing_now = sum(r.open for r in rules)
    open_rules = [row.rule for row in rows if row.open]
    subject = f"[OK] {host}: alertmail still watching — {summary.events} alert events"
    if firing_now:
        subject += f", {firing_now} firing now"
    if ctx.subject_prefix:
        subject = f"{ctx.subject_prefix} {subject}"
    facts: list[tuple[str, str]] = [("period", period)]
    watching = getattr(summary, "watching", None) or {}
    if watching:
        probes = [header_safe(p, 60) for p in watching.get("probes", ())]
        said = _plural(len(probes), "probe") + (f" ({', '.join(probes)})" if probes else "")
        if watching.get("intervals"):
            low, high = min(watching["intervals"]), max(watching["intervals"])
            said += f" every {format_duration(low)}" + (f" to {format_duration(high)}" if high != low else "")
        said += f", {_plural(int(watching.get('rules', 0)), 'rule')}"
        facts.append(("watching", said))
        missed = {header_safe(k, 60): int(v) for k, v in (watching.get("missed") or {}).items() if v}
        if missed:
            runs = ", ".join(f"{k} {n}" for k, n in sorted(missed.items()))
            since = watching.get("missed_since")
            when = f"since the previous heartbeat ({ctx.clock(since, summary.end)})" if since else "since the agent started"
            facts.append(("missed runs", f"{runs} {when}: runs the agent was too stalled to start on time"))
    facts.append(("alerts", f"{summary.events} events, {summary.silenced} of them held back by silences"))
    facts.append(("firing now", f"{firing_now} ({', '.join(open_rules)})" if firing_now else "nothing"))
    queued = sum(summary.mails.values())
    mails = f"{queued} queued in the period"
    if queued:
        mails += f" ({', '.join(f'{n} {header_safe(k, 30)}' for k, n in sorted(summary.mails.items()))})"
    q = summary.queue
    outcomes = q.get("mail_outcomes")
    if outcomes and queued:
        mails += f": {outcomes['delivered']} delivered, {outcomes['waiting']} waiting, {outcomes['failed']} given up"
    facts.append(("mails", mails))
    if q:
        waiting = int(q.get("queued", 0))
        oldest = f", oldest {format_duration(q.get('oldest_seconds', 0))}" if waiting else ""
        badmail = q.get("badmail", 0)
        facts.append(
            ("queue", f"{waiting} waiting ({q.get('deferred', 0)} deferred{oldest}); given up (badmail) in the period: {badmail}")
        )
        if q.get("accepted_since_start") is not None:
            facts.append(("accepted", f"{q['accepted_since_start']} messages into the queue since the agent started"))
        if q.get("last_error"):
            facts.append(("last error", header_safe(q["last_error"], 300)))
    silences = [header_safe(s, 300) for s in summary.silences]
    facts.append(("silences", f"{len(silences)} in force now" if silences else "none in force now"))
    trouble = bool(q.get("deferred") or q.get("badmail") or (outcomes or {}).get("failed"))
    colour = SEVERITY_COLOURS["warning"] if firing_now or trouble else COLOURS["resolved"]
    headline = f"Still watching {host}: " + (f"{_plural(firing_now, 'alert')} firing now" if firing_now else "nothing firing now")
    return {
        "subject": header_safe(subject, limit=250),
        "hostname": host,
        "timezone": ctx.timezone,
        "generated_at": ctx.clock(summary.end),
        "headline": headline,
        "intro": f"This mail comes every {every}; if it stops coming, the agent or its mail path is down.",
        "colour": colour,
        "period": period,
        "every": every,
        "facts": facts,
        "rules": rows,
        "firing_now": firing_now,
        "events": summary.events,
        "silences": silences,
        "extra": ctx.extra,
    }


def text_fallback(variables: dict[str, Any]) -> str:
    """The plain text without templates: the last resort when even the built-in template fails."""
    lines = [variables["headline"], variables["intro"], ""]
    lines += [f"{key.capitalize() + ':':<12} {value}" for key, value in variables["facts"]]
    lines += ["", f"-- alertmail on {variables['hostname']}"]
    return "\n".join(lines) + "\n"


def render_heartbeat_mail(summary: Any, ctx: RenderContext) -> EmailMessage:
    """The heartbeat: Subject, text part and HTML part; no envelope headers."""
    from alertmail.render.templating import compose

    variables = heartbeat_variables(summary, ctx)
    return compose("heartbeat", variables, ctx, lambda: text_fallback(variables))


def sample_summary() -> Any:
    """A made-up day that takes every branch of the heartbeat templates (for ``alertmail check``)."""
    from types import SimpleNamespace

    end = dt.datetime(2026, 1, 15, 8, 0, tzinfo=dt.UTC).timestamp()
    disk = SimpleNamespace(rule="disk-root-full", events={"firing": 1, "resolved": 1}, firing_seconds=754.0, incidents=1, open=0)
    load = SimpleNamespace(rule="load-high", events={"firing": 1, "reminder": 2}, firing_seconds=7200.0, incidents=1, open=1)
    return SimpleNamespace(
        start=end - 86400,
        end=end,
        rules={"disk-root-full": disk, "load-high": load},
        silenced=1,
        events=5,
        mails={"alert": 3, "digest": 1},
        queue={
            "queued": 1,
            "deferred": 1,
            "oldest_seconds": 600.0,
            "badmail": 0,
            "accepted_since_start": 12,
            "last_error": "451 4.7.1 try again later",
            "mail_outcomes": {"delivered": 3, "waiting": 1, "failed": 0},
        },
        silences=["a1b2c3: rule=load-*; until 2026-01-15 10:00 CET — kernel update"],
        watching={"probes": ["cpu", "disk", "memory"], "intervals": [30.0, 60.0], "rules": 8, "missed": {"disk": 2}},
    )
