"""Rendering alert events into the subject and body of a mail (pure: values in, values out).

The notifier adds the envelope headers (From, To, Date, Message-ID, threading);
this module puts together what people read: a text part, and an HTML part with a chart
of each alert's metric as an inline image. What is said about each alert comes from
``alertmail.render.view``. Bodies come from Jinja2 templates that
users may override (``RenderContext.templates_dir``); a broken override falls back
to the built-in template with a warning, and a broken built-in one to plain text,
so an alert is never lost to its presentation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from alertmail.model import without_surrogates
from alertmail.render.format import format_labels, header_safe
from alertmail.render.templating import _environment, compose
from alertmail.render.view import (
    KIND_WORDS,
    AlertView,
    RenderContext,
    alert_view,
    chart_spec,
    chart_words,
    condition,
    recovers,
    silence_command,
    subject,
    tally,
    urgency,
    worst_first,
)
from alertmail.rules.model import AlertEvent
from alertmail.units import format_duration

log = logging.getLogger(__name__)

TEXT_TEMPLATE = "alert.txt.j2"
HTML_TEMPLATE = "alert.html.j2"


def text_body(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    """The plain-text body without templates: the last resort when even the built-in template fails."""
    lines: list[str] = []
    for event in worst_first(events):
        since = ctx.local_time(event.since)
        state = KIND_WORDS.get(event.kind, event.kind.upper())
        lines += [
            f"{state}: {header_safe(event.rule.name)} on {ctx.hostname}",
            "",
            f"  condition   {header_safe(condition(event))}",
            f"  severity    {header_safe(event.severity)}",
            f"  since       {since:%Y-%m-%d %H:%M:%S %Z} ({format_duration(event.at - event.since)} ago)",
            f"  rule        {header_safe(event.rule.name)}",
        ]
        if event.labels:
            lines.append(f"  labels      {format_labels(event.labels)}")
        if event.rule.description:
            lines.append(f"  note        {header_safe(event.rule.description, 500)}")
        lines.append("")
    lines.append(f"-- alertmail on {ctx.hostname}")
    return "\n".join(lines) + "\n"


def mail_variables(events: Sequence[AlertEvent], ctx: RenderContext) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """What templates see (docs/templates.md), and the charts as (Content-ID, PNG) pairs."""
    if not events:
        raise ValueError("a mail needs at least one event")
    events = worst_first(events)  # the worst news leads: open before recovered, critical before warning
    views = [alert_view(e, ctx) for e in events]
    detailed = max(ctx.max_charts, 0)
    shown, images = with_charts(events[:detailed], views[:detailed], ctx)
    views[:detailed] = shown
    first = views[0]
    host = header_safe(ctx.hostname)
    variables = {
        "subject": subject(events, ctx),
        "hostname": host,
        "timezone": ctx.timezone,
        "generated_at": ctx.clock(max(e.at for e in events)),
        "headline": f"{first.state} · {first.rule} on {host}" if len(views) == 1 else f"{tally(events)} on {host}",
        "colour": max(views, key=urgency).colour,
        "alerts": views,
        "detailed": shown,
        "alert_count": len(views),
        "max_charts": detailed,
        "notice": str(ctx.extra.get("notice", "")),
        "rules": list(dict.fromkeys(v.rule for v in views)),
        "silence_command": silence_command(list(dict.fromkeys(e.rule.name for e in events)), ctx),
        "still_open": any(not recovers(e) for e in events),
        "extra": ctx.extra,
    }
    return variables, images


def render_alert(events: Sequence[AlertEvent], ctx: RenderContext) -> EmailMessage:
    """The message for one or more events: Subject and body (text, HTML, charts); no envelope headers."""
    if not events:
        raise ValueError("render_alert needs at least one event")
    variables, images = mail_variables(events, ctx)
    return compose("alert", variables, ctx, lambda: text_body(events, ctx), images)


def plain_alert(events: Sequence[AlertEvent], ctx: RenderContext) -> EmailMessage:
    """The last resort when a mail of ``events`` cannot be rendered: one text part, every value made encodable."""
    try:
        text = text_body(events, ctx)
    except Exception:
        log.exception("even the plain text of the mail failed; sending the bare facts")
        text = "".join(
            f"{e.kind}: {e.rule.name} {e.rule.metric} {format_labels(e.labels)} value {e.value!r} since {e.since!r}\n"
            for e in events
        )
    first = events[0]
    more = f" and {len(events) - 1} more" if len(events) > 1 else ""
    msg = EmailMessage()
    msg["Subject"] = header_safe(
        f"{KIND_WORDS.get(first.kind, first.kind.upper())}: {first.rule.name}{more} on {ctx.hostname}", limit=250
    )
    msg.set_content(without_surrogates(text))
    return msg


def sample_variables() -> list[tuple[str, dict[str, Any]]]:
    """Made-up mails that take every branch of the built-in templates: (what it is, its variables)."""
    from alertmail.render.context import ProcessRow
    from alertmail.rules.model import Rule

    at = 1_768_482_180.0
    disk = Rule(
        name="disk-root-full",
        metric="disk.used_percent",
        above=90,
        clear=85,
        severity="critical",
        description="Root filesystem nearly full.",
        runbook="https://wiki.example.com/runbooks/disk-full",
    )
    cpu = Rule(name="cpu-busy", metric="cpu.percent", above=85, severity="warning", repeat=3600)
    gone = Rule(name="backup-absent", metric="backup.age_seconds", absent=3600)
    labels = (("device", "/dev/sda1"), ("mount", "/"))
    rows = [ProcessRow("postgres", 1022, 22.5, 1 << 30), ProcessRow("nginx", 871, 2.4, 24 << 20)]
    extra = {
        "top_processes": {"cpu": rows, "memory": rows},
        "disk": {"/": {"total": 50 << 30, "used": 47 << 30, "free": 3 << 30, "percent": 94.0, "growth_per_hour": 1 << 30}},
    }
    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin", charts="off", extra=extra)
    single, _ = mail_variables([AlertEvent("firing", disk, labels, 93.4, 90, ">", "critical", at - 720, at, "i-disk")], ctx)
    chart = {"chart_src": "cid:chart.1@alertmail.invalid", "chart_alt": "Chart of disk.used_percent", "chart_caption": "1h"}
    single["alerts"] = single["detailed"] = [replace(single["alerts"][0], chart_note="", **chart)]
    grouped, _ = mail_variables(
        [
            AlertEvent("reminder", cpu, (), 97.2, 85, ">", "warning", at - 7200, at, "i-cpu"),
            AlertEvent("resolved", disk, labels, 80.2, 90, ">", "critical", at - 1800, at, "i-disk"),
            AlertEvent("firing", gone, (), None, None, "absent", "warning", at - 3600, at, "i-backup"),
        ],
        replace(ctx, max_charts=2, extra={**extra, "notice": "Too many alerts this hour: this digest folds them."}),
    )
    return [("single alert", single), ("grouped mail", grouped)]


def sample_digests() -> list[tuple[str, dict[str, Any]]]:
    """Made-up digests that take every branch of the built-in digest templates."""
    from alertmail.render.digest import MAX_ROWS, digest_variables
    from alertmail.rules.model import Rule

    at = 1_768_482_180.0
    disk = Rule(name="disk-full", metric="disk.used_percent", above=90, runbook="https://wiki.example.com/runbooks/disk-full")
    mem = Rule(name="memory-high", metric="memory.used_percent", above=90, severity="critical")
    events = [
        AlertEvent("firing", disk, (("mount", f"/srv/vol{i:03d}"),), 91.0 + i % 9, 90, ">", "warning", at - 900, at + i, f"d{i}")
        for i in range(MAX_ROWS + 5)
    ]
    events += [
        AlertEvent("firing", mem, (), 97.0, 90, ">", "critical", at - 600, at - 600, "m1"),
        AlertEvent("resolved", mem, (), 80.0, 90, ">", "critical", at - 600, at, "m1"),
    ]
    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin")
    notice = "You had 6 separate alert mails within an hour, so these events were folded into this digest."
    journal = "/var/lib/alertmail/logs/alerts.jsonl"
    long = digest_variables(events, ctx, notice=notice, journal=journal, since=at - 900)
    short = digest_variables(events[-2:], ctx, notice="", journal=journal, since=at - 900)
    return [("digest of a long storm", long), ("digest of one recovered alert", short)]


def sample_heartbeats() -> list[tuple[str, dict[str, Any]]]:
    """Made-up heartbeats that take every branch of the built-in heartbeat templates."""
    from alertmail.render.heartbeat import heartbeat_variables, sample_summary

    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin")
    busy = sample_summary()
    quiet = replace_fields(busy, rules={}, silences=[], queue={}, mails={}, watching={})
    return [
        ("heartbeat of a busy day", heartbeat_variables(busy, ctx)),
        ("heartbeat of a quiet day", heartbeat_variables(quiet, ctx)),
    ]


def replace_fields(obj: Any, **changes: Any) -> Any:
    """A copy of a plain object with some attributes changed."""
    import copy

    out = copy.copy(obj)
    for name, value in changes.items():
        setattr(out, name, value)
    return out


# Each mail's templates (``KIND.txt.j2``, ``KIND.html.j2``) and the sample mails ``check`` renders them with.
SAMPLES: dict[str, Callable[[], list[tuple[str, dict[str, Any]]]]] = {
    "alert": sample_variables,
    "digest": sample_digests,
    "heartbeat": sample_heartbeats,
}


def template_problems(folder: Path) -> list[str]:
    """Every template in ``folder`` compiled as the agent compiles it, and those of each mail (alert,
    digest, heartbeat) rendered against sample mails (a misspelt variable is an error there): what
    fails, with file and line."""
    import jinja2

    env = _environment(str(folder))
    problems = []
    for file in sorted(folder.glob("*.j2")):
        try:
            template = env.get_template(file.name)
        except jinja2.TemplateSyntaxError as exc:
            problems.append(f"{file.name} line {exc.lineno}: {exc.message}")
            continue
        except (jinja2.TemplateError, UnicodeDecodeError, OSError) as exc:
            problems.append(f"{file.name}: {type(exc).__name__}: {exc}")
            continue
        samples = SAMPLES.get(file.name.split(".", 1)[0]) if file.name.endswith((".txt.j2", ".html.j2")) else None
        if samples is None:
            continue  # a file the mails' templates include or extend: rendered through them
        for what, variables in samples():
            try:
                template.render(variables)
            except Exception as exc:  # anything a template can raise while rendering
                line = _template_line(exc, folder)
                said = re.sub(r"'[\w.]*AlertView object'", "an alert", header_safe(exc, 300)).replace("'dict object'", "the dict")
                problems.append(
                    f"{file.name}{line}: fails on a sample {what}: {type(exc).__name__}: {said} "
                    "(the variables are listed in docs/templates.md)"
                )
                break
    return problems


def _template_line(exc: BaseException, folder: Path) -> str:
    """ " line 4" (of a template in ``folder``) from a rendering error's traceback, else ""."""
    import traceback

    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename.startswith(str(folder)) and frame.lineno:
            return f" line {frame.lineno}"
    return ""


def with_charts(
    events: Sequence[AlertEvent], views: Sequence[AlertView], ctx: RenderContext
) -> tuple[list[AlertView], list[tuple[str, bytes]]]:
    """The views pointing at their charts (or saying why there is none), and the (Content-ID, PNG) pairs."""
    if ctx.charts == "off":
        return list(views), []
    notes: list[str] = []
    specs = []
    for event, view in zip(events, views, strict=True):
        try:
            spec = chart_spec(event, view, ctx)
        except Exception as exc:  # the history callback belongs to the caller; its failure costs only the chart
            log.warning("no chart for %s: history unreadable: %s", view.rule, header_safe(exc))
            spec = None
            notes.append("the chart could not be drawn (see the agent's log)")
        else:
            notes.append("" if spec is not None else "no samples of this series recorded yet")
        specs.append(spec)
    wanted = [s for s in specs if s is not None]
    pngs: list[bytes | None] = []
    if wanted:
        from alertmail.render.chart import render_pngs

        pngs = render_pngs(wanted, isolated=ctx.charts == "subprocess", timeout=ctx.chart_timeout)
    drawn = iter(pngs)
    shown: list[AlertView] = []
    images: list[tuple[str, bytes]] = []
    for event, view, spec, note in zip(events, views, specs, notes, strict=True):
        png = next(drawn) if spec is not None else None
        if png is None:
            shown.append(replace(view, chart_note=note or "the chart could not be drawn (see the agent's log)"))
            continue
        # A fixed domain: make_msgid's default asks DNS for this host's name.
        cid = make_msgid("chart", domain="alertmail.invalid")
        images.append((cid, png))
        alt, caption = chart_words(event, view, ctx, spec)
        shown.append(replace(view, chart_src=f"cid:{cid[1:-1]}", chart_alt=alt, chart_caption=caption))
    return shown, images
