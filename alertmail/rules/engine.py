"""Threshold rules: a pure state machine per rule and label set (no I/O, no clock).

    ok -> pending -> firing -> ok        (plus flapping)

The engine takes samples and the current time and returns the alert events that
state changes produce; the caller owns the clock, which keeps it testable. The
rules and events are values of ``alertmail.rules.model``; ``alertmail.rules.config``
builds rules from ``[[rules]]``.

Semantics, in the order a sample meets them:

* **Value.** The sample's value, or with ``over`` the ``agg`` of the series' window
  (t - over, t], t the newest sample's timestamp (avg/min/max/last, or ``rate``:
  per-second increase of a counter, resets counted as a restart from zero); see
  ``alertmail.rules.window`` for the memory bound. A window decides only once its
  samples span ``min_coverage`` (default half) of ``over``; until then the sample
  changes no state (as after a gap as long as the window).
* **NaN and infinities** (one definition for the agent, ``replay`` and windows). A NaN
  sample (a probe with no reading) counts as seen (absent stays quiet) but is not
  compared and does not enter the window: the state stays as it was. +Inf and -Inf are
  values: seen, compared (+Inf is above every threshold, -Inf below every one) and kept
  in the window, where ``max``/``min``/``last`` carry them, ``avg`` is the infinity it
  holds (undecided while it holds both), and ``rate`` is undecided while it holds one.
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
* **Flapping.** Each evaluation records "firing or not" (see ``alertmail.rules.flapping``,
  Nagios Core's algorithm), except while pending: Nagios leaves soft states out. When a
  firing/recovery change brings the weighted percent change to the start threshold
  (``>=``), that change is replaced by one ``flapping`` event, then nothing is sent
  (no resolved, firing, escalated or reminder) until the percent falls to the stop
  threshold (``<=``): then one ``flap-ended`` event whose ``state`` is ``"firing"`` (the
  incident goes on: reminders, then resolved) or ``"ok"`` (the incident is over).
* **Incidents.** Firing opens an incident whose id is a hash of rule name, labels and
  firing time; every later event of it (escalated, reminder, flapping, flap-ended,
  resolved) carries the same id, so the notifier can thread them under one Message-ID.

``snapshot()``/``restore()`` carry open incidents across a restart: a restored
firing incident is not mailed again, and its recovery still is. They also carry when
each series of a rule with ``absent`` was last seen, so a series that stopped while the
agent was down (or just before it stopped) is reported absent with its labels and the
time since its last sample, not as a rule with no series since the start. It is reported
once ``absent`` has passed since the start too: every series gets that long to report again.

**Time.** ``now`` must not jump: the caller reads a clock that only runs forward (the
agent's wall clock, checked against the monotonic one). When the wall clock is stepped,
the caller passes the step to ``shift()``, which moves every stored time by it: every
duration (``for``, ``keep_firing_for``, ``repeat``, ``absent``, windows) keeps counting
from the same instant as before, and the times events report are those of the wall
clock after the step.

Memory per series is bounded: a few slots, 21 bits of flap history, and with
``over`` at most ``WINDOW_BUCKETS + 1`` window buckets. Healthy series that stop
reporting are forgotten after ``forget_after`` (unless the rule watches ``absent``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from alertmail.model import Labels, Sample, freeze_labels
from alertmail.rules.flapping import START_PERCENT, STOP_PERCENT, FlapHistory
from alertmail.rules.model import AlertEvent, AlertStatus, Rule, State, incident_id, label_matchers, labels_match
from alertmail.rules.window import Window

# Rules that stop seeing a series forget it after this long (unless it alerts).
FORGET_AFTER = 3600.0
# Cap on remembered non-matching label sets per rule; churning labels (pids) must not grow memory.
_NO_MATCH_CAP = 4096


class _Incident:
    """One open incident: what was mailed, at which level, and when last."""

    __slots__ = ("absent", "clear", "fired_at", "id", "level", "notified_at", "severity", "since", "threshold")

    def __init__(
        self,
        id: str,
        since: float,
        fired_at: float,
        level: int,
        severity: str,
        threshold: float | None,
        notified_at: float,
        absent: bool = False,
        clear: float | None = None,
    ) -> None:
        self.id = id
        self.since = since
        self.fired_at = fired_at
        self.level = level
        self.severity = severity
        self.threshold = threshold
        self.notified_at = notified_at
        self.absent = absent
        self.clear = clear  # the recovery line when it fired: a reload that moves it is told apart from a recovery

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _Incident:
        return cls(**{name: data[name] for name in cls.__slots__ if name in data})


class _Compiled:
    """A rule with its thresholds turned into "above" form (values times ``sign``)."""

    __slots__ = ("clear_edge", "edge", "index", "levels", "matchers", "rule", "sign")

    def __init__(self, rule: Rule, index: int) -> None:
        self.rule = rule
        self.index = index
        self.sign = rule.direction
        self.levels = tuple((self.sign * value, value, severity) for value, severity in rule.levels)
        self.edge = self.levels[0][0] if self.levels else math.inf
        clear = rule.clear_level
        self.clear_edge = self.sign * clear if clear is not None else math.inf
        self.matchers = label_matchers(rule.labels)

    def level(self, x: float) -> int:
        """Index of the most severe level that ``x`` (signed) is beyond; -1 for none."""
        for i in range(len(self.levels) - 1, -1, -1):
            if x > self.levels[i][0]:
                return i
        return -1


class _Series:
    """The state of one rule for one label set."""

    __slots__ = (
        "absent",
        "clear_since",
        "compiled",
        "flap",
        "flapping",
        "incident",
        "labels",
        "last_seen",
        "since",
        "state",
        "value",
        "window",
    )

    def __init__(self, compiled: _Compiled, labels: Labels) -> None:
        rule = compiled.rule
        self.compiled = compiled
        self.labels = labels
        self.state = State.OK
        self.since: float | None = None  # when the condition began to hold
        self.value: float | None = None  # the last evaluated value (the aggregate with `over`)
        self.last_seen: float | None = None  # None: counts from the engine's start (a series restored without one)
        self.clear_since: float | None = None
        self.window = Window(rule.over, min_coverage=rule.min_coverage) if rule.over else None
        self.flap = FlapHistory() if rule.flapping and compiled.sign else None
        self.flapping = False
        self.incident: _Incident | None = None  # the mailed threshold incident
        self.absent: _Incident | None = None  # the mailed "no samples" incident


class RuleEngine:
    """Evaluates samples against rules; returns AlertEvents for state changes.

    ``flap_start``/``flap_stop`` are the percent state change from which a series
    starts flapping (``>=``) and at or below which it stops (Nagios's thresholds); ``forget_after`` is how long a quiet,
    healthy series is remembered (its window too) once its samples stop.
    """

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        flap_start: float = START_PERCENT,
        flap_stop: float = STOP_PERCENT,
        forget_after: float = FORGET_AFTER,
    ) -> None:
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
                    if not labels_match(c.matchers, labels):
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
                    # A last-seen time restored from before the start: every series gets `absent` after the
                    # start to report again (no false alarm for one the agent was simply not running to see).
                    if now - last >= rule.absent and now - self._started >= rule.absent:
                        s.absent = self._open_absent(c, s.labels, last, now)
                        out.append(self._event("firing", c, s.labels, s.absent, None, now, "firing"))
                else:
                    self._remind(c, s.labels, s.absent, None, now, out)
            elif (
                s.state is State.OK
                and s.incident is None
                and not s.flapping
                and s.last_seen is not None
                and now - s.last_seen >= max(self.forget_after, rule.over)
            ):
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

    def prime(self, samples: Iterable[Sample]) -> int:
        """Fill the windows of ``over`` rules with samples from before a restart (the saved chart history):
        no state changes, no events. How many samples went into windows.

        Without it every window would start empty and wait for its coverage again after a restart.
        """
        count = 0
        for sample in sorted(samples, key=lambda sample: sample.timestamp):
            if math.isnan(sample.value):
                continue
            for c in self._by_metric.get(sample.metric, ()):
                if not c.rule.over or not labels_match(c.matchers, sample.labels):
                    continue
                s = self._series.get((c.index, sample.labels))
                if s is None:
                    s = self._series[(c.index, sample.labels)] = _Series(c, sample.labels)
                assert s.window is not None
                s.window.add(sample.timestamp, sample.value)
                self._seen[c.index] = True  # the series' own absent alert covers it, as for a restored one
                count += 1
        return count

    def shift(self, delta: float) -> None:
        """The wall clock was stepped by ``delta`` seconds: move every stored time by it.

        Durations measured from those times are then what the monotonic clock says, and
        the times events report (since, fired at) read on the stepped wall clock.
        """
        if not delta:
            return
        if self._started is not None:
            self._started += delta
        incidents = list(self._rule_absent.values())
        for s in self._series.values():
            if s.since is not None:
                s.since += delta
            if s.last_seen is not None:
                s.last_seen += delta
            if s.clear_since is not None:
                s.clear_since += delta
            if s.window is not None:
                s.window.shift(delta)
            incidents += [i for i in (s.incident, s.absent) if i is not None]
        for incident in incidents:
            incident.since += delta
            incident.fired_at += delta
            incident.notified_at += delta

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
                    rows.append(
                        AlertStatus(
                            rule, s.labels, State.FIRING, s.value, s.absent.since, s.absent.severity, s.absent.id, "absent"
                        )
                    )
                    continue
                state = State.FLAPPING if s.flapping else s.state
                incident = s.incident
                rows.append(
                    AlertStatus(
                        rule,
                        s.labels,
                        state,
                        s.value,
                        s.since,
                        incident.severity if incident else None,
                        incident.id if incident else None,
                    )
                )
        return rows

    def seen_rules(self) -> set[str]:
        """Names of the rules that have matched a series (a window still filling counts)."""
        return {c.rule.name for c in self._compiled if self._seen[c.index]}

    def snapshot(self) -> dict[str, Any]:
        """Every series that is not plainly ok (pending, firing, flapping, absent, recent changes), and every
        series of a rule with ``absent`` (for its last-seen time), JSON-serialisable.

        Windows are not kept here: the agent refills them from the saved chart history (``prime``).
        """
        series = []
        for s in self._series.values():
            quiet = s.flap is None or s.flap.percent() == 0
            plain = s.state is State.OK and s.incident is None and s.absent is None and not s.flapping and quiet
            if plain and not (s.compiled.rule.absent and s.last_seen is not None):
                continue
            series.append(
                {
                    "rule": s.compiled.rule.name,
                    "labels": [list(pair) for pair in s.labels],
                    "state": s.state.value,
                    "since": s.since,
                    "clear_since": s.clear_since,
                    "last_seen": s.last_seen,
                    "value": s.value,
                    "flapping": s.flapping,
                    "history": [s.flap.bits, s.flap.count] if s.flap is not None else None,
                    "incident": s.incident.to_json() if s.incident else None,
                    "absent": s.absent.to_json() if s.absent else None,
                }
            )
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
            labels = freeze_labels(tuple((str(k), str(v)) for k, v in entry.get("labels", ())))
            if c is None or not labels_match(c.matchers, labels):
                continue
            s = _Series(c, labels)
            s.state = State(entry.get("state", "ok"))
            s.since = entry.get("since")
            s.clear_since = entry.get("clear_since")
            if c.rule.absent and isinstance(entry.get("last_seen"), int | float):
                # A series that stopped while the agent was down is absent since its last sample, not since the start.
                s.last_seen = float(entry["last_seen"])
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
            aggregated = s.window.value(c.rule.agg)
            if aggregated is None:
                return
            value = aggregated
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

    def _settle(
        self, c: _Compiled, s: _Series, transition: str | None, level: int, value: float | None, now: float, out: list[AlertEvent]
    ) -> None:
        """Turn a transition into events, or into silence while the series flaps."""
        flap = s.flap
        if flap is not None:
            if s.state is not State.PENDING:
                # As Nagios records hard states and recoveries, never a soft problem state.
                flap.record(s.state is State.FIRING)
            if s.flapping or transition in ("fire", "resolve"):
                percent = flap.percent()
                if not s.flapping and percent >= self.flap_start:
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
                    if percent <= self.flap_stop:
                        s.flapping = False
                        firing = s.state is State.FIRING
                        out.append(
                            self._event(
                                "flap-ended", c, s.labels, incident, value, now, "firing" if firing else "ok", percent=percent
                            )
                        )
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
                out.append(
                    self._event("resolved", c, s.labels, incident, value, now, "ok", reason=self._reason(c, incident, value))
                )
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
        return _Incident(
            incident_id(c.rule.name, s.labels, now), since, now, level, severity, threshold, now, clear=c.rule.clear_level
        )

    @staticmethod
    def _reason(c: _Compiled, incident: _Incident, value: float | None) -> str:
        """Why a recovery came, when the value did not: the recovery line moved since the incident fired."""
        old, new = incident.clear, c.rule.clear_level
        if old is None or new is None or old == new or not c.sign:
            return ""
        if value is not None and c.sign * value <= c.sign * old:
            return ""  # it would have recovered on the old line too
        side = "below" if c.sign > 0 else "above"
        return f"resolved by a configuration change: the rule now recovers {side} {new:.15g} (it was {old:.15g})"

    def _open_absent(self, c: _Compiled, labels: Labels, since: float, now: float) -> _Incident:
        return _Incident(incident_id(c.rule.name, labels, now, "absent"), since, now, 0, c.rule.severity, None, now, True)

    @staticmethod
    def _raise_level(c: _Compiled, incident: _Incident, level: int) -> None:
        if level > incident.level:
            incident.level = level
            _, incident.threshold, incident.severity = c.levels[level]

    def _remind(
        self, c: _Compiled, labels: Labels, incident: _Incident, value: float | None, now: float, out: list[AlertEvent]
    ) -> None:
        if c.rule.repeat > 0 and now - incident.notified_at >= c.rule.repeat:
            incident.notified_at = now
            out.append(self._event("reminder", c, labels, incident, value, now, "firing"))

    @staticmethod
    def _event(
        kind: str,
        c: _Compiled,
        labels: Labels,
        incident: _Incident,
        value: float | None,
        now: float,
        state: str,
        *,
        previous: str | None = None,
        percent: float | None = None,
        reason: str = "",
    ) -> AlertEvent:
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
            reason=reason,
        )
