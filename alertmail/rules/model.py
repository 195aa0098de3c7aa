"""What rules are made of: the Rule itself, the events and statuses the engine reports, label matching.

Pure values shared by the config (``alertmail.rules.config``), the engine
(``alertmail.rules.engine``) and everything downstream that mails or shows alerts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatchcase

from alertmail.model import Labels, Sample

_GLOB = re.compile(r"[*?\[]")


class State(enum.Enum):
    OK = "ok"
    PENDING = "pending"
    FIRING = "firing"
    FLAPPING = "flapping"


def label_matchers(labels: Mapping[str, str]) -> tuple[tuple[str, str, bool], ...]:
    return tuple((str(k), str(v), bool(_GLOB.search(str(v)))) for k, v in labels.items())


def labels_match(matchers: tuple[tuple[str, str, bool], ...], labels: Labels) -> bool:
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
    runbook: str = ""  # an http(s) URL: what to do about this alert, linked from its mail
    flapping: bool = True
    min_coverage: float = 0.5  # with `over`: the fraction of the window samples must span before it decides
    undeclared: bool = False  # the metric comes from something no probe declares it for (replayed samples, a plugin)

    def __hash__(self) -> int:
        # `labels` is a dict, so the generated hash would fail; names are unique anyway.
        return hash((self.name, self.metric))

    def matches(self, sample: Sample) -> bool:
        """True when the sample's metric is this rule's and its labels pass the matchers (exact or glob)."""
        return sample.metric == self.metric and labels_match(label_matchers(self.labels), sample.labels)

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
            out.append(
                ("warning", f"`{first_key}` already sets the first level; remove `warning` (use `critical` for a second level)")
            )
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
                out.append(
                    (
                        key,
                        f"one level cannot tell the direction; write above = N or below = N instead of `{key}` alone,"
                        " or give both warning and critical",
                    )
                )
            elif self.warning is None and not self.absent:
                out.append(("", 'no threshold; add above = N or below = N (or warning and critical levels), or absent = "5m"'))
        if self.clear is not None:
            direction, threshold = self.direction, self.threshold
            if threshold is None:
                out.append(("clear", "a recovery level needs a threshold; add above or below, or remove `clear`"))
            elif direction > 0 and self.clear > threshold:
                out.append(
                    (
                        "clear",
                        f"must be at or below the threshold {threshold:g} in an `above` rule"
                        f" (recovery comes when the value falls to it); got {self.clear:g}",
                    )
                )
            elif direction < 0 and self.clear < threshold:
                out.append(
                    (
                        "clear",
                        f"must be at or above the threshold {threshold:g} in a `below` rule"
                        f" (recovery comes when the value rises to it); got {self.clear:g}",
                    )
                )
        if self.agg not in ("avg", "min", "max", "last", "rate"):
            out.append(("agg", f"expected one of 'avg', 'min', 'max', 'last', 'rate', got {self.agg!r}"))
        elif self.agg != "last" and not self.over:
            out.append(("over", f'agg = "{self.agg}" needs a window; add over = "5m" (or use agg = "last")'))
        if not 0 < self.min_coverage <= 1:
            fix = f"a fraction of the window, above 0 and at most 1 (0.5 = half of `over`); got {self.min_coverage:g}"
            out.append(("min_coverage", fix))
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
    reason: str = ""  # why it happened when not the value: "resolved by a configuration change: ..."

    @property
    def duration(self) -> float:
        """How long the condition has held (or held, for "resolved")."""
        return self.at - self.since

    def shifted(self, delta: float) -> AlertEvent:
        """This event with its times moved by ``delta`` seconds (the wall clock was stepped since it happened)."""
        fired_at = self.fired_at + delta if self.fired_at is not None else None
        return replace(self, since=self.since + delta, at=self.at + delta, fired_at=fired_at)


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


def incident_id(rule: str, labels: Labels, fired_at: float, kind: str = "") -> str:
    """A stable id for one incident: the same inputs always give the same id."""
    text = "\x1f".join([rule, kind, repr(tuple(labels)), f"{fired_at:.6f}"])
    import hashlib  # only when an incident starts: the idle agent does without it

    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
