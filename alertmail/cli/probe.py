"""``alertmail probe``: one pass of every probe, its metrics and what each rule would say."""

from __future__ import annotations

import asyncio
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from alertmail.cli.options import config_option
from alertmail.exitcodes import ExitCode
from alertmail.model import MetricInfo
from alertmail.probes.runner import ProbeRun, configure_probe, probe_settings, run_all_once

# Rate and CPU probes need two readings; the command waits this long between them.
WARMUP = 0.5


# ---------------------------------------------------------------------------
# Output


def _printable(text: str) -> str:
    """Labels come from probes and are untrusted: keep control characters off the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_IEC = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_value(value: float, unit: str) -> str:
    """A value for people: 21.9 %, 3.2 GiB, 1.5 MiB/s, 68."""
    if unit in ("bytes", "bytes/s"):
        size, step = abs(value), 0
        while size >= 1024 and step < len(_IEC) - 1:
            size, step = size / 1024, step + 1
        text = f"{math.copysign(size, value):.0f} B" if step == 0 else f"{math.copysign(size, value):.1f} {_IEC[step]}"
        return text + ("/s" if unit == "bytes/s" else "")
    if unit == "percent":
        return f"{value:.1f} %"
    if unit == "count":
        return f"{value:.0f}"
    number = f"{value:.2f}" if abs(value) < 100 else f"{value:.0f}"
    return f"{number} {unit}" if unit and unit != "load" else number


def _labels_text(labels: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{_printable(k)}={_printable(v)}" for k, v in labels)


def catalogue(probes: Mapping[str, Any]) -> list[tuple[str, MetricInfo]]:
    """(probe name, metric) for every metric the probes declare, in probe order."""
    return [(name, info) for name, probe in probes.items() for info in (getattr(probe, "metrics", None) or ())]


def _units(probes: Mapping[str, Any]) -> dict[tuple[str, str], str]:
    return {(name, info.name): info.unit for name, info in catalogue(probes)}


def _details(probes: Mapping[str, Any], runs: Iterable[ProbeRun]) -> list[dict[str, Any]]:
    """What each probe's sources said on this run (a Nagios plugin's output), once per text."""
    out: list[dict[str, Any]] = []
    for run in runs:
        detail = getattr(probes.get(run.name), "detail", None)
        if not callable(detail):
            continue
        seen: set[str] = set()
        for sample in run.samples:
            try:
                text = detail(sample.metric, sample.label_dict())
            except Exception:
                continue
            if text and text not in seen:
                seen.add(text)
                out.append({"probe": run.name, "labels": sample.label_dict(), "text": text})
    return out


def _unmatched_rules(rules: Iterable[Any], samples: Iterable[Any]) -> list[dict[str, Any]]:
    """Rules whose metric no probe emitted in this run, each with the closest metric that was emitted.

    The names a scrape target offers are known only once it is scraped: this is where a
    misspelt one (``scrape.node_lod1``) shows.
    """
    import difflib

    emitted = sorted({s.metric for s in samples})
    out = []
    for rule in rules:
        if rule.metric in emitted:
            continue
        close = difflib.get_close_matches(rule.metric, emitted, n=1)
        out.append({"rule": rule.name, "metric": rule.metric, "did_you_mean": close[0] if close else None})
    return out


def _state_rows(states: Iterable[Any]) -> list[dict[str, Any]]:
    """``RuleEngine.states()`` rows (AlertStatus) as plain data."""
    return [
        {
            "rule": item.rule.name,
            "metric": item.rule.metric,
            "labels": dict(item.labels),
            "state": item.state.value,
            "value": item.value,
            "severity": item.severity,
            "since": _iso(item.since),
            "note": item.note,
        }
        for item in states
    ]


def _iso(timestamp: float | None) -> str | None:
    """A time for --json: ISO 8601 in UTC, to the millisecond."""
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="milliseconds") if timestamp else None


def _needs_two_readings(info: MetricInfo) -> bool:
    """A rate or a percentage of time (cpu.percent) is a difference of two readings: the first run has none."""
    return info.kind == "rate" or info.unit == "percent" or info.unit.endswith("/s")


async def _one_pass(probes: Mapping[str, Any], timeouts: Mapping[str, float]) -> tuple[list[ProbeRun], list[str]]:
    """Run every probe; run again after WARMUP those that still miss a rate or percentage they declare.

    A service check that failed (tcp.up = 0 and no tcp.connect_seconds) misses metrics too,
    but a second run would only fail again: it runs once.
    """
    runs = {run.name: run for run in await run_all_once(probes, timeouts)}
    again = {}
    for name, probe in probes.items():
        emitted = {s.metric for s in runs[name].samples}
        missing = [info for info in getattr(probe, "metrics", None) or () if info.name not in emitted]
        if runs[name].ok and any(_needs_two_readings(info) for info in missing):
            again[name] = probe
    if again:
        await asyncio.sleep(WARMUP)
        for run in await run_all_once(again, timeouts):
            runs[run.name] = run
    return [runs[name] for name in probes], sorted(again)


def _load(ctx: click.Context, config_path: Path) -> tuple[Any, Any]:
    """(config, plugins); without a config file at the default place, the plugins alone."""
    from alertmail.cli.options import load_or_exit

    explicit = (
        ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT or "ALERTMAIL_CONFIG" in os.environ
    )
    if explicit or config_path.exists():
        return load_or_exit(config_path)
    from alertmail.loader import load_plugins

    click.echo(f"note: no {config_path}; running the installed probes with their defaults and no rules", err=True)
    return None, load_plugins()


@click.command("probe")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--list", "as_list", is_flag=True, help="list the metrics every probe emits, without collecting")
@click.option(
    "--record",
    "record_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="run the probes at their intervals and append the samples to this CSV (for `alertmail replay`)",
)
@click.option("--for", "record_for", default="10m", show_default=True, metavar="DURATION", help="how long --record runs")
@click.pass_context
def probe_command(
    ctx: click.Context, config_path: Path, as_json: bool, as_list: bool, record_path: Path | None, record_for: str
) -> None:
    """Run every probe once; print the values, each probe's duration and the rules' states."""

    from alertmail.cli.table import format_table

    cfg, plugins = _load(ctx, config_path)
    for info in plugins.errors:
        click.echo(f"warning: plugin {info.name} ({info.source}): {info.error}", err=True)
    probes = dict(plugins.probes)

    if as_list:
        entries = catalogue(probes)
        if as_json:
            click.echo(
                json.dumps(
                    [
                        {
                            "probe": p,
                            "metric": m.name,
                            "unit": m.unit,
                            "kind": m.kind,
                            "labels": list(m.labels),
                            "description": m.description,
                        }
                        for p, m in entries
                    ],
                    indent=2,
                )
            )
        else:
            click.echo(
                format_table(
                    ["metric", "unit", "kind", "labels", "probe", "description"],
                    [[m.name, m.unit, m.kind, ",".join(m.labels) or "-", p, m.description] for p, m in entries],
                )
            )
        return

    settings = {name: probe_settings(cfg, name, probe) for name, probe in probes.items()}
    active = {name: probe for name, probe in probes.items() if settings[name].enabled}
    problems: list[str] = []
    broken: list[ProbeRun] = []
    for name, probe in list(active.items()):
        try:
            problems += configure_probe(name, probe, settings[name].options)
        except Exception as exc:  # a bug in a plugin's configure: report it like a failed run
            broken.append(ProbeRun(name, error=f"probe {name}: configure failed: {type(exc).__name__}: {exc}"))
            del active[name]
    if problems:
        where = cfg.path if cfg is not None else config_path
        for line in problems:
            click.echo(f"{where}: {line}", err=True)
        sys.exit(ExitCode.CONFIG)
    if record_path is not None:
        from alertmail.cli.replay import record_to_file

        explicit = ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT
        intervals = {n: settings[n].interval for n in active}
        timeouts = {n: settings[n].timeout for n in active}
        record_to_file(record_path, active, intervals, timeouts, record_for, config_path if explicit else None)
        return

    runs, warmed = asyncio.run(_one_pass(active, {n: settings[n].timeout for n in active}))
    runs += broken
    now = time.time()
    samples = [s for run in runs for s in run.samples]
    states: list[dict[str, Any]] = []
    if cfg is not None and cfg.rules:
        from alertmail.rules.engine import RuleEngine

        engine = RuleEngine(cfg.rules)
        engine.observe(samples, now)
        states = _state_rows(engine.states(now))

    said = _details(active, runs)
    unmatched = _unmatched_rules(cfg.rules if cfg is not None else [], samples)
    units = _units(probes)
    metric_units = {metric: unit for (_, metric), unit in units.items()}
    failed = any(not run.ok for run in runs)
    if as_json:
        doc = {
            "probes": [
                {
                    "name": run.name,
                    "duration": run.duration,
                    "error": run.error,
                    "timed_out": run.timed_out,
                    "second_run": run.name in warmed,
                    "samples": [
                        {
                            "metric": s.metric,
                            "labels": s.label_dict(),
                            "value": s.value,
                            "unit": units.get((run.name, s.metric), ""),
                            "timestamp": _iso(s.timestamp),
                        }
                        for s in run.samples
                    ],
                }
                for run in runs
            ],
            "rules": states,
            "details": said,
            "unmatched_rules": unmatched,
            "warmup_seconds": WARMUP if warmed else 0.0,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        rows = [
            [run.name, s.metric, _labels_text(s.labels) or "-", format_value(s.value, units.get((run.name, s.metric), ""))]
            for run in runs
            for s in run.samples
        ]
        click.echo(format_table(["probe", "metric", "labels", "value"], rows, align_right=(3,)))
        if warmed:
            click.echo(
                f"\n({', '.join(warmed)}: values from a second run {WARMUP:g}s after the first;"
                " rates and CPU percent need two readings)"
            )
        for item in said:
            text = "\n    ".join(_printable(line) for line in item["text"].splitlines())
            click.echo(f"\n{item['probe']} {_labels_text(sorted(item['labels'].items()))} said:\n    {text}")
        click.echo()
        click.echo(
            format_table(
                ["probe", "samples", "duration", "status"],
                [[run.name, len(run.samples), f"{run.duration * 1000:.2f} ms", _printable(run.error or "ok")] for run in runs],
                align_right=(1, 2),
            )
        )
        if cfg is not None:
            click.echo()
            if states:
                click.echo(
                    format_table(
                        ["rule", "labels", "state", "value", "note"],
                        [
                            [
                                r["rule"],
                                _labels_text(sorted(r["labels"].items())) or "-",
                                r["state"],
                                "-" if r["value"] is None else format_value(r["value"], metric_units.get(r["metric"], "")),
                                r["note"],
                            ]
                            for r in states
                        ],
                    )
                )
            else:
                click.echo("no rule matched any sample" if cfg.rules else "no rules configured")
            for item in unmatched:
                hint = f"; did you mean {item['did_you_mean']!r}?" if item["did_you_mean"] else ""
                click.echo(f"rule {item['rule']}: no sample of {item['metric']} in this run{hint}")
    if failed:
        sys.exit(ExitCode.TEMPFAIL)
