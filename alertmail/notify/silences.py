"""Silences and maintenance windows: which alerts not to mail, and when.

Two sources, one matcher:

* ``[[silences]]`` in the config: recurring maintenance windows, either weekly
  (``days = ["sat", "sun"]``, ``start = "02:00"``, ``end = "04:00"``) or a cron
  expression with a ``duration`` (``cron = "0 2 * * 6"``, ``duration = "2h"``), in an
  IANA ``timezone`` (default ``[agent].timezone``). Times are wall-clock times there:
  across a DST change a 02:00-04:00 window lasts one hour on the spring day and three
  on the autumn one, as a person reading the clock expects.
* run-time silences from ``alertmail silence add``: a fixed span (``starts``,
  ``ends``), kept in ``state_dir/silences.toml`` (readable TOML, written atomically
  under a lock) so they survive a restart. The agent re-reads the file when its
  mtime changes, and expired entries are pruned (``alertmail.notify.runtime_silences``,
  which also holds the SilenceSet in force).

A silence matches an alert when every matcher it has agrees: ``rule`` (a glob on the
rule name), ``labels`` (exact values or globs, every listed key must match) and
``severity`` (one of a list). What a silence does with a matching alert is the
notifier's business (see ``alertmail.notify.notifier``).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Protocol

from alertmail.config.schema import Checker, Option, Section
from alertmail.model import Labels

SILENCE_OPTIONS: dict[str, Option] = {
    "rule": Option("str", "*", nonempty=True, glob=True, help='rule name or glob, e.g. "disk-*"; default: every rule'),
    "labels": Option("table", {}, glob=True, help='label matchers: exact values or globs, e.g. { mount = "/backup*" }'),
    "severity": Option("list", [], help='severities to silence, e.g. ["warning"]; default: all'),
    "days": Option("list", [], help='weekly window: days like ["sat", "sun"]; default: every day'),
    "start": Option("str", None, help='weekly window: start time "HH:MM"'),
    "end": Option("str", None, help='weekly window: end time "HH:MM" (before start: the window ends the next day)'),
    "cron": Option("str", None, help='cron expression for the start of each window, e.g. "0 2 * * 6"'),
    "duration": Option("duration", None, minimum=1.0, help='with cron: how long each window lasts, e.g. "2h"'),
    "timezone": Option("str", None, nonempty=True, help="IANA timezone of the schedule; default: [agent].timezone"),
    "comment": Option("str", "", multiline=True, help="why: shown in `alertmail silence list` and the heartbeat"),
}

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")


class Silenceable(Protocol):
    """What a silence looks at: an AlertEvent has all of it."""

    @property
    def labels(self) -> Labels: ...

    @property
    def severity(self) -> str: ...

    @property
    def rule(self) -> Any: ...


# -- schedules ---------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """A fixed interval [starts, ends) in epoch seconds (run-time silences)."""

    starts: float
    ends: float

    def active(self, now: float) -> bool:
        return self.starts <= now < self.ends

    def expired(self, now: float) -> bool:
        return now >= self.ends

    def describe(self, tz: str = "UTC") -> str:
        zone = zoneinfo.ZoneInfo(tz)
        fmt = "%Y-%m-%d %H:%M %Z"
        return f"{dt.datetime.fromtimestamp(self.starts, zone):{fmt}} until {dt.datetime.fromtimestamp(self.ends, zone):{fmt}}"


def _minutes(text: str) -> int:
    match = _TIME.match(text.strip()) if isinstance(text, str) else None
    if not match or (match.group(1) == "24" and match.group(2) != "00"):
        raise ValueError(f'expected a time like "02:00" (00:00 to 24:00), got {text!r}')
    return int(match.group(1)) * 60 + int(match.group(2))


def _day(text: str) -> int:
    """0-6 (Monday = 0) from "mon" or "monday", any case."""
    key = str(text).strip().lower()
    for i, (short, full) in enumerate(zip(DAYS, _FULL_DAYS)):
        if key in (short, full):
            return i
    raise ValueError(f"unknown day {text!r}; use {', '.join(DAYS)}")


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Weekly:
    """A window from ``start`` to ``end`` (minutes of the day, wall clock) on ``days`` (0 = Monday).

    When ``end`` is not after ``start`` the window runs over midnight into the next day.
    """

    days: frozenset[int]
    start: int
    end: int
    timezone: str

    def active(self, now: float) -> bool:
        local = dt.datetime.fromtimestamp(now, zoneinfo.ZoneInfo(self.timezone))
        minute = local.hour * 60 + local.minute + local.second / 60
        today = local.weekday()
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        yesterday = (today - 1) % 7
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)

    def expired(self, now: float) -> bool:
        return False

    def describe(self, tz: str = "UTC") -> str:
        days = "every day" if len(self.days) == 7 else ",".join(DAYS[d] for d in sorted(self.days))
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)} {self.timezone}"


@dataclass(frozen=True)
class Cron:
    """Windows of ``duration`` seconds starting at each time a cron expression names, in ``timezone``."""

    expression: str
    duration: float
    timezone: str

    def __post_init__(self) -> None:
        self.trigger  # noqa: B018  (parsed now, so a bad expression fails at config load)

    @property
    def trigger(self) -> Any:
        # APScheduler is a dependency already (it schedules the probes); its parser
        # knows the cron syntax, names and ranges, and DST gaps and repeats.
        from apscheduler.triggers.cron import CronTrigger

        cached = self.__dict__.get("_trigger")
        if cached is None:
            cached = CronTrigger.from_crontab(self.expression, timezone=zoneinfo.ZoneInfo(self.timezone))
            object.__setattr__(self, "_trigger", cached)
        return cached

    def active(self, now: float) -> bool:
        # Active when some window start falls in (now - duration, now].
        zone = zoneinfo.ZoneInfo(self.timezone)
        # Cron times are whole seconds: the first one after now - duration is at or after this.
        earliest = dt.datetime.fromtimestamp(math.floor(now - self.duration) + 1, zone)
        fire = self.trigger.get_next_fire_time(None, earliest)
        return fire is not None and now - self.duration < fire.timestamp() <= now

    def expired(self, now: float) -> bool:
        return False

    def describe(self, tz: str = "UTC") -> str:
        from alertmail.units import format_duration

        return f'cron "{self.expression}" for {format_duration(self.duration)} {self.timezone}'


Schedule = Span | Weekly | Cron


# -- silences ----------------------------------------------------------------


def _label_match(matchers: Mapping[str, str], labels: Labels) -> bool:
    have = dict(labels)
    for key, pattern in matchers.items():
        value = have.get(key)
        if value is None or not fnmatchcase(value, pattern):
            return False
    return True


@dataclass(frozen=True)
class Silence:
    """Matchers plus a schedule. ``source`` is ``"config"`` or ``"cli"``."""

    id: str
    schedule: Schedule
    rule: str = "*"
    labels: Mapping[str, str] = field(default_factory=dict)
    severity: tuple[str, ...] = ()
    comment: str = ""
    source: str = "config"
    author: str = ""

    def matches(self, alert: Silenceable) -> bool:
        """True when the alert is one this silence is about (whatever the time)."""
        return (
            fnmatchcase(alert.rule.name, self.rule)
            and (not self.severity or alert.severity in self.severity)
            and _label_match(self.labels, alert.labels)
        )

    def silences(self, alert: Silenceable, now: float) -> bool:
        return self.schedule.active(now) and self.matches(alert)

    def describe_matchers(self) -> str:
        parts = [f"rule={self.rule}"]
        parts += [f"{k}={v}" for k, v in sorted(self.labels.items())]
        if self.severity:
            parts.append("severity=" + "|".join(self.severity))
        return " ".join(parts)


def silence_from_table(table: Mapping[str, Any], *, index: int, default_tz: str) -> Silence:
    """A config silence from its checked ``[[silences]]`` table; ValueError lines are "key: problem"."""
    problems: list[str] = []
    tz = table.get("timezone") or default_tz
    try:
        zoneinfo.ZoneInfo(tz)
    except Exception:
        problems.append(f'timezone: unknown IANA timezone {tz!r}; use a name like "Europe/Berlin" or "UTC"')
        tz = "UTC"
    weekly = any(table.get(k) for k in ("days", "start", "end"))
    cron = table.get("cron")
    schedule: Schedule | None = None
    if weekly and cron:
        problems.append("cron: give either a weekly window (days/start/end) or cron with duration, not both")
    elif cron:
        if not table.get("duration"):
            problems.append('duration: a cron window needs a length; add duration = "2h"')
        else:
            try:
                schedule = Cron(str(cron), float(table["duration"]), tz)
            except ValueError as exc:
                problems.append(f'cron: {exc}; write five fields like "0 2 * * sat"')
    elif weekly:
        if table.get("duration"):
            problems.append("duration: only for cron windows; a weekly window ends at `end`")
        try:
            days = frozenset(_day(d) for d in table.get("days") or DAYS)
        except ValueError as exc:
            problems.append(f"days: {exc}")
            days = frozenset()
        start = end = 0
        for key in ("start", "end"):
            if table.get(key) is None:
                problems.append(f'{key}: missing; a weekly window needs start and end like "02:00"')
                continue
            try:
                value = _minutes(table[key])
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
            start, end = (value, end) if key == "start" else (start, value)
        if not problems and start == end:
            problems.append("end: equals start; the window would be empty")
        if not problems:
            schedule = Weekly(days, start, end, tz)
    else:
        problems.append("no schedule; add days/start/end (a weekly window) or cron and duration")
    if problems:
        raise ValueError("\n".join(problems))
    assert schedule is not None
    return Silence(
        id=f"config-{index}",
        schedule=schedule,
        rule=table.get("rule") or "*",
        labels=dict(table.get("labels") or {}),
        severity=tuple(table.get("severity") or ()),
        comment=table.get("comment") or "",
        source="config",
    )


def check_config(tables: Sequence[Mapping[str, Any]], check: Checker, *, default_tz: str) -> list[Silence]:
    """Build the config silences; problems go to ``check`` (a config.Checker) as ``silences[i].key: ...``."""
    out = []
    for i, table in enumerate(tables):
        try:
            out.append(silence_from_table(table, index=i, default_tz=default_tz))
        except ValueError as exc:
            for line in str(exc).splitlines():
                key, _, message = line.partition(": ")
                check.error(f"silences[{i}].{key}" if message else f"silences[{i}]", message or line)
    return out


def _check_section(tables: Sequence[Mapping[str, Any]], check: Checker, config: Any) -> None:
    check_config(tables, check, default_tz=config.agent.get("timezone") or "UTC")


SECTION: Section[Any] = Section("silences", SILENCE_OPTIONS, array=True, check=_check_section, includable=True)
