"""``[[rules]]`` in the config: the options a rule takes, their checks, and the Rule objects built from them."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from alertmail.config.schema import Checker, Option, Section
from alertmail.rules.model import Rule
from alertmail.units import valid_address

RULE_OPTIONS: dict[str, Option] = {
    "name": Option("str", required=True, help='a unique name like "disk-root-full"'),
    "metric": Option("str", required=True, help='the metric to watch, e.g. "disk.used_percent"'),
    "labels": Option("table", {}, glob=True, help='label matchers: exact values or globs, e.g. { mount = "/" }'),
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
    "min_coverage": Option(
        "number", 0.5, help="with `over`: decide once the samples span this fraction of the window (0 < x <= 1)"
    ),
    "absent": Option("duration", 0.0, help="fire when no sample arrives for this long"),
    "severity": Option("str", "warning", help="severity shown in the subject"),
    "to": Option("list", None, addresses=True, help="recipients; default: [mail].to"),
    "description": Option("str", "", multiline=True, help="a line of text put into the mail"),
    "runbook": Option("str", "", help="http(s) URL of what to do about this alert; linked from its mail"),
    "flapping": Option("bool", True, help="detect flapping (Nagios percent state change)"),
    "undeclared": Option(
        "bool", False, help="accept a metric no loaded probe declares (replayed samples, a plugin that declares none)"
    ),
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/+-]*")
_SEVERITY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_THRESHOLD_KEYS = {"above", "below", "warning", "critical", "clear", "over", "agg", "absent", "min_coverage"}


def check_address(value: Any) -> str | None:
    """Why ``value`` is not a usable recipient address, or None when it is.

    The same rule as [mail].to (``config.valid_address``): a bare address, since it
    also goes into the SMTP envelope.
    """
    if not isinstance(value, str) or not value.strip():
        return f'expected an address like "ops@example.com", got {value!r}'
    if "\r" in value or "\n" in value:
        return f"line breaks are not allowed in an address; got {value!r}"
    if not valid_address(value):
        return f"not a valid mail address: {value!r}; write it as user@example.com"
    return None


def check_runbook(value: str) -> str | None:
    """Why ``value`` is not a usable runbook link (an absolute http or https URL), or None when it is."""
    from urllib.parse import urlsplit

    fix = 'write it as an absolute link like "https://wiki.example.com/runbooks/disk-full"'
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        return f"spaces and control characters are not allowed in a URL (encode a space as %20); got {value!r}; {fix}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError as exc:
        return f"not a URL ({exc}): {value!r}; {fix}"
    if parts.scheme.lower() not in ("http", "https"):
        return f"expected an http or https URL, got {value!r}; {fix}"
    if not parts.hostname:
        return f"no host in {value!r}; {fix}"
    return None


def rules_from_config(raw: Any, check: Checker, *, default_to: Iterable[str]) -> list[Rule]:
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
            check.error(f"{where}.metric", 'empty; name a metric, e.g. "disk.used_percent" (see `alertmail probe --list`)')
        severity = values.get("severity")
        if isinstance(severity, str) and not _SEVERITY.fullmatch(severity):
            check.error(f"{where}.severity", f'use a word like "warning" or "critical"; got {severity!r}')
        elif "severity" in item and "critical" in item:
            check.error(f"{where}.severity", "with a `critical` level the severity is the level crossed; remove `severity`")
        runbook = values.get("runbook")
        if isinstance(runbook, str) and runbook:
            reason = check_runbook(runbook)
            if reason:
                check.error(f"{where}.runbook", reason)
        if "to" in item:
            to = values.get("to")
            if to is not None and not to:
                check.error(f"{where}.to", 'empty; list recipients like ["ops@example.com"], or remove `to` to use [mail].to')
            for k, address in enumerate(to or []):
                reason = check_address(address)
                if reason:
                    check.error(f"{where}.to[{k}]", reason)
        else:
            to = default_to  # checked with [mail]
            if not default_to:
                check.error(f"{where}.to", 'no recipients; add to = ["ops@example.com"] here or in [mail]')
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
            runbook=values.get("runbook") or "",
            flapping=values.get("flapping", True),
            min_coverage=values.get("min_coverage", 0.5),
            undeclared=values.get("undeclared", False),
        )
        if "min_coverage" in item and "min_coverage" in values and not rule.over:
            check.error(f"{where}.min_coverage", 'applies to a window; add over = "5m", or remove `min_coverage`')
        if not failed & _THRESHOLD_KEYS:
            for key, message in rule.problems():
                check.error(f"{where}.{key}" if key else where, message)
        if len(check.problems) == before:
            rules.append(rule)
    return rules


def _build_section(raw: Any, check: Checker, config: Any) -> list[Rule]:
    return rules_from_config(raw, check, default_to=config.mail.get("to") or [])


SECTION: Section[Any] = Section("rules", RULE_OPTIONS, array=True, build=_build_section, includable=True)
