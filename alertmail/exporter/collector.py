"""What ``/metrics`` shows, as metric families built at each scrape.

* every probe sample (the newest of each series) under a Prometheus name:
  ``disk.used_percent`` becomes ``alertmail_disk_used_percent``, ``*_per_s`` becomes
  ``*_per_second``, the unit is appended when the name lacks it, a counter ends in
  ``_total``; HELP and TYPE come from the probe's ``MetricInfo``;
* rule states as ``alertmail_alert{rule, severity, state, <labels>} 1`` for every
  pending, firing or flapping alert, the way Prometheus exposes ``ALERTS``;
* the agent's own figures: probe runs, failures and overruns, queue depth, delivery
  attempts by transport and outcome, mails queued, events held by silences or folded
  into digests, and the process's memory and CPU.

The agent's own names are reserved: a probe metric that would be exported under one of
them (``agent.*``, ``alert``, a service's ``alertmail_relay_*``) is left out, logged once
and listed in ``alertmail_agent_metrics_refused``, so Prometheus never stores a fake.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from alertmail.exporter.exposition import Family
from alertmail.model import DeliveryResult, Envelope, Labels, MetricInfo, Sample, reserved_metric

log = logging.getLogger("alertmail.exporter")

PREFIX = "alertmail_"
# Unit of a MetricInfo -> the suffix a Prometheus name carries (Prometheus naming conventions).
UNIT_SUFFIX = {
    "percent": "percent",
    "bytes": "bytes",
    "bytes/s": "bytes_per_second",
    "ops/s": "per_second",
    "seconds": "seconds",
    "s": "seconds",
}
# The agent's own samples, which no probe declares.
AGENT_METRICS = {
    "agent.probe_seconds": MetricInfo("agent.probe_seconds", "seconds", "how long the last run of the probe took", ("probe",)),
    "agent.probe_failed": MetricInfo(
        "agent.probe_failed", "", "1 when the last run of the probe raised or returned bad data", ("probe",)
    ),
    "agent.probe_overrun": MetricInfo(
        "agent.probe_overrun", "", "1 when the last run of the probe took longer than its timeout", ("probe",)
    ),
    "agent.probe_missed": MetricInfo(
        "agent.probe_missed", "", "runs of the probe that missed their time since the agent started", ("probe",)
    ),
}
ALERT_LABELS = ("rule", "severity", "state")
# Names the agent's own families have or may have; with those of the running services
# (alertmail_relay_*), a probe metric that maps onto one of them is left out.
_RESERVED_NAMES = {f"{PREFIX}alert", f"{PREFIX}agent_metrics_refused"}
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(name: str) -> str:
    """A valid Prometheus label name; names starting with ``__`` are reserved for Prometheus."""
    name = _INVALID.sub("_", name) or "_"
    if name[0].isdigit():
        name = "_" + name
    return "x" + name if name.startswith("__") else name


def metric_name(info: MetricInfo) -> tuple[str, str]:
    """(Prometheus name, unit) of a metric; the unit is "" when the name carries none."""
    name = _INVALID.sub("_", info.name)
    name = re.sub(r"_per_s$", "_per_second", name)
    unit = UNIT_SUFFIX.get(info.unit, "")
    if unit and not name.endswith("_" + unit):
        name = f"{name}_{unit}"
    if info.kind == "counter":
        name = name.removesuffix("_total") + "_total"
    elif name.endswith("_total"):
        name = name[: -len("_total")]  # _total is for counters only (and _count for histograms)
    return PREFIX + name, unit


def _labels(labels: Labels, reserved: Iterable[str] = ()) -> dict[str, str]:
    """Sample labels with valid names; one that clashes with a name of ours becomes ``exported_NAME``."""
    taken = set(reserved)
    out: dict[str, str] = {}
    for key, value in labels:
        key = label_name(key)
        if key in taken:
            key = "exported_" + key
        out[key] = value
    return out


class AgentCollector:
    """The agent's state as metric families, read at each scrape (on the event loop)."""

    def __init__(
        self,
        infos: Mapping[str, MetricInfo],
        *,
        states: Callable[[], list[Any]],
        queue: Any = None,
        counts: Mapping[str, int] | None = None,
        services: Callable[[], list[Any]] = list,
        stale_after: float = 60.0,
    ) -> None:
        self.services = services  # running services; those with counters() are shown as alertmail_<name>_<key>
        # A plugin cannot describe the agent's own figures, only its own.
        self.infos = {**{k: v for k, v in infos.items() if not reserved_metric(k)}, **AGENT_METRICS}
        self.states = states
        self.queue = queue
        self.counts = counts if counts is not None else {}
        self.stale_after = stale_after
        self.latest: dict[tuple[str, Labels], Sample] = {}
        self.runs: Counter[tuple[str, str]] = Counter()  # (probe, "runs" | "failures" | "overruns")
        self.deliveries: Counter[tuple[str, str]] = Counter()  # (transport, outcome), one per recipient
        self.refused: set[str] = set()  # probe metrics left out because they take a name of the agent's own

    # -- fed by the agent --------------------------------------------------
    def observe(self, samples: Iterable[Sample]) -> None:
        for sample in samples:
            self.latest[sample.series] = sample
            if sample.metric == "agent.probe_seconds":
                probe = sample.label_dict().get("probe", "")
                self.runs[(probe, "runs")] += 1
                for kind in ("failures", "overruns"):  # a series at 0 from the first run on, as counters should be
                    self.runs.setdefault((probe, kind), 0)
            elif sample.metric in ("agent.probe_failed", "agent.probe_overrun") and sample.value > 0:
                kind = "failures" if sample.metric == "agent.probe_failed" else "overruns"
                self.runs[(sample.label_dict().get("probe", ""), kind)] += 1

    def delivered(
        self, entry: Any, transport: str, envelope: Envelope, result: DeliveryResult, seconds: float, size: int
    ) -> None:
        """A ``Delivery`` observer: counts each recipient's outcome of each transport's attempt."""
        for status in result.recipients.values():
            self.deliveries[(transport, status.status.value)] += 1

    # -- read at each scrape ------------------------------------------------
    def collect(self) -> list[Family]:
        return self.families(*self.gather())

    def gather(self) -> tuple[list[Family], list[Sample]]:
        """What changes as the agent runs, read at once on the event loop: the agent's own
        families and the newest sample of each series. Cheap: the costly part is ``families``."""
        now = time.time()
        for series in [s for s, sample in self.latest.items() if now - sample.timestamp > self.stale_after]:
            del self.latest[series]  # a process that exited, a disk unmounted: not a value any more
        return [self._alerts(), *self._own()], list(self.latest.values())

    def families(self, own: list[Family], samples: list[Sample]) -> list[Family]:
        """Every family of a scrape from what ``gather`` read; safe off the event loop (samples are immutable)."""
        own = [*own, *_process()]
        taken = {name for family in own for name in (family.name, family.sample_name)}
        return [*self._samples(samples, taken), *own, self._refused()]

    def _refuse(self, metric: str, name: str) -> None:
        if metric not in self.refused:
            self.refused.add(metric)
            log.warning("probe metric %s left out of /metrics: %s is one of the agent's own figures", metric, name)

    def _refused(self) -> Family:
        family = Family(
            f"{PREFIX}agent_metrics_refused",
            "gauge",
            "1 for each probe metric left out because its name is one of the agent's own (a plugin's fake is never stored)",
        )
        for metric in sorted(self.refused):
            family.add({"metric": metric}, 1.0)
        return family

    def _samples(self, samples: list[Sample], taken: AbstractSet[str]) -> Iterator[Family]:
        by_metric: dict[str, list[Sample]] = {}
        for sample in samples:
            by_metric.setdefault(sample.metric, []).append(sample)
        seen: set[str] = set()
        for metric in sorted(by_metric):
            info = self.infos.get(metric) or MetricInfo(metric, "", "")
            name, unit = metric_name(info)
            kind = "counter" if info.kind == "counter" else "gauge"
            family = Family(name.removesuffix("_total"), kind, info.description or f"{metric} (no description)", unit)
            if metric not in AGENT_METRICS and (
                reserved_metric(metric) or {family.name, family.sample_name, name} & (taken | _RESERVED_NAMES)
            ):
                self._refuse(metric, name)
                continue
            if name in seen:
                continue  # two alertmail names mapped to one Prometheus name: the first wins
            seen.add(name)
            for sample in sorted(by_metric[metric], key=lambda s: s.labels):
                family.add(_labels(sample.labels), sample.value)
            yield family

    def _alerts(self) -> Family:
        family = Family(
            PREFIX + "alert", "gauge", "1 for each alert that is pending, firing or flapping (as Prometheus exposes ALERTS)"
        )
        for status in self.states():
            state = status.state.value
            if state == "ok":
                continue
            labels = {
                "rule": status.rule.name,
                "severity": status.severity or status.rule.severity,
                "state": state,
                **_labels(status.labels, ALERT_LABELS),
            }
            family.add(labels, 1.0)
        return family

    def _own(self) -> Iterator[Family]:
        for kind, help_text in (
            ("runs", "runs of each probe"),
            ("failures", "runs of each probe that raised or returned bad data"),
            ("overruns", "runs of each probe that took longer than its timeout, or were skipped as the last one still ran"),
        ):
            counter = Family(f"{PREFIX}agent_probe_{kind}", "counter", help_text)
            for (probe, k), n in sorted(self.runs.items()):
                if k == kind:
                    counter.add({"probe": probe}, n)
            yield counter
        if self.queue is not None:
            depth = Family(
                f"{PREFIX}agent_queue_messages",
                "gauge",
                "messages in the queue: new (not tried yet) or deferred (tried, waiting for the next try)",
            )
            waiting = Counter("deferred" if entry.attempts else "new" for entry in self.queue.entries())
            for state in ("new", "deferred"):
                depth.add({"state": state}, waiting[state])
            yield depth
        deliveries = Family(
            f"{PREFIX}agent_deliveries",
            "counter",
            "recipients tried by each transport, by outcome: delivered, temporary (retried) or permanent (badmail)",
        )
        for (transport, outcome), n in sorted(self.deliveries.items()):
            deliveries.add({"transport": transport, "outcome": outcome}, n)
        yield deliveries
        mails = Family(f"{PREFIX}agent_mails", "counter", "alert mails and digests queued")
        for kind in ("alert", "digest"):
            mails.add({"kind": kind}, self.counts.get(kind, 0))
        yield mails
        silenced = Family(f"{PREFIX}agent_events_silenced", "counter", "alert events held back by a silence")
        silenced.add({}, self.counts.get("silenced", 0))
        yield silenced
        folded = Family(
            f"{PREFIX}agent_events_folded",
            "counter",
            "alert events folded into a digest by the storm cap, once for each recipient",
        )
        folded.add({}, self.counts.get("folded", 0))
        yield folded
        for service in self.services():
            counters = getattr(service, "counters", None)
            if counters is None:
                continue
            for key, (help_text, value) in counters().items():
                family = Family(
                    f"{PREFIX}{label_name(str(getattr(service, 'name', 'service')))}_{label_name(key)}", "counter", help_text
                )
                family.add({}, value)
                yield family


def _process() -> list[Family]:
    """The process figures client libraries export under these names, so the usual dashboards work."""
    import psutil  # the system probes have it loaded already

    process = psutil.Process()
    with process.oneshot():
        memory, cpu, started = process.memory_info(), process.cpu_times(), process.create_time()
        fds = process.num_fds() if hasattr(process, "num_fds") else None
    figures = [
        Family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", "bytes"),
        Family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", "bytes"),
        Family("process_cpu_seconds", "counter", "Total user and system CPU time spent in seconds.", "seconds"),
        Family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", "seconds"),
    ]
    for family, value in zip(figures, (memory.rss, memory.vms, cpu.user + cpu.system, started), strict=True):
        family.add({}, value)
    if fds is not None:
        open_fds = Family("process_open_fds", "gauge", "Number of open file descriptors.")
        open_fds.add({}, fds)
        figures.append(open_fds)
    return figures
