"""Running probes: one bounded, isolated run each, and the ``alertmail probe`` command.

A probe's ``collect()`` may be a plain or an ``async`` function. Plain ones run in a
thread of their own so a slow plugin never blocks the event loop; every run is bounded by a
timeout, and whatever a probe does wrong (raises, hangs, returns junk) comes back as a
``ProbeRun`` with an error that names it, never as an exception that stops the others.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import os
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import click

from alertmail.exitcodes import ExitCode
from alertmail.model import MetricInfo, Sample

COMMON_KEYS = ("enabled", "interval", "timeout")
# Rate and CPU probes need two readings; the command waits this long between them.
WARMUP = 0.5

# A worker with nothing to do for this long ends; the agent's probes never wait that long.
WORKER_IDLE = 300.0


@dataclass
class ProbeRun:
    """The outcome of one run of one probe."""

    name: str
    samples: list[Sample] = field(default_factory=list)
    duration: float = 0.0  # seconds
    error: str | None = None
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def _validated(name: str, result: Any) -> tuple[list[Sample], str | None]:
    """The good samples of a collect() result, and an error describing the bad ones."""
    if result is None:
        return [], f"probe {name}: collect() returned None; return a list of Sample (an empty one is fine)"
    if isinstance(result, str | bytes | Mapping) or not isinstance(result, Iterable):
        return [], f"probe {name}: collect() returned {type(result).__name__}; expected an iterable of Sample"
    good: list[Sample] = []
    bad: list[str] = []
    for i, item in enumerate(result):
        if not isinstance(item, Sample):
            bad.append(f"item {i} is {type(item).__name__}, not a Sample")
        elif not math.isfinite(item.value):
            bad.append(f"{item.metric} = {item.value} is not a finite number")
        elif not item.metric:
            bad.append(f"item {i} has an empty metric name")
        else:
            good.append(item)
    if not bad:
        return good, None
    more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
    return good, f"probe {name}: {len(bad)} invalid sample(s): {'; '.join(bad[:3])}{more}"


def _collect_in_thread(probe: Any) -> tuple[Any, float]:
    """Run a plain collect(), drain a lazy result, and time both, inside the worker thread."""
    start = time.perf_counter()
    result = probe.collect()
    if isinstance(result, Iterable) and not isinstance(result, str | bytes | Mapping | list | tuple):
        result = list(result)  # a generator does its work while being iterated
    return result, time.perf_counter() - start


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.done():  # the run timed out meanwhile: nobody waits for this any more
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class _Worker:
    """A daemon thread that runs one probe's plain collect(), kept from run to run.

    Not asyncio.to_thread: the default executor is joined when the loop closes, so one
    probe stuck for good would keep the agent (or ``alertmail probe``) from ever exiting.
    One thread per probe: a probe stuck in the kernel (a dead NFS mount) holds only its
    own, and is not started again while it is stuck. Kept rather than started per run:
    starting a thread costs more CPU than most probes do.
    """

    _all: ClassVar[dict[int, _Worker]] = {}  # id(probe) -> worker; the worker holds the probe
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.busy_since: float | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=f"probe {getattr(probe, 'name', '?')}", daemon=True).start()

    @classmethod
    def of(cls, probe: Any) -> _Worker | None:
        return cls._all.get(id(probe))

    @classmethod
    def submit(cls, probe: Any, loop: asyncio.AbstractEventLoop, future: asyncio.Future) -> None:
        with cls._lock:
            worker = cls._all.get(id(probe))
            if worker is None:
                worker = cls._all[id(probe)] = cls(probe)
            worker.busy_since = time.monotonic()
            worker._jobs.put((loop, future))

    def _serve(self) -> None:
        while True:
            try:
                loop, future = self._jobs.get(timeout=WORKER_IDLE)
            except queue.Empty:
                with self._lock:  # submit() puts under the same lock: no job is left behind
                    if self._jobs.empty():
                        del self._all[id(self.probe)]
                        return
                continue
            try:
                result, error = _collect_in_thread(self.probe), None
            except Exception as exc:
                result, error = None, exc
            except BaseException as exc:  # SystemExit in a plugin must not end the agent
                result, error = None, RuntimeError(f"raised {type(exc).__name__}: {exc}")
            self.busy_since = None
            try:
                loop.call_soon_threadsafe(_settle, future, result, error)
            except RuntimeError:  # the loop is gone: the run was given up long ago
                pass


async def _in_thread(probe: Any) -> tuple[Any, float]:
    """Run a plain collect() in the probe's worker thread and wait for the result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()
    _Worker.submit(probe, loop, future)
    return await future


async def _collect(probe: Any) -> tuple[Any, float | None]:
    """The raw result, and the time spent in the probe itself when it ran in a thread."""
    spent = None
    if inspect.iscoroutinefunction(probe.collect):
        result = await probe.collect()
    else:
        # Timed in the thread: waiting for the thread to start is not the probe's cost.
        result, spent = await _in_thread(probe)
    if inspect.isawaitable(result):  # e.g. a callable object whose __call__ is async
        result = await result
        spent = None
    if hasattr(result, "__aiter__"):
        result = [item async for item in result]
        spent = None
    return result, spent


async def run_probe(probe: Any, timeout: float) -> ProbeRun:
    """One run of ``probe`` bounded by ``timeout`` seconds; never raises for the probe's faults."""
    name = str(getattr(probe, "name", type(probe).__name__))
    worker = _Worker.of(probe)
    busy_since = worker.busy_since if worker is not None else None
    if busy_since is not None:
        since = time.monotonic() - busy_since
        return ProbeRun(name, error=f"probe {name}: the previous run is still busy after {since:.1f}s; not started again", timed_out=True)
    start = time.perf_counter()
    try:
        result, spent = await asyncio.wait_for(_collect(probe), timeout)
    except TimeoutError:
        return ProbeRun(name, duration=time.perf_counter() - start, error=f"probe {name}: timed out after {timeout:g}s", timed_out=True)
    except Exception as exc:  # a probe's bug is reported, never a crash of the agent
        return ProbeRun(name, duration=time.perf_counter() - start, error=f"probe {name}: {type(exc).__name__}: {exc}")
    duration = time.perf_counter() - start if spent is None else spent
    samples, error = _validated(name, result)
    return ProbeRun(name, samples, duration, error)


async def run_all_once(probes: Mapping[str, Any], timeout: float | Mapping[str, float]) -> list[ProbeRun]:
    """Run every probe once, concurrently; ``timeout`` is one for all or one per probe name."""
    def limit(name: str) -> float:
        return timeout[name] if isinstance(timeout, Mapping) else timeout

    return list(await asyncio.gather(*(run_probe(p, limit(n)) for n, p in probes.items())))


# ---------------------------------------------------------------------------
# Settings and configuration of probes


@dataclass
class ProbeSettings:
    """A probe's checked ``[probes.NAME]`` table, split into what the agent and the probe need."""

    enabled: bool
    interval: float
    timeout: float
    options: dict[str, Any]  # the probe's own keys, as ``configure()`` receives them


def probe_settings(cfg: Any, name: str, probe: Any) -> ProbeSettings:
    """Settings from ``cfg.probes[name]``, or the defaults when the config has no such table."""
    from alertmail.config import AGENT_OPTIONS, PROBE_OPTIONS, Checker

    table = cfg.probes.get(name) if cfg is not None else None
    if table is None:  # no table: the defaults, filled in by the same checker the config uses
        base = cfg.path.resolve().parent if cfg is not None else Path.cwd()
        table = Checker(base).table(f"probes.{name}", {}, {**PROBE_OPTIONS, **(getattr(probe, "options", None) or {})})
    agent = cfg.agent if cfg is not None else {}
    interval = table.get("interval") or getattr(probe, "interval", None) or agent.get("interval") or AGENT_OPTIONS["interval"].default
    timeout = table.get("timeout") or agent.get("probe_timeout") or interval
    options = {k: v for k, v in table.items() if k not in COMMON_KEYS}
    return ProbeSettings(table.get("enabled", True) is not False, float(interval), float(min(timeout, interval)), options)


_KEYPATH = re.compile(r"^[A-Za-z_][\w\[\].-]*: ")


def configure_probe(name: str, probe: Any, options: Mapping[str, Any]) -> list[str]:
    """Call ``probe.configure(options)``; config problems come back as ``probes.NAME.KEY: ...`` lines.

    A probe's ``configure`` raises ValueError for a bad table; each line of the message
    is a problem, starting with its key path inside the table. Other exceptions are bugs
    of the probe and propagate.
    """
    configure = getattr(probe, "configure", None)
    if configure is None:
        return []
    try:
        configure(dict(options))
    except ValueError as exc:
        return [
            f"probes.{name}.{line}" if _KEYPATH.match(line) else f"probes.{name}: {line}"
            for line in str(exc).splitlines() if line
        ]
    return []


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


def _state_rows(states: Iterable[Any]) -> list[dict[str, Any]]:
    """``RuleEngine.states()`` rows (AlertStatus) as plain data."""
    return [
        {
            "rule": item.rule.name, "metric": item.rule.metric, "labels": dict(item.labels), "state": item.state.value,
            "value": item.value, "severity": item.severity, "note": item.note,
        }
        for item in states
    ]


async def _one_pass(probes: Mapping[str, Any], timeouts: Mapping[str, float]) -> tuple[list[ProbeRun], list[str]]:
    """Run every probe; run again after WARMUP those that still miss metrics they declare."""
    runs = {run.name: run for run in await run_all_once(probes, timeouts)}
    again = {}
    for name, probe in probes.items():
        declared = {info.name for info in getattr(probe, "metrics", None) or ()}
        if runs[name].ok and declared - {s.metric for s in runs[name].samples}:
            again[name] = probe
    if again:
        await asyncio.sleep(WARMUP)
        for run in await run_all_once(again, timeouts):
            runs[run.name] = run
    return [runs[name] for name in probes], sorted(again)


def _load(ctx: click.Context, config_path: Path) -> tuple[Any, Any]:
    """(config, plugins); without a config file at the default place, the plugins alone."""
    from alertmail.cli import load_or_exit

    explicit = ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT or "ALERTMAIL_CONFIG" in os.environ
    if explicit or config_path.exists():
        return load_or_exit(config_path)
    from alertmail.loader import load_plugins

    click.echo(f"note: no {config_path}; running the installed probes with their defaults and no rules", err=True)
    return None, load_plugins()


@click.command("probe")
@click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("ALERTMAIL_CONFIG", "config.toml"),
    show_default="config.toml, or $ALERTMAIL_CONFIG", help="configuration file",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
@click.option("--list", "as_list", is_flag=True, help="list the metrics every probe emits, without collecting")
@click.option("--record", "record_path", type=click.Path(dir_okay=False, path_type=Path),
              help="run the probes at their intervals and append the samples to this CSV (for `alertmail replay`)")
@click.option("--for", "record_for", default="10m", show_default=True, metavar="DURATION", help="how long --record runs")
@click.pass_context
def probe_command(ctx: click.Context, config_path: Path, as_json: bool, as_list: bool,
                  record_path: Path | None, record_for: str) -> None:
    """Run every probe once; print the values, each probe's duration and the rules' states."""
    import json

    from alertmail.table import format_table

    cfg, plugins = _load(ctx, config_path)
    for info in plugins.errors:
        click.echo(f"warning: plugin {info.name} ({info.source}): {info.error}", err=True)
    probes = dict(plugins.probes)

    if as_list:
        entries = catalogue(probes)
        if as_json:
            click.echo(json.dumps([{"probe": p, "metric": m.name, "unit": m.unit, "kind": m.kind, "labels": list(m.labels), "description": m.description} for p, m in entries], indent=2))
        else:
            click.echo(format_table(["metric", "unit", "kind", "labels", "probe", "description"], [[m.name, m.unit, m.kind, ",".join(m.labels) or "-", p, m.description] for p, m in entries]))
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
        from alertmail.replay import record_to_file

        record_to_file(record_path, active, settings, record_for)
        return

    runs, warmed = asyncio.run(_one_pass(active, {n: settings[n].timeout for n in active}))
    runs += broken
    now = time.time()
    samples = [s for run in runs for s in run.samples]
    states: list[dict[str, Any]] = []
    if cfg is not None and cfg.rules:
        from alertmail.rules import RuleEngine

        engine = RuleEngine(cfg.rules)
        engine.observe(samples, now)
        states = _state_rows(engine.states(now))

    units = _units(probes)
    metric_units = {metric: unit for (_, metric), unit in units.items()}
    failed = any(not run.ok for run in runs)
    if as_json:
        doc = {
            "probes": [
                {
                    "name": run.name, "duration": run.duration, "error": run.error, "timed_out": run.timed_out,
                    "second_run": run.name in warmed,
                    "samples": [{"metric": s.metric, "labels": s.label_dict(), "value": s.value, "unit": units.get((run.name, s.metric), ""), "timestamp": s.timestamp} for s in run.samples],
                }
                for run in runs
            ],
            "rules": states,
            "warmup_seconds": WARMUP if warmed else 0.0,
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        rows = [
            [run.name, s.metric, _labels_text(s.labels) or "-", format_value(s.value, units.get((run.name, s.metric), ""))]
            for run in runs for s in run.samples
        ]
        click.echo(format_table(["probe", "metric", "labels", "value"], rows, align_right=(3,)))
        if warmed:
            click.echo(f"\n({', '.join(warmed)}: values from a second run {WARMUP:g}s after the first; rates and CPU percent need two readings)")
        click.echo()
        click.echo(format_table(
            ["probe", "samples", "duration", "status"],
            [[run.name, len(run.samples), f"{run.duration * 1000:.2f} ms", _printable(run.error or "ok")] for run in runs],
            align_right=(1, 2),
        ))
        if cfg is not None:
            click.echo()
            if states:
                click.echo(format_table(
                    ["rule", "labels", "state", "value", "note"],
                    [
                        [r["rule"], _labels_text(sorted(r["labels"].items())) or "-", r["state"], "-" if r["value"] is None else format_value(r["value"], metric_units.get(r["metric"], "")), r["note"]]
                        for r in states
                    ],
                ))
            else:
                click.echo("no rule matched any sample" if cfg.rules else "no rules configured")
    if failed:
        sys.exit(ExitCode.TEMPFAIL)
