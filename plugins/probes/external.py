"""Registers the probes that read other monitoring programs: ``nagios`` (Nagios plugins) and
``scrape`` (Prometheus exporters and textfile-collector files).

This module is what the plugin loader imports, so it stays light: it names each probe
and the metrics it emits (rules are checked against them at every config load), and
imports the probe's code (``nagios.py``, ``scrape.py``) only when a ``[probes.NAME]``
table configures it. Without its table such a probe does not run (``configured_only``):
there is nothing for it to run or read.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from alertmail import MetricInfo, Sample, hookimpl

NAGIOS_METRICS = (
    MetricInfo("nagios.status", "count", "exit status of the check's plugin: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN", ("check",)),
    MetricInfo(
        "nagios.perfdata",
        "",
        "a performance-data value of the check, in base units (seconds, bytes, percent, counter values as printed)",
        ("check", "label"),
    ),
    MetricInfo("nagios.seconds", "seconds", "how long the check's plugin ran", ("check",)),
)

SCRAPE_METRICS = (
    MetricInfo("scrape.up", "count", "1 when the target's last scrape (or the file's read) worked, else 0", ("target",)),
    MetricInfo("scrape.series", "count", "series the target offered on its last scrape", ("target",)),
    MetricInfo("scrape.seconds", "seconds", "how long the target's last scrape took", ("target",)),
    MetricInfo("scrape.age_seconds", "seconds", "time since a textfile-collector file was last written", ("target",)),
    MetricInfo(
        "scrape.limited",
        "count",
        "1 when the target's last scrape passed a limit (size, series, timeout) and was dropped or cut",
        ("target",),
    ),
    MetricInfo(
        "scrape.*",
        "",
        "every series a target offers, as scrape.<series name>, with its labels plus target;"
        " counters also as scrape.<name>_per_second",
        ("target",),
    ),
)


class Deferred:
    """A probe whose code is imported when it is first configured or run."""

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
        return self._real().options

    def configure(self, options: Mapping[str, Any]) -> None:
        self._real().configure(options)

    def collect(self) -> list[Sample]:
        return self._real().collect()

    def problem(self) -> str | None:
        """What went wrong on the last run though samples came back (a scrape target over a limit)."""
        problem = getattr(self._probe, "problem", None)
        return problem() if callable(problem) else None

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """What the probe's source said about this series on its last run, for the alert mail."""
        return None if self._probe is None else self._probe.detail(metric, labels)

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


@hookimpl
def register_probes(register):
    register(
        Deferred("nagios", "nagios", "NagiosProbe", "Nagios plugins: exit status and performance data", 60.0, NAGIOS_METRICS)
    )
    register(
        Deferred("scrape", "scrape", "ScrapeProbe", "Prometheus exporters and textfile-collector files", 30.0, SCRAPE_METRICS)
    )
