"""Registers the probes that read other monitoring programs: ``nagios`` (Nagios plugins) and
``scrape`` (Prometheus exporters and textfile-collector files).

This module is what the plugin loader imports, so it stays light: it names each probe
and the metrics it emits (rules are checked against them at every config load), and
imports the probe's code (``nagios.py``, ``scrape.py``) only when a ``[probes.NAME]``
table configures it, through the same ``Deferred`` as the host probes. Without its table
such a probe does not run (``configured_only``): there is nothing for it to run or read.
"""

from __future__ import annotations

from alertmail import MetricInfo, hookimpl
from alertmail.plugins.probes.host import Deferred

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


@hookimpl
def register_probes(register):
    register(
        Deferred("nagios", "nagios", "NagiosProbe", "Nagios plugins: exit status and performance data", 60.0, NAGIOS_METRICS)
    )
    register(
        Deferred("scrape", "scrape", "ScrapeProbe", "Prometheus exporters and textfile-collector files", 30.0, SCRAPE_METRICS)
    )
