"""Running probes: one bounded, isolated run each.

A probe's ``collect()`` may be a plain or an ``async`` function. Plain ones run in a
thread of their own so a slow plugin never blocks the event loop; every run is bounded by a
timeout, and whatever a probe does wrong (raises, hangs, returns junk) comes back as a
``ProbeRun`` with an error that names it, never as an exception that stops the others.

A sample whose value is NaN or an infinity is a good sample: NaN says "no reading",
±Inf a reading beyond every threshold, and the rules treat them as ``docs/rules.md``
says ("NaN and infinities"), the same in the agent and in ``alertmail replay``.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import re
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from alertmail.config.core import AgentSettings
from alertmail.config.schema import Checker, Option, Settings, options_of, typed
from alertmail.model import Sample, reserved_metric
from alertmail.protocols import ProbeProtocol

PROBE_OPTIONS: dict[str, Option] = {
    "enabled": Option("bool", True, help="run this probe"),
    "interval": Option(
        "duration", None, minimum=0.1, help="how often to run it; default: the probe's own, else [agent].interval"
    ),
    "timeout": Option("duration", None, minimum=0.001, help="longest one run may take; default: its interval"),
}
COMMON_KEYS = tuple(PROBE_OPTIONS)
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
        elif not item.metric:
            bad.append(f"item {i} has an empty metric name")
        elif reserved_metric(item.metric):
            bad.append(f"{item.metric} is refused: agent.* and alert.* are the agent's own figures; name it after the plugin")
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

    def __init__(self, probe: ProbeProtocol) -> None:
        self.probe = probe
        self.busy_since: float | None = None
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=f"probe {probe.name}", daemon=True).start()

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


async def run_probe(probe: ProbeProtocol, timeout: float) -> ProbeRun:
    """One run of ``probe`` bounded by ``timeout`` seconds; never raises for the probe's faults."""
    name = probe.name
    worker = _Worker.of(probe)
    busy_since = worker.busy_since if worker is not None else None
    if busy_since is not None:
        since = time.monotonic() - busy_since
        return ProbeRun(
            name, error=f"probe {name}: the previous run is still busy after {since:.1f}s; not started again", timed_out=True
        )
    start = time.perf_counter()
    try:
        result, spent = await asyncio.wait_for(_collect(probe), timeout)
    except TimeoutError:
        return ProbeRun(
            name, duration=time.perf_counter() - start, error=f"probe {name}: timed out after {timeout:g}s", timed_out=True
        )
    except Exception as exc:  # a probe's bug is reported, never a crash of the agent
        return ProbeRun(name, duration=time.perf_counter() - start, error=f"probe {name}: {type(exc).__name__}: {exc}")
    duration = time.perf_counter() - start if spent is None else spent
    samples, error = _validated(name, result)
    if error is None and callable(problem := getattr(probe, "problem", None)):
        # A probe that returned samples may still have met trouble worth a self-alert (a scrape target over a limit).
        try:
            said = problem()
        except Exception as exc:
            said = f"problem() raised {type(exc).__name__}: {exc}"
        if said:
            error = f"probe {name}: {said}"
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
    options: Any  # the probe's own keys, as ``configure()`` receives them: its Settings object (or a dict)


def probe_settings(cfg: Any, name: str, probe: Any) -> ProbeSettings:
    """Settings from ``cfg.probes[name]``, or the defaults when the config has no such table."""
    table = cfg.probes.get(name) if cfg is not None else None
    agent = cfg.agent if cfg is not None else AgentSettings()
    if table is None and getattr(probe, "configured_only", False):
        # A probe with nothing to do until its table names what to run or read (nagios, scrape): off, unloaded.
        interval = float(getattr(probe, "interval", None) or agent.interval)
        return ProbeSettings(False, interval, interval, {})
    if table is None:  # no table: the defaults, filled in by the same checker the config uses
        base = cfg.path.resolve().parent if cfg is not None else Path.cwd()
        table = Checker(base).table(f"probes.{name}", {}, {**PROBE_OPTIONS, **options_of(getattr(probe, "options", None))})
    interval = table.get("interval") or getattr(probe, "interval", None) or agent.interval
    timeout = table.get("timeout") or agent.probe_timeout or interval
    options = typed(getattr(probe, "options", None), {k: v for k, v in table.items() if k not in COMMON_KEYS})
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
        configure(options if isinstance(options, Settings) else dict(options))
    except ValueError as exc:
        return [
            f"probes.{name}.{line}" if _KEYPATH.match(line) else f"probes.{name}: {line}"
            for line in str(exc).splitlines()
            if line
        ]
    return []
