"""What a mail says about each alert: the subject, status lines and the AlertView templates see.

Every string here is made one line and safe to show before a template gets it;
``RenderContext`` is what the renderer may know besides the events.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alertmail.model import Labels
from alertmail.render.context import ProcessRow, mount_of, resource_of, series_key
from alertmail.render.format import (
    byte_scale,
    format_bytes,
    format_labels,
    format_quantity,
    format_threshold,
    format_value,
    guess_unit,
    header_safe,
    human_duration,
)
from alertmail.rules.model import AlertEvent
from alertmail.units import format_duration

log = logging.getLogger(__name__)

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
# Each carries white text in the badges at 4.5:1 or more (WCAG AA), so a state reads in any mail client.
SEVERITY_COLOURS = {"critical": "#c0392b", "error": "#c0392b", "warning": "#a85d00", "info": "#2874a6"}


@dataclass(frozen=True)
class RenderContext:
    """What the renderer may know besides the events."""

    hostname: str
    timezone: str = "UTC"
    subject_prefix: str = ""
    # history(metric, labels) -> [(timestamp, value), ...] for charts; empty when unknown.
    history: Callable[[str, Labels], Sequence[tuple[float, float]]] = lambda metric, labels: ()
    # "top_processes" and "disk" as alertmail.render.context.collect_context returns them; "notice", a
    # paragraph put above the alerts (why a digest folded them); anything else goes to templates as ``extra``.
    extra: dict = field(default_factory=dict)
    templates_dir: Path | None = None  # user templates overriding alert.txt.j2 / alert.html.j2
    units: Mapping[str, str] = field(default_factory=dict)  # metric -> unit, from the probes
    max_charts: int = 10  # alerts shown in detail with a chart; the rest only in the summary table
    charts: str = "in-process"  # "in-process" (Pillow, loaded with the first chart), "subprocess" (a child per mail), "off"
    chart_timeout: float = 30.0
    # The agent's config file, absolute: the silence command a mail prints names it (`-c PATH`), so it
    # silences this instance even where the agent runs with --config (systemd) and the reader does not.
    config_path: str = ""
    # metric -> its label names as the probe declares them, the one telling series apart first
    # (disk: mount, device, fstype): a single-alert subject names that label's value.
    label_names: Mapping[str, Sequence[str]] = field(default_factory=dict)

    def local_time(self, timestamp: float) -> dt.datetime:
        return dt.datetime.fromtimestamp(timestamp, zoneinfo.ZoneInfo(self.timezone))

    def clock(self, timestamp: float, reference: float | None = None) -> str:
        """ "14:03 CET"; with the day when it is not the day of ``reference``."""
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
    if recovers(event) and event.reason:
        # Not the value's doing (a reload moved the line): say so, claim no crossing.
        return f"{metric} {format_value(event.value, event.threshold)}, {event.reason}"
    if recovers(event) and event.comparison in (">", "<"):
        line = event.rule.clear if event.rule.clear is not None else event.threshold
        side = "below" if event.comparison == ">" else "above"
        return f"{metric} {format_value(event.value, line)}, back {side} {format_threshold(line)}"
    value, threshold = format_value(event.value, event.threshold), format_threshold(event.threshold)
    if not beyond(event):
        # A flapping or settling alert caught on its good side: say where it is, claim no crossing.
        return f"{metric} {value}, not {'above' if event.comparison == '>' else 'below'} {threshold}"
    return f"{metric} {value} {event.comparison} {threshold}"


def beyond(event: AlertEvent) -> bool:
    """Whether the event's value is past its threshold, as its comparison says (True when unknown)."""
    if event.value is None or event.threshold is None or math.isnan(event.value):
        return True
    if event.comparison == ">":
        return event.value > event.threshold
    if event.comparison == "<":
        return event.value < event.threshold
    return True


SEVERITY_RANK = {"critical": 3, "error": 3, "warning": 2}
# Among open alerts of one severity: news before what the reader already knows.
KIND_RANK = {"firing": 0, "escalated": 0, "flapping": 1, "flap-ended": 2, "reminder": 3}


def news_rank(event: AlertEvent) -> tuple[int, int, int]:
    """Sort key, worst news first: open before recovered, critical before warning, new before known."""
    if recovers(event):
        return (1, 0, 0)
    return (0, -SEVERITY_RANK.get(event.severity.lower(), 1), KIND_RANK.get(event.kind, 0))


def worst_first(events: Sequence[AlertEvent]) -> list[AlertEvent]:
    """The events in the order a mail shows them: the worst news leads (stable within a rank)."""
    return sorted(events, key=news_rank)


def tally(events: Sequence[AlertEvent]) -> str:
    """`2 firing, 1 flapping, 1 resolved`: how many alerts are open, flapping and over."""
    counts = {"firing": 0, "flapping": 0, "resolved": 0}
    for event in events:
        counts["resolved" if recovers(event) else "flapping" if event.kind == "flapping" else "firing"] += 1
    return ", ".join(f"{n} {word}" for word, n in counts.items() if n)


def incident_labels(event: AlertEvent, ctx: RenderContext) -> str:
    """The label values that tell this incident from the rule's others (`/srv/db`), or "".

    Labels the rule pins to one value are the same for every incident and left out; of
    the rest, the first the probe declares (a disk's mount, not its device), else all of
    them by name.
    """
    pinned = {k for k, v in event.rule.labels.items() if not any(c in str(v) for c in "*?[")}
    free = {k: v for k, v in event.labels if k not in pinned and v}
    if not free:
        return ""
    declared = [k for k in ctx.label_names.get(event.rule.metric, ()) if k in free]
    values = [free[declared[0]]] if declared else [free[k] for k in sorted(free)]
    return header_safe(" ".join(values), limit=80)


def silence_command(rules: Sequence[str], ctx: RenderContext) -> str:
    """`alertmail silence add -c /etc/alertmail/config.toml --rule disk-full --for 2h --comment "looking into it"`."""
    import shlex

    config = f" -c {shlex.quote(header_safe(ctx.config_path, 500))}" if ctx.config_path else ""
    rule = shlex.quote(header_safe(rules[0], 200)) if rules else "'*'"
    return f'alertmail silence add{config} --rule {rule} --for 2h --comment "looking into it"'


def subject(events: Sequence[AlertEvent], ctx: RenderContext) -> str:
    """`[CRITICAL] web01: disk-root-full — disk.used_percent 93.4 > 90 (for 2m)`.

    A grouped mail is tagged by its worst news and counts what is open and what is over:
    `[CRITICAL] web01: 1 firing, 1 resolved — b-cpu, a-mem` (rules worst first).
    """
    events = worst_first(events)
    first = events[0]
    if recovers(first):
        tag = "RESOLVED"
    elif first.kind == "flapping":
        tag = "FLAPPING"
    else:
        tag = first.severity.upper()
    if len(events) == 1:
        duration = f" (for {format_duration(first.at - first.since)})" if first.at > first.since else ""
        which = incident_labels(first, ctx)
        name = f"{first.rule.name} {which}" if which else first.rule.name
        text = f"[{tag}] {ctx.hostname}: {name} — {condition(first)}{duration}"
        if first.kind == "reminder":
            text = f"[{tag}] {ctx.hostname}: {name} still firing — {condition(first)}{duration}"
    else:
        names = list(dict.fromkeys(e.rule.name for e in events))
        text = f"[{tag}] {ctx.hostname}: {tally(events)} — {', '.join(names)}"
    if ctx.subject_prefix:
        text = f"{ctx.subject_prefix} {text}"
    return header_safe(text, limit=250)


def status_line(event: AlertEvent, ctx: RenderContext) -> str:
    """ "firing for 12 min, since 14:03 CET" — what happened, for how long, since when."""
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
    runbook: str = ""  # the rule's runbook URL (http or https), or empty
    chart_src: str | None = None  # "cid:…" of the chart image, when there is one
    chart_alt: str = ""  # what the chart shows, in words: its alt text
    chart_caption: str = ""  # the line under the chart: its span and lines
    chart_note: str = ""  # why there is no chart
    detail: str = ""  # what the probe's source said about this series (a Nagios plugin's output), lines kept


def alert_view(event: AlertEvent, ctx: RenderContext) -> AlertView:
    metric = event.rule.metric
    unit = ctx.unit(metric)
    resource = resource_of(metric)
    processes: tuple[ProcessRow, ...] = ()
    disk = None
    detail = ""
    try:
        # The table was read while the mail was made: it shows what loads the machine now, which
        # explains an open alert and says nothing about one that is over.
        if resource in ("cpu", "memory") and not recovers(event):
            rows = ctx.extra.get("top_processes", {}).get(resource, ())
            processes = tuple(ProcessRow(header_safe(r[0], 60), int(r[1]), float(r[2]), int(r[3])) for r in rows)
        detail = ctx.extra.get("details", {}).get(series_key(metric, event.labels), "")
        detail = "\n".join(header_safe(line, 300) for line in str(detail).splitlines()[:40]).strip()
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
        value=format_quantity(event.value, unit, against=event.threshold),
        threshold=format_quantity(event.threshold, unit, exact=True) if event.comparison != "absent" else "",
        clear=format_quantity(clear, unit, exact=True) if clear is not None else None,
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
        runbook=header_safe(event.rule.runbook, 2000),
        detail=detail,
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
        shade_from=event.since if event.kind != "pending" else None,  # a pending alert (status page) has not fired
        shade_to=event.at,
        end=event.at,
        window=min(max(event.at - first, 1800.0), 3600.0),
    )


def chart_words(event: AlertEvent, view: AlertView, ctx: RenderContext, spec: Any) -> tuple[str, str]:
    """The chart's alt text and caption: what it plots, where, over which span, against which lines.

    Alt text: ``Chart of disk.used_percent on web01 (mount=/), 13:03 CET to 14:03 CET (1h): 93.4 % now,
    threshold above 90 %, clears below 85 %; shaded: while it fired (since 13:51 CET)``.
    """
    times = [t for t, _ in spec.points]
    end = spec.end if spec.end is not None else max(times)
    start = max(min(times), end - spec.window) if times else end - spec.window
    span = f"{ctx.clock(start, end)} to {ctx.clock(end)} ({human_duration(end - start)})"
    where = f"{view.metric} on {header_safe(ctx.hostname)}" + (f" ({view.labels_text})" if view.labels else "")
    side = {">": "above", "<": "below"}.get(view.comparison, "")
    lines = []
    if view.threshold:
        lines.append(f"threshold {side} {view.threshold}".replace("  ", " "))
    if view.clear:
        lines.append(f"clears {'below' if side == 'above' else 'above' if side else 'at'} {view.clear}")
    shaded = ""
    if spec.shade_from is not None:
        held = f"{view.since} to {view.at}" if recovers(event) else f"since {view.since}"
        shaded = f"shaded: while it fired ({held})"
    alt = f"Chart of {where}, {span}: {view.value} {'at the end' if recovers(event) else 'now'}"
    alt += "".join(f", {line}" for line in lines) + (f"; {shaded}" if shaded else "")
    caption = f"{view.metric}, {span}" + "".join(f" · {line}" for line in lines) + (f" · {shaded}" if shaded else "")
    return header_safe(alt, 500), header_safe(caption, 500)
