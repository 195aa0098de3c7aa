"""The storm digest: the events a recipient's mail cap folded, as one mail in the alert mail's style.

Pure, like the alert mail: ``digest_variables`` takes the events and the words that explain the
fold and returns what ``digest.txt.j2`` and ``digest.html.j2`` see (docs/templates.md). The
worst news leads; a long storm is cut to ``MAX_ROWS`` rows, and the mail says how many more
there were, what state they were in and where each of them is recorded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

from alertmail.render.format import header_safe
from alertmail.render.view import (
    COLOURS,
    SEVERITY_COLOURS,
    SEVERITY_RANK,
    RenderContext,
    alert_view,
    recovers,
    silence_command,
    worst_first,
)
from alertmail.rules.model import AlertEvent

# Rows the table shows: a screenful or two on a phone; the rest are counted and pointed at.
MAX_ROWS = 50


def state_of(event: AlertEvent) -> str:
    """What an alert is, as its newest event says: ``firing``, ``flapping`` or ``recovered``."""
    if recovers(event):
        return "recovered"
    return "flapping" if event.kind == "flapping" else "firing"


def _count(words: dict[str, int]) -> str:
    return ", ".join(f"{n} {word}" for word, n in words.items() if n)


def digest_variables(
    events: Sequence[AlertEvent], ctx: RenderContext, *, notice: str, journal: str, since: float
) -> dict[str, Any]:
    """What the digest templates see. ``notice``: why the events were folded; ``journal``: where every
    event is recorded (a path on the host); ``since``: when the first of them was folded."""
    if not events:
        raise ValueError("a digest needs at least one event")
    events = worst_first(events)
    # An alert is an incident; its newest event in the digest says where it stands now.
    newest: dict[str, AlertEvent] = {}
    for event in sorted(events, key=lambda e: e.at):
        newest[event.incident] = event
    alerts = worst_first(list(newest.values()))
    states = {"firing": 0, "flapping": 0, "recovered": 0}
    severities: dict[str, int] = {}
    for alert in alerts:
        state = state_of(alert)
        states[state] += 1
        if state != "recovered":
            name = header_safe(alert.severity.lower(), 30)
            severities[name] = severities.get(name, 0) + 1
    open_alerts = states["firing"] + states["flapping"]
    first = alerts[0]
    tag = "RESOLVED" if recovers(first) else "FLAPPING" if first.kind == "flapping" else first.severity.upper()
    colour = (
        COLOURS["resolved"]
        if not open_alerts
        else COLOURS["flapping"]
        if first.kind == "flapping"
        else SEVERITY_COLOURS.get(first.severity.lower(), "#2874a6")
    )
    host = header_safe(ctx.hostname)
    n = len(alerts)
    tally = _count({"still firing": states["firing"], "flapping": states["flapping"], "recovered": states["recovered"]})
    rules = list(dict.fromkeys(header_safe(e.rule.name) for e in events))
    subject = f"[DIGEST] [{header_safe(tag, 30)}] {host}: {n} alert{'s' if n != 1 else ''}, {tally} — {', '.join(rules)}"
    if ctx.subject_prefix:
        subject = f"{ctx.subject_prefix} {subject}"
    by_severity = sorted(severities.items(), key=lambda kv: -SEVERITY_RANK.get(kv[0], 1))
    if states["firing"] and by_severity:
        # "9 still firing (2 critical, 7 warning), 3 recovered": the worst severity first.
        tally = tally.replace(
            f"{states['firing']} still firing",
            f"{states['firing']} still firing ({', '.join(f'{k} {s}' for s, k in by_severity)})",
            1,
        )
    end = max(e.at for e in events)
    rows = []
    for event in events[:MAX_ROWS]:
        view = alert_view(event, ctx)
        rows.append(replace(view, at=ctx.clock(event.at, end), processes=(), disk=None))
    rest = events[MAX_ROWS:]
    rest_states: dict[str, int] = {}
    for event in rest:
        word = "resolved" if recovers(event) else header_safe(event.kind, 30)
        rest_states[word] = rest_states.get(word, 0) + 1
    runbooks = list(
        dict.fromkeys((header_safe(e.rule.name), header_safe(e.rule.runbook, 2000)) for e in events if e.rule.runbook)
    )
    return {
        "subject": header_safe(subject, limit=250),
        "hostname": host,
        "timezone": ctx.timezone,
        "generated_at": ctx.clock(end),
        "headline": f"{n} alert{'s' if n != 1 else ''} on {host}: {tally}",
        "colour": colour,
        "notice": header_safe(notice, 1000),
        "folded": f"{len(events)} event{'s' if len(events) != 1 else ''} folded since {ctx.clock(since, end)}; none was dropped.",
        "rows": rows,
        "event_count": len(events),
        "alert_count": n,
        "firing": states["firing"],
        "flapping": states["flapping"],
        "recovered": states["recovered"],
        "more": len(rest),
        "more_states": _count(rest_states),
        "journal": header_safe(journal, 500),
        "rules": rules,
        "silence_command": silence_command(rules, ctx),
        "runbooks": runbooks,
        "still_open": bool(open_alerts),
        "extra": ctx.extra,
    }


def text_fallback(variables: dict[str, Any]) -> str:
    """The plain text without templates: the last resort when even the built-in template fails."""
    lines = [variables["headline"], variables["folded"], ""]
    for a in variables["rows"]:
        labels = f" [{a.labels_text}]" if a.labels else ""
        lines.append(f"  {a.state:<12} {a.severity:<8} {a.at:<9}  {a.rule}{labels}  {a.condition}")
    if variables["more"]:
        lines += ["", f"... and {variables['more']} more ({variables['more_states']}): {variables['journal']}"]
    lines += ["", f"-- alertmail on {variables['hostname']}"]
    return "\n".join(lines) + "\n"


def render_digest_mail(
    events: Sequence[AlertEvent], ctx: RenderContext, *, notice: str, journal: str, since: float
) -> EmailMessage:
    """The digest: Subject, text part and HTML part; no envelope headers."""
    from alertmail.render.templating import compose

    variables = digest_variables(events, ctx, notice=notice, journal=journal, since=since)
    return compose("digest", variables, ctx, lambda: text_fallback(variables))
