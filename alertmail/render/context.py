"""Context gathered just before an alert mail is rendered: what uses the CPU or memory,
how big a disk is and how fast it fills.

The notifier calls ``collect_context(events, history)`` and puts the result into
``RenderContext.extra``; rendering itself stays pure. The shape it returns::

    {"top_processes": {"cpu": [ProcessRow, ...], "memory": [ProcessRow, ...]},
     "disk": {"/var": {"total": bytes, "used": bytes, "free": bytes, "percent": float,
                        "growth_per_hour": bytes or None, "full_in_hours": float or None}}}

``probe_details`` adds ``"details": {series_key(metric, labels): text}``: what a probe's
source said about the alert's series on its last run (a Nagios plugin's output).

Keys appear only when an event needs them. Collecting blocks for about
``interval`` seconds (CPU use is a difference of two readings): call it from a
worker thread in async code.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import psutil

from alertmail.model import Labels, label_text, system_name

log = logging.getLogger(__name__)

History = Callable[[str, Labels], Sequence[tuple[float, float]]]

# The first word of a metric name says which resource it measures.
_RESOURCE_BY_PREFIX = {
    "cpu": "cpu",
    "load": "cpu",
    "system": "cpu",
    "memory": "memory",
    "mem": "memory",
    "swap": "memory",
    "disk": "disk",
    "fs": "disk",
    "filesystem": "disk",
}
MOUNT_LABELS = ("mount", "mountpoint", "path")


class ProcessRow(NamedTuple):
    """One line of a top-processes table; ``cpu_percent`` is of one core, as top shows it."""

    name: str
    pid: int
    cpu_percent: float
    rss: int


def resource_of(metric: str) -> str | None:
    """``"cpu"``, ``"memory"`` or ``"disk"`` for metrics about those resources, else None."""
    return _RESOURCE_BY_PREFIX.get(metric.split(".", 1)[0].split("_", 1)[0].lower())


def mount_of(labels: Labels) -> str | None:
    """The mount point named by an alert's labels, if any."""
    found = dict(labels)
    return next((found[k] for k in MOUNT_LABELS if found.get(k)), None)


def _over(event: Any) -> bool:
    """A recovery (render.view.recovers, which imports this module): resolved, or a flap settled at ok."""
    return event.kind == "resolved" or (event.kind == "flap-ended" and getattr(event, "state", None) == "ok")


def top_processes(limit: int = 5, interval: float = 0.3) -> dict[str, list[ProcessRow]]:
    """The ``limit`` processes using the most CPU (measured over ``interval`` seconds) and the most memory."""
    first: dict[int, tuple[psutil.Process, float]] = {}
    for proc in psutil.process_iter(["name", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is not None:
            first[proc.pid] = (proc, times.user + times.system)
    started = time.monotonic()
    time.sleep(interval)
    elapsed = max(time.monotonic() - started, 1e-3)
    rows: list[ProcessRow] = []
    for pid, (proc, before) in first.items():
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                rss = proc.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        busy = (times.user + times.system - before) / elapsed * 100
        # A process names itself: any bytes, shown escaped like a label (b"x\xff\n" reads x\xff\n).
        rows.append(ProcessRow(label_text(proc.info["name"] or "?"), pid, round(max(busy, 0.0), 1), rss))
    by_cpu = sorted(rows, key=lambda r: (r.cpu_percent, r.rss), reverse=True)[:limit]
    by_memory = sorted(rows, key=lambda r: r.rss, reverse=True)[:limit]
    return {"cpu": by_cpu, "memory": by_memory}


def disk_usage(mount: str, timeout: float = 2.0) -> Any:
    """psutil.disk_usage with a timeout: statvfs on a dead network mount can hang for minutes."""
    outcome: list[Any] = []

    def read() -> None:
        try:
            outcome.append(psutil.disk_usage(mount))
        except BaseException as exc:  # handed to the caller's thread below
            outcome.append(exc)

    reader = threading.Thread(target=read, name=f"disk-usage {mount}", daemon=True)
    reader.start()
    reader.join(timeout)
    if not outcome:
        raise TimeoutError(f"disk usage of {mount!r} not read within {timeout}s")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def growth_per_second(points: Sequence[tuple[float, float]]) -> float | None:
    """The least-squares slope of (time, value) points, in value units per second."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread


def disk_context(metric: str, points: Sequence[tuple[float, float]], usage: Any) -> dict[str, Any]:
    """Size, use and growth of one mount; growth comes from the alert's own series."""
    slope = growth_per_second(points)
    growth: float | None = None
    if slope is not None:
        if "percent" in metric:
            growth = slope * 3600 / 100 * usage.total
        elif "bytes" in metric or metric.endswith(".used") or metric.endswith(".free"):
            # A falling free-space series is a growing disk.
            growth = slope * 3600 * (-1 if "free" in metric else 1)
    full_in = usage.free / growth if growth and growth > 0 else None
    return {
        "total": usage.total,
        "used": usage.used,
        "free": usage.free,
        "percent": usage.percent,
        "growth_per_hour": growth,
        "full_in_hours": full_in,
    }


def collect_context(
    events: Iterable[Any],
    history: History | None = None,
    *,
    limit: int = 5,
    interval: float = 0.3,
) -> dict[str, Any]:
    """Top processes for CPU/memory/load alerts, mount size and growth for disk alerts.

    Never raises: what cannot be read is left out and logged, so the mail still goes.
    """
    context: dict[str, Any] = {}
    events = list(events)
    # A recovered alert gets no process table (render.view leaves it out): no 0.3 s spent reading one.
    resources = {resource_of(e.rule.metric) for e in events if not _over(e)}
    if resources & {"cpu", "memory"}:
        try:
            context["top_processes"] = top_processes(limit, interval)
        except (psutil.Error, OSError) as exc:
            log.warning("top processes not read: %s", exc)
    disks: dict[str, dict[str, Any]] = {}
    for event in events:
        mount = mount_of(event.labels)
        if resource_of(event.rule.metric) != "disk" or mount is None or mount in disks:
            continue
        try:
            usage = disk_usage(system_name(mount))  # a mount point that was not UTF-8 is still read
        except (psutil.Error, OSError, TimeoutError) as exc:
            log.warning("disk usage of %r not read: %s", mount, exc)
            continue
        points = list(history(event.rule.metric, event.labels)) if history else []
        disks[mount] = disk_context(event.rule.metric, points, usage)
    if disks:
        context["disk"] = disks
    return context


def series_key(metric: str, labels: Labels) -> str:
    """The key of one series in ``context["details"]``: ``metric{k=v,...}``."""
    return metric + "{" + ",".join(f"{k}={v}" for k, v in labels) + "}"


# The longest detail a probe may put into a mail.
DETAIL_LIMIT = 4000


def probe_details(events: Iterable[Any], probes: Mapping[str, Any]) -> dict[str, str]:
    """For each alert's series, the text a probe's ``detail(metric, labels)`` gives, if one does.

    A probe opts in by having the method; one that raises is logged and left out.
    """
    askers = [p for p in probes.values() if callable(getattr(p, "detail", None))]
    details: dict[str, str] = {}
    for event in events:
        key = series_key(event.rule.metric, event.labels)
        if key in details:
            continue
        for probe in askers:
            try:
                text = probe.detail(event.rule.metric, dict(event.labels))
            except Exception as exc:
                log.warning("detail of %s from probe %s left out: %s", key, getattr(probe, "name", "?"), exc)
                continue
            if text:
                details[key] = str(text)[:DETAIL_LIMIT]
                break
    return details
