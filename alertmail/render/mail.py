"""Rendering alert events into the subject and body of a mail (pure: values in, values out).

The notifier adds the envelope headers (From, To, Date, Message-ID, threading);
this module decides what people read: a text part, and an HTML part with a chart
of each alert's metric as an inline image. Bodies come from Jinja2 templates that
users may override (``RenderContext.templates_dir``); a broken override falls back
to the built-in template with a warning, and a broken built-in one to plain text,
so an alert is never lost to its presentation.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any

from alertmail.model import Labels
from alertmail.render.context import ProcessRow, mount_of, resource_of
from alertmail.rules.model import AlertEvent
from alertmail.units import format_duration

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029\u0085]+")
BUILTIN_TEMPLATES = Path(__file__).parent / "templates"
TEXT_TEMPLATE = "alert.txt.j2"
HTML_TEMPLATE = "alert.html.j2"

KIND_WORDS = {
    "firing": "FIRING",
    "reminder": "STILL FIRING",
    "resolved": "RESOLVED",
    "flapping": "FLAPPING",
    "flap-ended": "SETTLED",
    "escalated": "ESCALATED",
}
# Accent colours of the HTML mail, by kind first and severity second.
COLOURS = {"resolved": "#1e8449", "flap-ended": "#1e8449", "flapping": "#7d3c98"}
SEVERITY_COLOURS = {"critical": "#c0392b", "error": "#c0392b", "warning": "#d68910", "info": "#2874a6"}


def header_safe(text: object, limit: int = 200) -> str:
    """One line of text with every control character (CR, LF, NUL, …) replaced: safe in a header."""
    clean = _UNSAFE.sub(" ", str(text)).strip()
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def format_value(value: float | None) -> str:
    if value is None:
        return "no data"
    if value != value:  # NaN
        return "NaN"
    if abs(value) >= 1e6 or (abs(value) < 0.01 and value != 0):
        return f"{value:.3g}"
    return f"{value:.1f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))


def format_bytes(value: float | None) -> str:
    """1536 -> "1.5 KiB"."""
    if value is None:
        return "unknown"
    size, unit = float(value), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"


def format_quantity(value: float | None, unit: str) -> str:
    """A value with its unit as probes declare it: "93.4 %", "1.5 GiB", "2.0 MiB/s", "3.2"."""
    if value is None or unit in ("", "1", "count", "load"):
        return format_value(value)
    if unit in ("percent", "%"):
        return f"{format_value(value)} %"
    if unit in ("bytes", "B"):
        return format_bytes(value)
    if unit == "bytes/s":
        return f"{format_bytes(value)}/s"
    return f"{format_value(value)} {unit}"


def byte_scale(values: Sequence[float]) -> tuple[float, str]:
    """The binary unit that suits the largest of ``values``: (divisor, name)."""
    top = max((abs(v) for v in values), default=0.0)
    divisor, name = 1.0, "B"
    for next_name in ("KiB", "MiB", "GiB", "TiB"):
        if top < divisor * 1024:
            break
        divisor, name = divisor * 1024, next_name
    return divisor, name


def format_labels(labels: Labels) -> str:
    return ", ".join(f"{header_safe(k, 60)}={header_safe(v, 120)}" for k, v in labels)


def human_duration(seconds: float) -> str:
    """45 -> "45 s", 720 -> "12 min", 7500 -> "2 h 5 min", 93600 -> "1 d 2 h"."""
    seconds = max(int(round(seconds)), 0)
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def guess_unit(metric: str) -> str:
    """A unit from the metric's name when no probe declared one, in the probes' words."""
    name = metric.rsplit(".", 1)[-1]
    for suffix, unit in (("_percent", "percent"), ("_bytes_per_s", "bytes/s"), ("_bytes", "bytes"), ("_seconds", "s")):
        if name.endswith(suffix) or name == suffix[1:]:
            return unit
    return ""


@dataclass(frozen=True)
class RenderContext:
    """What the renderer may know besides the events."""

    hostname: str
    timezone: str = "UTC"
    subject_prefix: str = ""
    # history(metric, labels) -> [(timestamp, value), ...] for charts; empty when unknown.
    history: Callable[[str, Labels], Sequence[tuple[float, float]]] = lambda metric, labels: ()
    # "top_processes" and "disk" as alertmail.context.collect_context returns them; "notice", a
    # paragraph put above the alerts (why a digest folded them); anything else goes to templates as ``extra``.
    extra: dict = field(default_factory=dict)
    templates_dir: Path | None = None  # user templates overriding alert.txt.j2 / alert.html.j2
    units: Mapping[str, str] = field(default_factory=dict)  # metric -> unit, from the probes
    max_charts: int = 10  # alerts shown in detail with a chart; the rest only in the summary table
    charts: str = "subprocess"  # "subprocess" (keeps matplotlib out of the agent), "in-process", "off"
    chart_timeout: float = 30.0

    def local_time(self, timestamp: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(self.timezone))

    def clock(self, timestamp: float, reference: float | None = None) -> str:
        """"14:03 CET"; with the day when it is not the day of ``reference``."""
        when = self.local_time(timestamp)
        ref = self.local_time(reference if reference is not None else timestamp)
        if when.date() == ref.date():
            return f"{when:%H:%M %Z}"
        if when.year == ref.year:
            return f"{when:%a %d %b %H:%M %Z}"
        return f"{when:%Y-%m-%d %H:%M %Z}"

    def unit(self, metric: str) -> str:
        return self.units.get(metric) or guess_unit(metric)


def recovers(event: AlertEvent) -> bool:
    """A recovery: resolved, or a flap that settled in the ok state."""
    return event.kind == "resolved" or (event.kind == "flap-ended" and getattr(event, "state", None) == "ok")


def condition(event: AlertEvent) -> str:
    """`disk.used_percent 93.4 > 90` — the metric, its value and the threshold crossed.

    A recovery names the line the value came back over: `disk.used_percent 80.2, back below 85`.
    """
    metric = event.rule.metric
    if event.comparison == "absent":
        return f"{metric} reporting again" if recovers(event) else f"{metric} absent"
    if recovers(event) and event.comparison in (">", "<"):
        line = event.rule.clear if event.rule.clear is not None else event.threshold
        side = "below" if event.comparison == ">" else "above"
        return f"{metric} {format_value(event.value)}, back {side} {format_value(line)}"
    return f"{metric} {format_value(event.value)} {event.comparison} {format_value(event.threshold)}"


def subject(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    """`[CRITICAL] web01: disk-root-full — disk.used_percent 93.4 > 90 (for 2m)`."""
    first = events[0]
    if recovers(first):
        tag = "RESOLVED"
    elif first.kind == "flapping":
        tag = "FLAPPING"
    else:
        tag = first.severity.upper()
    if len(events) == 1:
        duration = f" (for {format_duration(first.at - first.since)})" if first.at > first.since else ""
        text = f"[{tag}] {ctx.hostname}: {first.rule.name} — {condition(first)}{duration}"
        if first.kind == "reminder":
            text = f"[{tag}] {ctx.hostname}: {first.rule.name} still firing — {condition(first)}{duration}"
    else:
        names = sorted({e.rule.name for e in events})
        text = f"[{tag}] {ctx.hostname}: {len(events)} alerts — {', '.join(names)}"
    if ctx.subject_prefix:
        text = f"{ctx.subject_prefix} {text}"
    return header_safe(text, limit=250)


def status_line(event: AlertEvent, ctx: RenderContext) -> str:
    """"firing for 12 min, since 14:03 CET" — what happened, for how long, since when."""
    since = ctx.clock(event.since, event.at)
    took = human_duration(event.at - event.since)
    if event.kind == "resolved":
        return f"resolved at {ctx.clock(event.at)} after {took}, since {since}"
    if event.kind in ("flapping", "flap-ended"):
        change = getattr(event, "percent_change", None)
        rate = f" ({format_value(change)} % state change)" if change is not None else ""
        if event.kind == "flapping":
            return f"flapping for {took}, since {since}{rate}"
        return f"settled at {ctx.clock(event.at)} after {took}, since {since}{rate}"
    if event.kind == "reminder":
        return f"still firing: for {took}, since {since}"
    if event.kind == "escalated":
        before = getattr(event, "previous_severity", None)
        raised = f"; raised from {header_safe(before, 30)} to {header_safe(event.severity, 30)}" if before else ""
        return f"firing for {took}, since {since}{raised}"
    return f"{header_safe(event.kind, 30)} for {took}, since {since}"


@dataclass(frozen=True)
class AlertView:
    """One alert as templates see it: every string already made one line and safe to show."""

    event: AlertEvent
    kind: str
    state: str
    rule: str
    metric: str
    severity: str
    description: str
    labels: tuple[tuple[str, str], ...]
    labels_text: str
    condition: str
    value: str
    threshold: str
    clear: str | None
    comparison: str
    unit: str
    since: str
    at: str
    duration: str
    status: str
    colour: str
    incident: str
    resource: str | None
    processes: tuple[ProcessRow, ...]
    disk: dict[str, str] | None
    chart_src: str | None = None  # "cid:…" of the chart image, when there is one
    chart_note: str = ""  # why there is no chart


def alert_view(event: AlertEvent, ctx: RenderContext) -> AlertView:
    metric = event.rule.metric
    unit = ctx.unit(metric)
    resource = resource_of(metric)
    processes: tuple[ProcessRow, ...] = ()
    disk = None
    try:
        if resource in ("cpu", "memory"):
            rows = ctx.extra.get("top_processes", {}).get(resource, ())
            processes = tuple(ProcessRow(header_safe(r[0], 60), int(r[1]), float(r[2]), int(r[3])) for r in rows)
        mount = mount_of(event.labels)
        if resource == "disk" and mount in ctx.extra.get("disk", {}):
            disk = disk_view(header_safe(mount), ctx.extra["disk"][mount])
    except (AttributeError, TypeError, ValueError, IndexError) as exc:
        # Context is a nicety; a malformed one must not cost the alert.
        log.warning("context for %s left out: %s", header_safe(event.rule.name), header_safe(exc))
    clear = event.rule.clear
    colour = COLOURS.get(event.kind) or SEVERITY_COLOURS.get(event.severity.lower(), "#2874a6")
    return AlertView(
        event=event,
        kind=event.kind,
        state=KIND_WORDS.get(event.kind, header_safe(event.kind.upper(), 30)),
        rule=header_safe(event.rule.name),
        metric=header_safe(metric),
        severity=header_safe(event.severity, 30),
        description=header_safe(event.rule.description, 500),
        labels=tuple((header_safe(k, 60), header_safe(v, 120)) for k, v in event.labels),
        labels_text=format_labels(event.labels),
        condition=header_safe(condition(event), 300),
        value=format_quantity(event.value, unit),
        threshold=format_quantity(event.threshold, unit) if event.comparison != "absent" else "",
        clear=format_quantity(clear, unit) if clear is not None else None,
        comparison=event.comparison,
        unit=unit,
        since=ctx.clock(event.since, event.at),
        at=ctx.clock(event.at),
        duration=human_duration(event.at - event.since),
        status=status_line(event, ctx),
        colour=colour,
        incident=header_safe(event.incident, 120),
        resource=resource,
        processes=processes,
        disk=disk,
    )


def disk_view(mount: str, usage: Mapping[str, Any]) -> dict[str, str]:
    """The disk context formatted for people: sizes in binary units, growth per hour, time to full."""
    growth = usage.get("growth_per_hour")
    full_in = usage.get("full_in_hours")
    view = {
        "mount": mount,
        "total": format_bytes(usage.get("total")),
        "used": format_bytes(usage.get("used")),
        "free": format_bytes(usage.get("free")),
        "percent": f"{format_value(usage.get('percent'))} %",
        "growth": "unknown" if growth is None else f"{'+' if growth >= 0 else '−'}{format_bytes(abs(growth))}/h",
        "full_in": "",
    }
    if full_in is not None:
        view["full_in"] = f"full in ~{human_duration(full_in * 3600)}"
    return view


def urgency(view: AlertView) -> int:
    """How loudly an alert should colour a grouped mail: open critical first, recoveries last."""
    if view.kind in ("resolved", "flap-ended"):
        return 0
    return {"critical": 3, "error": 3, "warning": 2}.get(view.severity.lower(), 1)


def chart_spec(event: AlertEvent, view: AlertView, ctx: RenderContext) -> Any:
    """The chart of one alert: the last 30–60 minutes of its series, thresholds, firing interval."""
    from alertmail.render.chart import ChartSpec

    points = [(float(t), float(v)) for t, v in ctx.history(event.rule.metric, event.labels) if t <= event.at]
    if not points:
        return None
    threshold = event.threshold if event.comparison != "absent" else None
    clear = event.rule.clear
    axis = {"percent": "%", "count": "", "load": "load"}.get(view.unit, view.unit)
    if view.unit in ("bytes", "bytes/s"):
        # Plot bytes in the binary unit that suits them, not as 5e10.
        divisor, name = byte_scale([v for _, v in points] + [x for x in (threshold, clear) if x is not None])
        points = [(t, v / divisor) for t, v in points]
        threshold = threshold / divisor if threshold is not None else None
        clear = clear / divisor if clear is not None else None
        axis = name if view.unit == "bytes" else f"{name}/s"
    first = min(t for t, _ in points)
    title = f"{view.metric}  {view.labels_text}".strip()
    return ChartSpec(
        title=title if len(title) <= 90 else title[:89] + "…",
        points=tuple(points),
        timezone=ctx.timezone,
        unit=axis,
        threshold=threshold,
        clear=clear,
        shade_from=event.since,
        shade_to=event.at,
        end=event.at,
        window=min(max(event.at - first, 1800.0), 3600.0),
    )


def text_body(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    """The plain-text body without templates: the last resort when even the built-in template fails."""
    lines: list[str] = []
    for event in events:
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


@functools.lru_cache(maxsize=8)
def _environment(user_dir: str | None) -> Any:
    """A Jinja2 environment: strict (a typo is an error, not an empty string), HTML autoescaped.

    User templates may extend the built-in ones as ``builtin/alert.html.j2``.
    """
    import jinja2

    builtin = jinja2.FileSystemLoader(str(BUILTIN_TEMPLATES))
    loaders: list[Any] = [jinja2.PrefixLoader({"builtin": builtin})]
    loaders.insert(0, jinja2.FileSystemLoader(user_dir) if user_dir else builtin)
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        undefined=jinja2.StrictUndefined,
        autoescape=jinja2.select_autoescape(("html", "htm", "xml", "html.j2"), default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(bytes=format_bytes, duration=human_duration, value=format_value)
    return env


def render_template(name: str, variables: Mapping[str, Any], ctx: RenderContext) -> str | None:
    """The user's template ``name`` if there is one and it works, else the built-in one; None if both fail."""
    user_dir = ctx.templates_dir
    if user_dir is not None and (Path(user_dir) / name).is_file():
        try:
            return _environment(str(user_dir)).get_template(name).render(variables)
        except Exception as exc:  # any failure of a user's template: syntax, undefined name, a raise
            log.warning(
                "template %s failed (%s: %s); using the built-in one",
                Path(user_dir) / name,
                type(exc).__name__,
                header_safe(exc, 300),
            )
    try:
        return _environment(None).get_template(name).render(variables)
    except Exception:
        log.exception("built-in template %s failed", name)
        return None


def render_alert(events: Sequence[AlertEvent], ctx: RenderContext) -> EmailMessage:
    """The message for one or more events: Subject and body (text, HTML, charts); no envelope headers."""
    if not events:
        raise ValueError("render_alert needs at least one event")
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
        "headline": f"{first.state} · {first.rule} on {host}" if len(views) == 1 else f"{len(views)} alerts on {host}",
        "colour": max(views, key=urgency).colour,
        "alerts": views,
        "detailed": shown,
        "alert_count": len(views),
        "max_charts": detailed,
        "notice": str(ctx.extra.get("notice", "")),
        "extra": ctx.extra,
    }
    text = render_template(TEXT_TEMPLATE, variables, ctx) or text_body(events, ctx)
    html = render_template(HTML_TEMPLATE, variables, ctx)

    msg = EmailMessage()
    msg["Subject"] = variables["subject"]
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
        related = msg.get_payload()[-1]
        for n, (cid, png) in enumerate(images, 1):
            related.add_related(png, "image", "png", cid=cid, disposition="inline", filename=f"chart-{n}.png")
    return msg


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

        pngs = render_pngs(wanted, isolated=ctx.charts != "in-process", timeout=ctx.chart_timeout)
    drawn = iter(pngs)
    shown: list[AlertView] = []
    images: list[tuple[str, bytes]] = []
    for view, spec, note in zip(views, specs, notes, strict=True):
        png = next(drawn) if spec is not None else None
        if png is None:
            shown.append(replace(view, chart_note=note or "the chart could not be drawn (see the agent's log)"))
            continue
        # A fixed domain: make_msgid's default asks DNS for this host's name.
        cid = make_msgid("chart", domain="alertmail.invalid")
        images.append((cid, png))
        shown.append(replace(view, chart_src=f"cid:{cid[1:-1]}"))
    return shown, images
