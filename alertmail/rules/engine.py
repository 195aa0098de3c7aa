"""Threshold rules: a pure state machine per rule and label set (no I/O, no clock).

    ok -> pending -> firing -> ok        (plus flapping)

The engine takes samples and the current time and returns the alert events that
state changes produce; the caller owns the clock, which keeps it testable.

Semantics, in the order a sample meets them:

* **Value.** The sample's value, or with ``over`` the ``agg`` of the series' window
  (avg/min/max/last, or ``rate``: per-second increase of a counter, resets counted
  as a restart from zero); see ``alertmail.window`` for the memory bound.
* **Levels.** ``above = X`` (or ``below``) fires at X with the rule's ``severity``;
  adding ``critical = Y`` makes X the warning level and Y the critical one; or give
  ``warning`` and ``critical`` alone, the direction following from their order. An
  incident fires with the highest level crossed. Crossing a higher level while firing
  emits ``escalated`` (same incident, ``previous_severity`` set); severity never drops
  within an incident, so a value wobbling around the critical level mails once.
* **for.** The condition (value beyond the first level) must hold on every sample for
  this long; meanwhile the state is ``pending`` and a good sample returns to ``ok``
  silently. Only samples promote pending to firing: time alone is no evidence.
* **clear.** Once firing, the value must come back to ``clear`` (default: the
  threshold) to recover: no recovery inside the band between the two.
* **keep_firing_for.** Recovery also waits until the value has been back this long.
* **repeat.** A ``reminder`` every ``repeat`` seconds while firing, from ``observe``
  or ``tick``.
* **absent.** A series that sends no sample for this long fires (comparison
  ``"absent"``) and resolves on its next sample; a rule that has matched no series at
  all since the engine's first ``now`` fires the same way with empty labels. The
  threshold alert of a silent series keeps its state until samples return.
* **Flapping.** Each evaluation records "firing or not" (see ``alertmail.flapping``).
  When a firing/recovery change pushes the weighted percent change above the start
  threshold, that change is replaced by one ``flapping`` event, then nothing is sent
  (no resolved, firing, escalated or reminder) until the percent drops below the stop
  threshold: then one ``flap-ended`` event whose ``state`` is ``"firing"`` (the
  incident goes on: reminders, then resolved) or ``"ok"`` (the incident is over).
* **Incidents.** Firing opens an incident whose id is a hash of rule name, labels and
  firing time; every later event of it (escalated, reminder, flapping, flap-ended,
  resolved) carries the same id, so the notifier can thread them under one Message-ID.

``snapshot()``/``restore()`` carry open incidents across a restart: a restored
firing incident is not mailed again, and its recovery still is.

Memory per series is bounded: a few slots, 21 bits of flap history, and with
``over`` at most ``WINDOW_BUCKETS + 1`` window buckets. Healthy series that stop
reporting are forgotten after ``forget_after`` (unless the rule watches ``absent``).
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from alertmail.config.schema import Checker, Option, Section
from alertmail.model import Labels, Sample, freeze_labels
from alertmail.rules.flapping import START_PERCENT, STOP_PERCENT, FlapHistory
from alertmail.rules.window import Window
from alertmail.units import valid_address

RULE_OPTIONS: dict[str, Option] = {
    "name": Option("str", required=True, help="a unique name like \"disk-root-full\""),
    "metric": Option("str", required=True, help="the metric to watch, e.g. \"disk.used_percent\""),
    "labels": Option("table", {}, help="label matchers: exact values or globs, e.g. { mount = \"/\" }"),
    "above": Option("number", help="fire when the value is above this"),
    "below": Option("number", help="fire when the value is below this"),
    "warning": Option("number", help="warning level (the threshold when above/below is not given)"),
    "critical": Option("number", help="critical level"),
    "clear": Option("number", help="recovery threshold (hysteresis); default: the threshold"),
    "for": Option("duration", 0.0, help="how long the condition must hold before firing"),
    "repeat": Option("duration", 0.0, help="reminder interval while firing; 0 = off"),
    "keep_firing_for": Option("duration", 0.0, help="stay firing this long after the condition clears"),
    "over": Option("duration", 0.0, help="window to aggregate over"),
    "agg": Option("str", "last", choices=("avg", "min", "max", "last", "rate")),
    "absent": Option("duration", 0.0, help="fire when no sample arrives for this long"),
    "severity": Option("str", "warning", help="severity shown in the subject"),
    "to": Option("list", None, help="recipients; default: [mail].to"),
    "description": Option("str", "", help="a line of text put into the mail"),
    "flapping": Option("bool", True, help="detect flapping (Nagios percent state change)"),
}

_GLOB = re.compile(r"[*?\[]")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
_SEVERITY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_THRESHOLD_KEYS = {"above", "below", "warning", "critical", "clear", "over", "agg", "absent"}
# Rules that stop seeing a series forget it after this long (unless it alerts).
FORGET_AFTER = 3600.0
# Cap on remembered non-matching label sets per rule; churning labels (pids) must not grow memory.
_NO_MATCH_CAP = 4096


class State(enum.Enum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    FLAPPING = "flapping"


def _matchers(labels: Mapping[str, str]) -> tuple[tuple[str, str, bool], ...]:
    return tuple((str(k), str(v), bool(_GLOB.search(str(v)))) for k, v in labels.items())


def _labels_match(matchers: tuple[tuple[str, str, bool], ...], labels: Labels) -> bool:
    if not matchers:
        return True
    have = dict(labels)
    for key, pattern, glob in matchers:
        value = have.get(key)
        if value is None or not (fnmatchcase(value, pattern) if glob else value == pattern):
            return False
    return True


@dataclass(frozen=True)
class Rule:
    name: str
    metric: str
    labels: Mapping[str, str] = field(default_factory=dict)
    above: float | None = None
    below: float | None = None
    warning: float | None = None
    critical: float | None = None
    clear: float | None = None
    for_: float = 0.0
    repeat: float = 0.0
    keep_firing_for: float = 0.0
    over: float = 0.0
    agg: str = "last"
    absent: float = 0.0
    severity: str = "warning"
    to: tuple[str, ...] = ()
    description: str = ""
    flapping: bool = True

    def __hash__(self) -> int:
        # `labels` is a dict, so the generated hash would fail; names are unique anyway.
        return hash((self.name, self.metric))

    def matches(self, sample: Sample) -> bool:
        """True when the sample's metric is this rule's and its labels pass the matchers (exact or glob)."""
        return sample.metric == self.metric and _labels_match(_matchers(self.labels), sample.labels)

    @property
    def direction(self) -> int:
        """+1 for "above" rules, -1 for "below", 0 for a rule that only watches for absence."""
        if self.above is not None:
            return 1
        if self.below is not None:
            return -1
        if self.warning is not None and self.critical is not None and self.warning != self.critical:
            return 1 if self.critical > self.warning else -1
        return 0

    @property
    def comparison(self) -> str:
        return {1: ">", -1: "<"}.get(self.direction, "absent")

    @property
    def levels(self) -> tuple[tuple[float, str], ...]:
        """(threshold, severity) pairs, least severe first; empty for an absent-only rule."""
        first = self.above if self.above is not None else self.below
        if first is not None:
            if self.critical is not None:
                return ((first, "warning"), (self.critical, "critical"))
            return ((first, self.severity),)
        if self.direction:
            return ((self.warning, "warning"), (self.critical, "critical"))  # type: ignore[return-value]
        return ()

    @property
    def threshold(self) -> float | None:
        levels = self.levels
        return levels[0][0] if levels else None

    @property
    def clear_level(self) -> float | None:
        return self.clear if self.clear is not None else self.threshold

    def problems(self) -> list[tuple[str, str]]:
        """(key, message-with-fix) for each inconsistency in this rule's thresholds and window."""
        out: list[tuple[str, str]] = []
        if self.above is not None and self.below is not None:
            out.append(("below", "a rule watches one direction; keep `above` or `below` (or write two rules)"))
        first_key = "above" if self.above is not None else "below" if self.below is not None else None
        if first_key and self.warning is not None:
            out.append(("warning", f"`{first_key}` already sets the first level; remove `warning` (use `critical` for a second level)"))
        if first_key and self.critical is not None:
            first = self.above if self.above is not None else self.below
            if first_key == "above" and self.critical <= first:  # type: ignore[operator]
                out.append(("critical", f"must be higher than above = {first:g} in an `above` rule; got {self.critical:g}"))
            if first_key == "below" and self.critical >= first:  # type: ignore[operator]
                out.append(("critical", f"must be lower than below = {first:g} in a `below` rule; got {self.critical:g}"))
        if first_key is None:
            if self.warning is not None and self.critical is not None and self.warning == self.critical:
                out.append(("critical", "must differ from `warning`; their order sets the direction (critical higher = above)"))
            elif (self.warning is None) != (self.critical is None):
                key = "warning" if self.warning is not None else "critical"
                out.append((key, f"one level cannot tell the direction; write above = N or below = N instead of `{key}` alone, or give both warning and critical"))
            elif self.warning is None and not self.absent:
                out.append(("", "no threshold; add above = N or below = N (or warning and critical levels), or absent = \"5m\""))
        if self.clear is not None:
            direction, threshold = self.direction, self.threshold
            if threshold is None:
                out.append(("clear", "a recovery level needs a threshold; add above or below, or remove `clear`"))
            elif direction > 0 and self.clear > threshold:
                out.append(("clear", f"must be at or below the threshold {threshold:g} in an `above` rule (recovery comes when the value falls to it); got {self.clear:g}"))
            elif direction < 0 and self.clear < threshold:
                out.append(("clear", f"must be at or above the threshold {threshold:g} in a `below` rule (recovery comes when the value rises to it); got {self.clear:g}"))
        if self.agg not in ("avg", "min", "max", "last", "rate"):
            out.append(("agg", f"expected one of 'avg', 'min', 'max', 'last', 'rate', got {self.agg!r}"))
        elif self.agg != "last" and not self.over:
            out.append(("over", f"agg = \"{self.agg}\" needs a window; add over = \"5m\" (or use agg = \"last\")"))
        return out


@dataclass(frozen=True)
class AlertEvent:
    """One state change of one alert (rule + label set), as the notifier mails it."""

    kind: str  # "firing", "escalated", "reminder", "resolved", "flapping", "flap-ended"
    rule: Rule
    labels: Labels
    value: float | None
    threshold: float | None
    comparison: str  # ">" or "<" (or "absent")
    severity: str
    since: float  # when the condition started to hold
    at: float  # when this event happened
    incident: str  # stable id of the incident: firing, reminders and recovery share it
    fired_at: float | None = None  # when the incident fired
    previous_severity: str | None = None  # set on "escalated"
    state: str = ""  # the alert's state after the event; "firing" or "ok" on "flap-ended"
    percent_change: float | None = None  # on "flapping" and "flap-ended"

    @property
    def duration(self) -> float:
        """How long the condition has held (or held, for "resolved")."""
        return self.at - self.since


@dataclass(frozen=True)
class AlertStatus:
    """Where one alert stands now, for `alertmail probe`'s table."""

    rule: Rule
    labels: Labels
    state: State
    value: float | None
    since: float | None
    severity: str | None = None
    incident: str | None = None
    note: str = ""  # e.g. "absent", "no matching series"


def check_address(value: Any) -> str | None:
    """Why ``value`` is not a usable recipient address, or None when it is.

    The same rule as [mail].to (``config.valid_address``): a bare address, since it
    also goes into the SMTP envelope.
    """
    if not isinstance(value, str) or not value.strip():
        return f"expected an address like \"ops@example.com\", got {value!r}"
    if "\r" in value or "\n" in value:
        return f"line breaks are not allowed in an address; got {value!r}"
    if not valid_address(value):
        return f"not a valid mail address: {value!r}; write it as user@example.com"
    return None


def rules_from_config(raw: Any, check: Any, *, default_to: Iterable[str]) -> list[Rule]:
    """Build rules from the ``[[rules]]`` array; problems go to ``check`` (a config.Checker).

    Every problem is reported, each with its key path and fix; rules with problems are
    left out of the result (the caller refuses the config anyway).
    """
    if raw is None:
        return []
    if not isinstance(raw, list):
        check.error("rules", "expected an array of tables: [[rules]]")
        return []
    default_to = list(default_to or [])
    rules: list[Rule] = []
    names: dict[str, int] = {}
    for i, item in enumerate(raw):
        where = f"rules[{i}]"
        before = len(check.problems)
        values = check.table(where, item, RULE_OPTIONS)
        item = item if isinstance(item, dict) else {}
        name = values.get("name")
        if isinstance(name, str):
            if not _NAME.fullmatch(name):
                check.error(f"{where}.name", f"use letters, digits and . _ - : / @ + (it goes into subjects); got {name!r}")
            elif name in names:
                check.error(f"{where}.name", f"duplicate name {name!r} (also rules[{names[name]}]); give each rule its own name")
            else:
                names[name] = i
        metric = values.get("metric")
        if isinstance(metric, str) and not metric.strip():
            check.error(f"{where}.metric", "empty; name a metric, e.g. \"disk.used_percent\" (see `alertmail probe --list`)")
        severity = values.get("severity")
        if isinstance(severity, str) and not _SEVERITY.fullmatch(severity):
            check.error(f"{where}.severity", f"use a word like \"warning\" or \"critical\"; got {severity!r}")
        elif "severity" in item and "critical" in item:
            check.error(f"{where}.severity", "with a `critical` level the severity is the level crossed; remove `severity`")
        if "to" in item:
            to = values.get("to")
            if to is not None and not to:
                check.error(f"{where}.to", "empty; list recipients like [\"ops@example.com\"], or remove `to` to use [mail].to")
            for k, address in enumerate(to or []):
                reason = check_address(address)
                if reason:
                    check.error(f"{where}.to[{k}]", reason)
        else:
            to = default_to  # checked with [mail]
            if not default_to:
                check.error(f"{where}.to", "no recipients; add to = [\"ops@example.com\"] here or in [mail]")
        # Threshold checks need every threshold key converted; else they would only echo that mistake.
        failed = {key for key in item if key in RULE_OPTIONS and key not in values}
        rule = Rule(
            name=values.get("name") or "",
            metric=values.get("metric") or "",
            labels=values.get("labels") or {},
            above=values.get("above"),
            below=values.get("below"),
            warning=values.get("warning"),
            critical=values.get("critical"),
            clear=values.get("clear"),
            for_=values.get("for") or 0.0,
            repeat=values.get("repeat") or 0.0,
            keep_firing_for=values.get("keep_firing_for") or 0.0,
            over=values.get("over") or 0.0,
            agg=values.get("agg") or "last",
            absent=values.get("absent") or 0.0,
            severity=values.get("severity") or "warning",
            to=tuple(to or ()),
            description=values.get("description") or "",
            flapping=values.get("flapping", True),
        )
        if not failed & _THRESHOLD_KEYS:
            for key, message in rule.problems():
                check.error(f"{where}.{key}" if key else where, message)
        if len(check.problems) == before:
            rules.append(rule)
    return rules


def _build_section(raw: Any, check: Checker, config: Any) -> list[Rule]:
    return rules_from_config(raw, check, default_to=config.mail.get("to") or [])


SECTION = Section("rules", RULE_OPTIONS, array=True, build=_build_section)


def incident_id(rule: str, labels: Labels, fired_at: float, kind: str = "") -> str:
    """A stable id for one incident: the same inputs always give the same id."""
    text = "\x1f".join([rule, kind, repr(tuple(labels)), f"{fired_at:.6f}"])
    import hashlib  # only when an incident starts: the idle agent does without it

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class _Incident:
    """One open incident: what was mailed, at which level, and when last."""

    __slots__ = ("id", "since", "fired_at", "level", "severity", "threshold", "notified_at", "absent")

    def __init__(self, id: str, since: float, fired_at: float, level: int, severity: str,
                 threshold: float | None, notified_at: float, absent: bool = False) -> None:
        self.id = id
        self.since = since
        self.fired_at = fired_at
        self.level = level
        self.severity = severity
        self.threshold = threshold
        self.notified_at = notified_at
        self.absent = absent

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Incident:
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})


class _Compiled:
    """A rule with its thresholds turned into "above" form (values times ``sign``)."""

    __slots__ = ("rule", "index", "sign", "edge", "clear_edge", "levels", "matchers")

    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.index = index
        self.sign = rule.direction
        self.levels = tuple((self.sign * value, value, severity) for value, severity in rule.levels)
        self.edge = self.levels[0][0] if self.levels else math.inf
        clear = rule.clear_level
        self.clear_edge = self.sign * clear if clear is not None else math.inf
        self.matchers = _matchers(rule.labels)

    def level(self, x: float) -> int:
        """Index of the most severe level that ``x`` (signed) is beyond; -1 for none."""
        for i in range(len(self.levels) - 1, -1, -1):
            if x > self.levels[i][0]:
                return i
        return -1


class _Series:
    """The state of one rule for one label set."""

    __slots__ = ("compiled", "labels", "state", "since", "value", "last_seen", "clear_since",
                 "window", "flap", "flapping", "incident", "absent")

    def __init__(self, compiled: _Compiled, labels: Labels) -> None:
        rule = compiled.rule
        self.compiled = compiled
        self.labels = labels
        self.state = State.OK
        self.since: float | None = None  # when the condition began to hold
        self.value: float | None = None  # the last evaluated value (the aggregate with `over`)
        self.last_seen: float | None = None  # None after a restore: counts from the engine's start
        self.clear_since: float | None = None
        self.window = Window(rule.over) if rule.over and rule.agg != "last" else None
        self.flap = FlapHistory() if rule.flapping and compiled.sign else None
        self.flapping = False
        self.incident: _Incident | None = None  # the mailed threshold incident
        self.absent: _Incident | None = None  # the mailed "no samples" incident


class RuleEngine:
    """Evaluates samples against rules; returns AlertEvents for state changes.

    ``flap_start``/``flap_stop`` are the percent state change above which a series
    starts flapping and below which it stops; ``forget_after`` is how long a quiet,
    healthy series is remembered (its window too) once its samples stop.
    """

    def __init__(self, rules: Iterable[Rule], *, flap_start: float = START_PERCENT,
                 flap_stop: float = STOP_PERCENT, forget_after: float = FORGET_AFTER) -> None:
        if not 0 <= flap_stop <= flap_start <= 100:
            raise ValueError(f"need 0 <= flap_stop <= flap_start <= 100, got {flap_stop} and {flap_start}")
        self.rules = list(rules)
        self.flap_start = flap_start
        self.flap_stop = flap_stop
        self.forget_after = forget_after
        self._compiled: list[_Compiled] = []
        self._by_metric: dict[str, list[_Compiled]] = {}
        names: set[str] = set()
        for index, rule in enumerate(self.rules):
            problems = rule.problems()
            if problems:
                key, message = problems[0]
                raise ValueError(f"rule {rule.name!r}: {key + ': ' if key else ''}{message}")
            if rule.name in names:
                raise ValueError(f"rule {rule.name!r}: duplicate name")
            names.add(rule.name)
            compiled = _Compiled(rule, index)
            self._compiled.append(compiled)
            self._by_metric.setdefault(rule.metric, []).append(compiled)
        self._series: dict[tuple[int, Labels], _Series] = {}
        self._no_match: list[set[Labels]] = [set() for _ in self.rules]
        self._seen = [False] * len(self.rules)
        self._rule_absent: dict[int, _Incident] = {}
        self._started: float | None = None

    # -- feeding -----------------------------------------------------------

    def observe(self, samples: Iterable[Sample], now: float) -> list[AlertEvent]:
        """Evaluate a batch of samples at time ``now``; the events their state changes produce.

        ``now`` times the state machine (for, repeat, keep_firing_for, absent); windows
        place each sample at its own ``timestamp``.
        """
        if self._started is None:
            self._started = now
        out: list[AlertEvent] = []
        series = self._series
        for sample in samples:
            compiled = self._by_metric.get(sample.metric)
            if not compiled:
                continue
            labels = sample.labels
            for c in compiled:
                s = series.get((c.index, labels))
                if s is None:
                    no_match = self._no_match[c.index]
                    if labels in no_match:
                        continue
                    if not _labels_match(c.matchers, labels):
                        if len(no_match) >= _NO_MATCH_CAP:
                            no_match.clear()
                        no_match.add(labels)
                        continue
                    s = series[(c.index, labels)] = _Series(c, labels)
                self._sample(c, s, sample, now, out)
        return out

    def tick(self, now: float) -> list[AlertEvent]:
        """Time-driven events: reminders (repeat), absent series, keep_firing_for expiry."""
        if self._started is None:
            self._started = now
        out: list[AlertEvent] = []
        forget = []
        for key, s in self._series.items():
            c = s.compiled
            rule = c.rule
            if s.state is State.FIRING:
                if s.clear_since is not None and now - s.clear_since >= rule.keep_firing_for:
                    s.state, s.since, s.clear_since = State.OK, None, None
                    self._settle(c, s, "resolve", -1, s.value, now, out)
                elif s.incident is not None and not s.flapping:
                    self._remind(c, s.labels, s.incident, s.value, now, out)
            if rule.absent:
                last = s.last_seen if s.last_seen is not None else self._started
                if s.absent is None:
                    if now - last >= rule.absent:
                        s.absent = self._open_absent(c, s.labels, last, now)
                        out.append(self._event("firing", c, s.labels, s.absent, None, now, "firing"))
                else:
                    self._remind(c, s.labels, s.absent, None, now, out)
            elif (s.state is State.OK and s.incident is None and not s.flapping and s.last_seen is not None
                  and now - s.last_seen >= max(self.forget_after, rule.over)):
                forget.append(key)
        for key in forget:
            del self._series[key]
        for c in self._compiled:
            if not c.rule.absent or self._seen[c.index]:
                continue
            incident = self._rule_absent.get(c.index)
            if incident is None:
                if now - self._started >= c.rule.absent:
                    incident = self._rule_absent[c.index] = self._open_absent(c, (), self._started, now)
                    out.append(self._event("firing", c, (), incident, None, now, "firing"))
            else:
                self._remind(c, (), incident, None, now, out)
        return out

    # -- reading -----------------------------------------------------------

    def states(self, now: float | None = None) -> list[AlertStatus]:
        """One row per rule and label set (and per rule without series), in rule order."""
        by_rule: dict[int, list[_Series]] = {}
        for s in self._series.values():
            by_rule.setdefault(s.compiled.index, []).append(s)
        rows: list[AlertStatus] = []
        for c in self._compiled:
            rule = c.rule
            incident = self._rule_absent.get(c.index)
            if incident is not None:
                rows.append(AlertStatus(rule, (), State.FIRING, None, incident.since, incident.severity, incident.id, "absent"))
            elif c.index not in by_rule:
                rows.append(AlertStatus(rule, (), State.OK, None, None, note="no matching series"))
            for s in sorted(by_rule.get(c.index, ()), key=lambda s: s.labels):
                if s.absent is not None:
                    rows.append(AlertStatus(rule, s.labels, State.FIRING, s.value, s.absent.since, s.absent.severity, s.absent.id, "absent"))
                    continue
                state = State.FLAPPING if s.flapping else s.state
                incident = s.incident
                rows.append(AlertStatus(rule, s.labels, state, s.value, s.since,
                                        incident.severity if incident else None, incident.id if incident else None))
        return rows

    def snapshot(self) -> dict[str, Any]:
        """Every series that is not plainly ok (pending, firing, flapping, absent, recent changes), JSON-serialisable.

        Windows are not kept: an `over` rule refills its window after a restart.
        """
        series = []
        for s in self._series.values():
            quiet = s.flap is None or s.flap.percent() == 0
            if s.state is State.OK and s.incident is None and s.absent is None and not s.flapping and quiet:
                continue
            series.append({
                "rule": s.compiled.rule.name,
                "labels": [list(pair) for pair in s.labels],
                "state": s.state.value,
                "since": s.since,
                "clear_since": s.clear_since,
                "value": s.value,
                "flapping": s.flapping,
                "history": [s.flap.bits, s.flap.count] if s.flap is not None else None,
                "incident": s.incident.to_json() if s.incident else None,
                "absent": s.absent.to_json() if s.absent else None,
            })
        rules = [{"rule": self._compiled[i].rule.name, "incident": inc.to_json()} for i, inc in self._rule_absent.items()]
        return {"version": 1, "series": series, "absent_rules": rules}

    def restore(self, snapshot: Mapping[str, Any]) -> int:
        """Take back the incidents of ``snapshot``; return how many were restored.

        Incidents of rules that are gone, renamed, or no longer match their labels
        are dropped: nothing could ever resolve them.
        """
        if snapshot.get("version") != 1:
            raise ValueError(f"unknown rule snapshot version {snapshot.get('version')!r}")
        by_name = {c.rule.name: c for c in self._compiled}
        restored = 0
        for entry in snapshot.get("series", ()):
            c = by_name.get(entry.get("rule"))
            labels = freeze_labels([tuple(pair) for pair in entry.get("labels", ())])
            if c is None or not _labels_match(c.matchers, labels):
                continue
            s = _Series(c, labels)
            s.state = State(entry.get("state", "ok"))
            s.since = entry.get("since")
            s.clear_since = entry.get("clear_since")
            s.value = entry.get("value")
            if s.flap is not None:
                s.flapping = bool(entry.get("flapping"))
                if entry.get("history"):
                    s.flap = FlapHistory(*entry["history"])
            if entry.get("incident"):
                s.incident = _Incident.from_json(entry["incident"])
            if entry.get("absent") and c.rule.absent:
                s.absent = _Incident.from_json(entry["absent"])
            if s.incident is None:
                if s.state is State.FIRING:
                    s.state, s.since = State.OK, None
            elif not s.flapping and s.state is not State.FIRING:
                # A mailed incident must end with a recovery: hold it firing until a good sample.
                s.state, s.since = State.FIRING, s.incident.since
            self._series[(c.index, labels)] = s
            self._seen[c.index] = True  # its own absent alert covers a restored series
            restored += (s.incident is not None) + (s.absent is not None)
        for entry in snapshot.get("absent_rules", ()):
            c = by_name.get(entry.get("rule"))
            if c is not None and c.rule.absent and not self._seen[c.index]:
                self._rule_absent[c.index] = _Incident.from_json(entry["incident"])
                restored += 1
        return restored

    # -- the state machine ---------------------------------------------------

    def _sample(self, c: _Compiled, s: _Series, sample: Sample, now: float, out: list[AlertEvent]) -> None:
        s.last_seen = now
        if not self._seen[c.index]:
            self._seen[c.index] = True
            incident = self._rule_absent.pop(c.index, None)
            if incident is not None:
                out.append(self._event("resolved", c, (), incident, None, now, "ok"))
        if s.absent is not None:
            out.append(self._event("resolved", c, s.labels, s.absent, sample.value, now, "ok"))
            s.absent = None
        value = sample.value
        if not c.sign or math.isnan(value):
            return  # an absent-only rule, or a probe with no reading: seen, nothing to compare
        if s.window is not None:
            s.window.add(sample.timestamp, value)
            value = s.window.value(c.rule.agg)
            if value is None:
                return
        s.value = value
        self._evaluate(c, s, value, now, out)

    def _evaluate(self, c: _Compiled, s: _Series, value: float, now: float, out: list[AlertEvent]) -> None:
        rule = c.rule
        x = c.sign * value
        transition = None
        level = -1
        if s.state is State.OK and x > c.edge:
            s.state, s.since = State.PENDING, now
        if s.state is State.PENDING:
            if x <= c.edge:
                s.state, s.since = State.OK, None
            elif now - s.since >= rule.for_:  # type: ignore[operator]
                s.state, s.clear_since = State.FIRING, None
                transition, level = "fire", c.level(x)
        elif s.state is State.FIRING:
            if x <= c.clear_edge:
                if s.clear_since is None:
                    s.clear_since = now
                if now - s.clear_since >= rule.keep_firing_for:
                    s.state, s.since, s.clear_since = State.OK, None, None
                    transition = "resolve"
            else:
                s.clear_since = None
                level = c.level(x)
                if s.incident is not None and level > s.incident.level:
                    transition = "escalate"
        self._settle(c, s, transition, level, value, now, out)

    def _settle(self, c: _Compiled, s: _Series, transition: str | None, level: int, value: float | None,
                now: float, out: list[AlertEvent]) -> None:
        """Turn a transition into events, or into silence while the series flaps."""
        flap = s.flap
        if flap is not None:
            flap.record(s.state is State.FIRING)
            if s.flapping or transition in ("fire", "resolve"):
                percent = flap.percent()
                if not s.flapping and percent > self.flap_start:
                    s.flapping = True
                    if s.incident is None:
                        s.incident = self._open(c, s, level, now)
                    out.append(self._event("flapping", c, s.labels, s.incident, value, now, "flapping", percent=percent))
                    return
                if s.flapping:
                    incident = s.incident
                    assert incident is not None
                    if transition == "escalate":
                        self._raise_level(c, incident, level)
                    if percent < self.flap_stop:
                        s.flapping = False
                        firing = s.state is State.FIRING
                        out.append(self._event("flap-ended", c, s.labels, incident, value, now,
                                               "firing" if firing else "ok", percent=percent))
                        if firing:
                            incident.notified_at = now
                        else:
                            s.incident = None
                    return
        incident = s.incident
        if transition == "fire":
            s.incident = self._open(c, s, level, now)
            out.append(self._event("firing", c, s.labels, s.incident, value, now, "firing"))
        elif transition == "resolve":
            if incident is not None:
                out.append(self._event("resolved", c, s.labels, incident, value, now, "ok"))
                s.incident = None
        elif transition == "escalate":
            assert incident is not None
            previous = incident.severity
            self._raise_level(c, incident, level)
            incident.notified_at = now
            out.append(self._event("escalated", c, s.labels, incident, value, now, "firing", previous=previous))
        elif s.state is State.FIRING and incident is not None:
            self._remind(c, s.labels, incident, value, now, out)

    def _open(self, c: _Compiled, s: _Series, level: int, now: float) -> _Incident:
        level = max(level, 0)
        _, threshold, severity = c.levels[level]
        since = s.since if s.since is not None else now
        return _Incident(incident_id(c.rule.name, s.labels, now), since, now, level, severity, threshold, now)

    def _open_absent(self, c: _Compiled, labels: Labels, since: float, now: float) -> _Incident:
        return _Incident(incident_id(c.rule.name, labels, now, "absent"), since, now, 0, c.rule.severity, None, now, True)

    @staticmethod
    def _raise_level(c: _Compiled, incident: _Incident, level: int) -> None:
        if level > incident.level:
            incident.level = level
            _, incident.threshold, incident.severity = c.levels[level]

    def _remind(self, c: _Compiled, labels: Labels, incident: _Incident, value: float | None, now: float,
                out: list[AlertEvent]) -> None:
        if c.rule.repeat > 0 and now - incident.notified_at >= c.rule.repeat:
            incident.notified_at = now
            out.append(self._event("reminder", c, labels, incident, value, now, "firing"))

    @staticmethod
    def _event(kind: str, c: _Compiled, labels: Labels, incident: _Incident, value: float | None, now: float,
               state: str, *, previous: str | None = None, percent: float | None = None) -> AlertEvent:
        return AlertEvent(
            kind=kind,
            rule=c.rule,
            labels=labels,
            value=value,
            threshold=incident.threshold,
            comparison="absent" if incident.absent else c.rule.comparison,
            severity=incident.severity,
            since=incident.since,
            at=now,
            incident=incident.id,
            fired_at=incident.fired_at,
            previous_severity=previous,
            state=state,
            percent_change=percent,
        )
