"""Registers the probes that watch the host beyond its counters: ``file`` (files by glob),
``logfile`` (new lines matching a pattern), ``sensors`` (temperatures and fans) and
``pressure`` (Linux pressure stall information).

This module is what the plugin loader imports, so it stays light: it names each probe and
the metrics it emits (rules are checked against them at every config load), and imports
the probe's code (``file.py``, ``logfile.py``, ``sensors.py``, ``pressure.py``) only when a
``[probes.NAME]`` table configures it. Without its table such a probe does not run
(``configured_only``): an empty ``[probes.sensors]`` or ``[probes.pressure]`` is enough.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from alertmail import MetricInfo, Sample, hookimpl

FILE_METRICS = (
    MetricInfo("file.exists", "count", "1 when the check's path (a glob) matches at least one file, else 0", ("check",)),
    MetricInfo("file.count", "count", "files the check's glob matches (0 included)", ("check",)),
    MetricInfo("file.age_seconds", "seconds", "time since the newest match was last modified", ("check",)),
    MetricInfo("file.size_bytes", "bytes", "size of the newest match", ("check",)),
)
LOGFILE_METRICS = (
    MetricInfo(
        "logfile.matches",
        "count",
        "lines matching the check's pattern written since the last run (the last one goes into the mail)",
        ("check",),
    ),
)
SENSORS_METRICS = (
    MetricInfo("sensors.temperature_celsius", "celsius", "a temperature sensor's reading", ("sensor", "label")),
    MetricInfo("sensors.fan_rpm", "rpm", "a fan's speed", ("sensor", "label")),
)
PRESSURE_METRICS = (
    MetricInfo(
        "pressure.some_percent",
        "percent",
        "share of the last 10 s some task stalled waiting for the resource (Linux PSI avg10)",
        ("resource",),
    ),
    MetricInfo(
        "pressure.full_percent",
        "percent",
        "share of the last 10 s all non-idle tasks stalled at once on the resource (Linux PSI avg10)",
        ("resource",),
    ),
)


class Deferred:
    """A probe whose code is imported when it is first configured or run (the host probes here,
    nagios and scrape in ``external.py``); it passes on what the real probe offers."""

    configured_only = True  # no [probes.NAME] table: the probe does not run, its code stays unloaded

    def __init__(self, name: str, module: str, cls: str, description: str, interval: float, metrics: tuple[MetricInfo, ...]):
        self.name = name
        self.description = description
        self.interval = interval
        self.metrics = metrics
        self._where = (f"{__package__}.{module}", cls)
        self._probe: Any = None

    def _real(self) -> Any:
        if self._probe is None:
            module, cls = self._where
            self._probe = getattr(importlib.import_module(module), cls)()
        return self._probe

    @property
    def options(self) -> Any:
        """The real probe's Settings class (None for a probe with no keys of its own)."""
        return getattr(self._real(), "options", None)

    def configure(self, settings: object) -> None:
        """Hand the real probe its settings object."""
        self._real().configure(settings)

    def collect(self) -> list[Sample]:
        return self._real().collect()

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """What the probe knows about this series beyond its value (a log line, why a check could not run)."""
        if self._probe is None or not callable(getattr(self._probe, "detail", None)):
            return None
        return self._probe.detail(metric, labels)

    def problem(self) -> str | None:
        """What went wrong on the last run though samples came back (a scrape target over a limit)."""
        problem = getattr(self._probe, "problem", None)
        return problem() if callable(problem) else None

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


@hookimpl
def register_probes(register):
    register(Deferred("file", "file", "FileProbe", "files by path or glob: existence, age, size, count", 60.0, FILE_METRICS))
    register(Deferred("logfile", "logfile", "LogfileProbe", "new log lines matching a pattern", 30.0, LOGFILE_METRICS))
    register(Deferred("sensors", "sensors", "SensorsProbe", "temperatures and fan speeds (psutil)", 30.0, SENSORS_METRICS))
    register(
        Deferred("pressure", "pressure", "PressureProbe", "CPU, memory and I/O pressure (Linux PSI)", 10.0, PRESSURE_METRICS)
    )
