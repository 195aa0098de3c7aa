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
  mtime changes, and expired entries are pruned.

A silence matches an alert when every matcher it has agrees: ``rule`` (a glob on the
rule name), ``labels`` (exact values or globs, every listed key must match) and
``severity`` (one of a list). What a silence does with a matching alert is the
notifier's business (see ``alertmail.notifier``).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import math
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Protocol

from alertmail.config.schema import Checker, Option, Section
from alertmail.fsutil import write_atomic
from alertmail.model import Labels

log = logging.getLogger("alertmail.notify.silences")

SILENCE_OPTIONS: dict[str, Option] = {
    "rule": Option("str", "*", help="rule name or glob, e.g. \"disk-*\"; default: every rule"),
    "labels": Option("table", {}, help="label matchers: exact values or globs, e.g. { mount = \"/backup*\" }"),
    "severity": Option("list", [], help="severities to silence, e.g. [\"warning\"]; default: all"),
    "days": Option("list", [], help="weekly window: days like [\"sat\", \"sun\"]; default: every day"),
    "start": Option("str", None, help="weekly window: start time \"HH:MM\""),
    "end": Option("str", None, help="weekly window: end time \"HH:MM\" (before start: the window ends the next day)"),
    "cron": Option("str", None, help="cron expression for the start of each window, e.g. \"0 2 * * 6\""),
    "duration": Option("duration", None, help="with cron: how long each window lasts, e.g. \"2h\""),
    "timezone": Option("str", None, help="IANA timezone of the schedule; default: [agent].timezone"),
    "comment": Option("str", "", help="why: shown in `alertmail silence list` and the heartbeat"),
}

RUNTIME_FILE = "silences.toml"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^([01]?\d|2[0-4]):([0-5]\d)$")
_HEADER = (
    "# Silences added at run time with `alertmail silence add`.\n"
    "# Remove one with `alertmail silence remove ID`; expired ones are pruned.\n"
    "# Times are UTC. The running agent re-reads this file when it changes.\n\n"
)


class Silenceable(Protocol):
    """What a silence looks at: an AlertEvent has all of it."""

    labels: Labels
    severity: str

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
        raise ValueError(f"expected a time like \"02:00\" (00:00 to 24:00), got {text!r}")
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

        return f"cron \"{self.expression}\" for {format_duration(self.duration)} {self.timezone}"


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
        problems.append(f"timezone: unknown IANA timezone {tz!r}; use a name like \"Europe/Berlin\" or \"UTC\"")
        tz = "UTC"
    weekly = any(table.get(k) for k in ("days", "start", "end"))
    cron = table.get("cron")
    schedule: Schedule | None = None
    if weekly and cron:
        problems.append("cron: give either a weekly window (days/start/end) or cron with duration, not both")
    elif cron:
        if not table.get("duration"):
            problems.append("duration: a cron window needs a length; add duration = \"2h\"")
        else:
            try:
                schedule = Cron(str(cron), float(table["duration"]), tz)
            except ValueError as exc:
                problems.append(f"cron: {exc}; write five fields like \"0 2 * * sat\"")
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
                problems.append(f"{key}: missing; a weekly window needs start and end like \"02:00\"")
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


SECTION = Section("silences", SILENCE_OPTIONS, array=True, check=_check_section)


# -- the run-time file ---------------------------------------------------------


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(timestamp), dt.timezone.utc)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)).timestamp()
    raise ValueError(f"expected a date-time like 2026-11-26T14:00:00Z, got {value!r}")


def _to_table(silence: Silence) -> dict[str, Any]:
    span = silence.schedule
    assert isinstance(span, Span)
    table: dict[str, Any] = {"id": silence.id, "rule": silence.rule}
    if silence.labels:
        table["labels"] = dict(silence.labels)
    if silence.severity:
        table["severity"] = list(silence.severity)
    table |= {"starts": _utc(span.starts), "ends": _utc(span.ends), "comment": silence.comment}
    if silence.author:
        table["author"] = silence.author
    return table


def _from_table(table: Mapping[str, Any]) -> Silence:
    if not isinstance(table, Mapping) or not isinstance(table.get("id"), str):
        raise ValueError(f"a silence without an id: {table!r}")
    labels = table.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"silence {table['id']}: labels must be a table")
    return Silence(
        id=table["id"],
        schedule=Span(_epoch(table.get("starts")), _epoch(table.get("ends"))),
        rule=str(table.get("rule") or "*"),
        labels={str(k): str(v) for k, v in labels.items()},
        severity=tuple(str(s) for s in table.get("severity") or ()),
        comment=str(table.get("comment") or ""),
        source="cli",
        author=str(table.get("author") or ""),
    )


class RuntimeSilences:
    """``state_dir/silences.toml``: read, add, remove, prune; every change under a lock, written atomically."""

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / RUNTIME_FILE
        self._lock_path = Path(state_dir) / f".{RUNTIME_FILE}.lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `silence add` at once must not lose one: read-modify-write under flock.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> list[Silence]:
        """Every silence in the file (expired ones too); ValueError when the file is unreadable."""
        try:
            raw = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path}: not valid TOML: {exc}") from None
        items = raw.get("silences", [])
        if not isinstance(items, list):
            raise ValueError(f"{self.path}: expected [[silences]] tables")
        return [_from_table(item) for item in items]

    def _write(self, silences: Iterable[Silence]) -> None:
        import tomli_w

        body = tomli_w.dumps({"silences": [_to_table(s) for s in silences]})
        write_atomic(self.path, (_HEADER + body).encode())

    def add(
        self,
        *,
        duration: float,
        rule: str = "*",
        labels: Mapping[str, str] | None = None,
        severity: Sequence[str] = (),
        comment: str = "",
        author: str = "",
        now: float,
    ) -> Silence:
        silence = Silence(
            id=os.urandom(4).hex(),
            schedule=Span(float(int(now)), float(int(now + duration))),
            rule=rule,
            labels=dict(labels or {}),
            severity=tuple(severity),
            comment=comment,
            source="cli",
            author=author,
        )
        with self._locked():
            kept = [s for s in self.read() if not s.schedule.expired(now)]
            self._write([*kept, silence])
        return silence

    def remove(self, silence_id: str, *, now: float) -> bool:
        """Remove one silence by id (expired ones are pruned too); False when no such id."""
        with self._locked():
            current = self.read()
            kept = [s for s in current if s.id != silence_id and not s.schedule.expired(now)]
            found = any(s.id == silence_id for s in current)
            if found or len(kept) != len(current):
                self._write(kept)
        return found

    def prune(self, *, now: float) -> int:
        """Drop expired silences; the number dropped."""
        with self._locked():
            current = self.read()
            kept = [s for s in current if not s.schedule.expired(now)]
            if len(kept) != len(current):
                self._write(kept)
        return len(current) - len(kept)


class SilenceSet:
    """The silences in force: the config's plus the run-time file's, re-read when it changes."""

    def __init__(self, config_silences: Sequence[Silence] = (), state_dir: Path | str | None = None) -> None:
        self.config_silences = list(config_silences)
        self.runtime = RuntimeSilences(state_dir) if state_dir is not None else None
        self.runtime_silences: list[Silence] = []
        self._seen: tuple[int, int] | None = None

    def refresh(self, now: float) -> None:
        """Re-read the run-time file if its mtime or size changed (one stat call otherwise)."""
        if self.runtime is None:
            return
        try:
            st = self.runtime.path.stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            self.runtime_silences = []
            return
        try:
            self.runtime_silences = self.runtime.read()
        except ValueError as exc:
            log.error("%s; keeping the %d silences read before", exc, len(self.runtime_silences))
            return
        log.info("silences: %d run-time silence(s) from %s", len(self.runtime_silences), self.runtime.path)
        if any(s.schedule.expired(now) for s in self.runtime_silences):
            try:
                self.runtime.prune(now=now)
            except OSError as exc:
                log.warning("cannot prune expired silences in %s: %s", self.runtime.path, exc)

    @property
    def all(self) -> list[Silence]:
        return [*self.config_silences, *self.runtime_silences]

    def match(self, alert: Silenceable, now: float) -> Silence | None:
        """The first silence in force for this alert at ``now``, or None."""
        for silence in self.all:
            if silence.silences(alert, now):
                return silence
        return None

    def active(self, now: float) -> list[Silence]:
        return [s for s in self.all if s.schedule.active(now)]

    def __bool__(self) -> bool:
        return bool(self.config_silences) or self.runtime is not None


def from_config(cfg: Any) -> SilenceSet:
    """The agent's silences: ``[[silences]]`` of ``cfg`` plus ``state_dir/silences.toml``."""
    tz = cfg.agent.get("timezone") or "UTC"
    tables = cfg.sections.get("silences") or []
    built = [silence_from_table(t, index=i, default_tz=tz) for i, t in enumerate(tables)]
    return SilenceSet(built, cfg.state_dir)

