"""The bundled system probes, one per area (Glances style), all read through psutil.

Probes that report a change (CPU percent, disk and network rates) compare two runs:
``configure()`` records the first reading, so the first ``collect()`` after start
reports a real value, never a 0 or a spike made up from a missing baseline. A probe
that was never configured records its baseline on the first ``collect()`` instead.

One module on purpose: the eight probes share ``SystemProbe``, ``CounterRates`` and
``MIN_SPAN``, each reads on its own in 20 to 100 lines, and the loader registers them
as one plugin; a module per family would leave this one only re-exporting names.
"""

from __future__ import annotations

import fnmatch
import os
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import psutil

from alertmail import MetricInfo, Sample, Settings, hookimpl, label_text, setting

# Deltas over less than this are mostly rounding (CPU times tick in 10 ms steps),
# so a run that comes sooner keeps the old baseline and reports nothing yet.
MIN_SPAN = 0.2

PSEUDO_FSTYPES = (
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
    "aufs",
)


K = TypeVar("K", bound=Hashable)


class CounterRates(Generic[K]):
    """Per-second rates of ever-growing counters between two readings.

    The first reading only sets the baseline. A counter that went down (a reset, a
    replaced device) is re-baselined rather than reported as a negative or huge rate.
    """

    def __init__(self) -> None:
        self._last: dict[K, float] = {}
        self._at: float | None = None

    def update(self, counters: Mapping[K, float], now: float) -> dict[K, float] | None:
        """Rates since the last reading, or None when there is no usable baseline yet."""
        if self._at is None:
            self._last, self._at = dict(counters), now
            return None
        span = now - self._at
        if span < MIN_SPAN:
            return None
        rates: dict[K, float] = {}
        for key, value in counters.items():
            previous = self._last.get(key)
            if previous is not None and value >= previous:
                rates[key] = (value - previous) / span
        self._last, self._at = dict(counters), now
        return rates


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


class SystemProbe:
    """What every bundled probe shares: a name, its metrics, a ``collect()``.

    A probe with keys of its own declares them as ``options`` (a Settings class) and takes
    them in ``configure(settings)``, called before the first collect and at each reload;
    one that keeps a baseline takes its first reading there.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    metrics: ClassVar[tuple[MetricInfo, ...]] = ()
    interval: float | None = None

    def collect(self) -> list[Sample]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


# ---------------------------------------------------------------------------
# CPU


def _cpu_split(times: Any) -> tuple[float, float]:
    """(all time, idle time) of one psutil cpu_times reading."""
    total = sum(times)
    # Linux counts guest time inside user and nice as well: do not count it twice.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total, idle


@dataclass(frozen=True, slots=True, kw_only=True)
class CpuSettings(Settings):
    """``[probes.cpu]``."""

    per_core: bool = setting("bool", True, help="also report each core")


class CpuProbe(SystemProbe):
    """CPU busy percent, total and per core, from the change of cpu_times between runs.

    Computed here rather than by ``psutil.cpu_percent(interval=None)``, whose baseline is
    shared by every caller in the process and whose first answer is a meaningless 0.
    """

    name = "cpu"
    description = "CPU utilisation, total and per core"
    fields = ("user", "system", "iowait", "steal")
    metrics = (
        MetricInfo("cpu.percent", "percent", "CPU busy time over all cores (100 = all cores busy)"),
        MetricInfo("cpu.core_percent", "percent", "busy time of one logical core", ("core",)),
        MetricInfo("cpu.user_percent", "percent", "share of CPU time running programs (user mode, nice included)"),
        MetricInfo("cpu.system_percent", "percent", "share of CPU time in the kernel"),
        MetricInfo("cpu.iowait_percent", "percent", "share of CPU time idle while waiting for disk I/O (Linux)"),
        MetricInfo("cpu.steal_percent", "percent", "share of CPU time the hypervisor gave to other guests (Linux VMs)"),
    )
    options: ClassVar[type[CpuSettings]] = CpuSettings

    def __init__(self) -> None:
        self.settings = CpuSettings()
        self._last: tuple[float, Any, list[Any]] | None = None

    def configure(self, settings: CpuSettings) -> None:
        self.settings = settings
        self._read_baseline()

    def _read_baseline(self) -> None:
        self._last = (time.monotonic(), psutil.cpu_times(), psutil.cpu_times(percpu=True))

    def collect(self) -> list[Sample]:
        now = time.monotonic()
        if self._last is None:
            self._read_baseline()
            return []
        if now - self._last[0] < MIN_SPAN:
            return []
        total, cores = psutil.cpu_times(), psutil.cpu_times(percpu=True)
        _, last_total, last_cores = self._last
        self._last = (now, total, cores)
        stamp = time.time()
        out: list[Sample] = []
        busy = self._busy(last_total, total)
        if busy is not None:
            out.append(Sample("cpu.percent", busy, timestamp=stamp))
            span = _cpu_split(total)[0] - _cpu_split(last_total)[0]
            for field in self.fields:
                if hasattr(total, field):
                    spent = getattr(total, field) - getattr(last_total, field)
                    if field == "user":  # nice is user time at a lower priority
                        spent += getattr(total, "nice", 0.0) - getattr(last_total, "nice", 0.0)
                    share = spent / span * 100
                    out.append(Sample(f"cpu.{field}_percent", min(max(share, 0.0), 100.0), timestamp=stamp))
        if self.settings.per_core and len(cores) == len(last_cores):
            for core, (before, after) in enumerate(zip(last_cores, cores)):
                value = self._busy(before, after)
                if value is not None:
                    out.append(Sample("cpu.core_percent", value, {"core": str(core)}, timestamp=stamp))
        return out

    @staticmethod
    def _busy(before: Any, after: Any) -> float | None:
        total0, idle0 = _cpu_split(before)
        total1, idle1 = _cpu_split(after)
        span = total1 - total0
        if span <= 0:  # no tick elapsed: there is nothing to say yet
            return None
        return min(max(100.0 * (1.0 - (idle1 - idle0) / span), 0.0), 100.0)


# ---------------------------------------------------------------------------
# Memory and swap


class MemoryProbe(SystemProbe):
    name = "memory"
    description = "physical memory"
    metrics = (
        MetricInfo("memory.used_percent", "percent", "memory not available to new programs, as a share of total"),
        MetricInfo("memory.available_bytes", "bytes", "memory available to new programs without swapping"),
        MetricInfo("memory.used_bytes", "bytes", "memory in use (as psutil and free(1) count it)"),
        MetricInfo("memory.total_bytes", "bytes", "physical memory"),
    )

    def collect(self) -> list[Sample]:
        mem = psutil.virtual_memory()
        stamp = time.time()
        return [
            Sample("memory.used_percent", mem.percent, timestamp=stamp),
            Sample("memory.available_bytes", mem.available, timestamp=stamp),
            Sample("memory.used_bytes", mem.used, timestamp=stamp),
            Sample("memory.total_bytes", mem.total, timestamp=stamp),
        ]


class SwapProbe(SystemProbe):
    name = "swap"
    description = "swap space and paging"
    metrics = (
        MetricInfo("swap.used_percent", "percent", "swap in use, as a share of total (0 when there is no swap)"),
        MetricInfo("swap.used_bytes", "bytes", "swap in use"),
        MetricInfo("swap.total_bytes", "bytes", "swap space"),
        MetricInfo("swap.in_bytes_per_s", "bytes/s", "bytes swapped in from disk", kind="rate"),
        MetricInfo("swap.out_bytes_per_s", "bytes/s", "bytes swapped out to disk", kind="rate"),
    )

    def __init__(self) -> None:
        self._rates: CounterRates[str] = CounterRates()

    def configure(self, settings: object) -> None:
        """No keys of its own: the first reading is the rates' baseline."""
        self.collect()

    def collect(self) -> list[Sample]:
        swap = psutil.swap_memory()
        stamp = time.time()
        out = [
            Sample("swap.used_percent", swap.percent, timestamp=stamp),
            Sample("swap.used_bytes", swap.used, timestamp=stamp),
            Sample("swap.total_bytes", swap.total, timestamp=stamp),
        ]
        rates = self._rates.update({"in": swap.sin, "out": swap.sout}, time.monotonic())
        if rates:
            out += [Sample(f"swap.{k}_bytes_per_s", v, timestamp=stamp) for k, v in rates.items()]
        return out


# ---------------------------------------------------------------------------
# Disks


def real_partitions(partitions: Iterable[Any], *, exclude_fstypes: Iterable[str], exclude_mounts: Iterable[str]) -> list[Any]:
    """The mounts worth watching: no pseudo filesystem, no loop device (snaps), no file bind mount."""
    skip_types = set(exclude_fstypes)
    skip_mounts = list(exclude_mounts)
    seen: set[str] = set()
    out = []
    for part in partitions:
        if part.fstype in skip_types or part.device.startswith("/dev/loop"):
            continue
        # A glob matches the mount point as the system names it or as alerts show it (``/mnt/\\xff``).
        if part.mountpoint in seen or any(_matches(m, skip_mounts) for m in (part.mountpoint, label_text(part.mountpoint))):
            continue
        seen.add(part.mountpoint)
        out.append(part)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSettings(Settings):
    """``[probes.disk]``."""

    exclude_fstypes: list[str] = setting("list", list(PSEUDO_FSTYPES), help="filesystem types not to report")
    exclude_mounts: list[str] = setting("list", [], glob=True, help='mount point globs not to report, e.g. ["/boot/*"]')


class DiskProbe(SystemProbe):
    name = "disk"
    description = "space and inodes per mounted filesystem"
    labels = ("mount", "device", "fstype")
    metrics = (
        MetricInfo("disk.used_percent", "percent", "space in use as df(1) counts it (reserved blocks excluded)", labels),
        MetricInfo("disk.free_bytes", "bytes", "space free for unprivileged users", labels),
        MetricInfo("disk.used_bytes", "bytes", "space in use", labels),
        MetricInfo("disk.total_bytes", "bytes", "size of the filesystem", labels),
        MetricInfo("disk.inodes_used_percent", "percent", "inodes in use (filesystems with a fixed inode table only)", labels),
    )
    options: ClassVar[type[DiskSettings]] = DiskSettings

    def __init__(self) -> None:
        self.settings = DiskSettings()

    def configure(self, settings: DiskSettings) -> None:
        self.settings = settings

    def collect(self) -> list[Sample]:
        parts = real_partitions(
            psutil.disk_partitions(all=False),
            exclude_fstypes=self.settings.exclude_fstypes,
            exclude_mounts=self.settings.exclude_mounts,
        )
        stamp = time.time()
        out: list[Sample] = []
        for part in parts:
            if not os.path.isdir(part.mountpoint):  # a bind-mounted file (containers' /etc/hosts)
                continue
            try:
                usage = psutil.disk_usage(part.mountpoint)
                stat = os.statvfs(part.mountpoint)
            except OSError:  # gone or unreadable since it was listed: nothing to report
                continue
            labels = {"mount": part.mountpoint, "device": part.device, "fstype": part.fstype}
            out += [
                Sample("disk.used_percent", usage.percent, labels, stamp),
                Sample("disk.free_bytes", usage.free, labels, stamp),
                Sample("disk.used_bytes", usage.used, labels, stamp),
                Sample("disk.total_bytes", usage.total, labels, stamp),
            ]
            if stat.f_files > 0:  # btrfs and others report no inode table at all
                used = stat.f_files - stat.f_ffree
                out.append(Sample("disk.inodes_used_percent", 100.0 * used / stat.f_files, labels, stamp))
        return out


def _is_partition(disk: str) -> bool:
    """True for sda1, nvme0n1p2 ... (Linux says so in sysfs); elsewhere nothing is skipped."""
    return os.path.exists(f"/sys/class/block/{disk}/partition")


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskIOSettings(Settings):
    """``[probes.diskio]``."""

    exclude: list[str] = setting(
        "list", ["loop*", "ram*", "zram*", "sr*", "fd*"], glob=True, help="disk name globs not to report"
    )
    partitions: bool = setting("bool", False, help="also report partitions (sda1), not only whole disks")


class DiskIOProbe(SystemProbe):
    name = "diskio"
    description = "disk I/O rates per disk"
    metrics = (
        MetricInfo("diskio.read_bytes_per_s", "bytes/s", "bytes read", ("disk",), "rate"),
        MetricInfo("diskio.write_bytes_per_s", "bytes/s", "bytes written", ("disk",), "rate"),
        MetricInfo("diskio.reads_per_s", "ops/s", "read operations", ("disk",), "rate"),
        MetricInfo("diskio.writes_per_s", "ops/s", "write operations", ("disk",), "rate"),
        MetricInfo("diskio.busy_percent", "percent", "share of time the disk was busy (Linux, FreeBSD)", ("disk",)),
    )
    options: ClassVar[type[DiskIOSettings]] = DiskIOSettings
    counters: ClassVar[dict[str, str]] = {
        "read_bytes": "read_bytes_per_s",
        "write_bytes": "write_bytes_per_s",
        "read_count": "reads_per_s",
        "write_count": "writes_per_s",
    }

    def __init__(self) -> None:
        self.settings = DiskIOSettings()
        self._rates: CounterRates[tuple[str, str]] = CounterRates()

    def configure(self, settings: DiskIOSettings) -> None:
        self.settings = settings
        self.collect()

    def collect(self) -> list[Sample]:
        disks = psutil.disk_io_counters(perdisk=True, nowrap=True) or {}
        readings: dict[tuple[str, str], float] = {}
        exclude, partitions = self.settings.exclude, self.settings.partitions
        for disk, io in disks.items():
            if _matches(disk, exclude) or (not partitions and _is_partition(disk)):
                continue
            for counter in self.counters:
                readings[(disk, counter)] = getattr(io, counter)
            if hasattr(io, "busy_time"):
                readings[(disk, "busy_time")] = io.busy_time
        rates = self._rates.update(readings, time.monotonic())
        if not rates:
            return []
        stamp = time.time()
        out = []
        for (disk, counter), rate in sorted(rates.items()):
            labels = {"disk": disk}
            if counter == "busy_time":  # milliseconds busy per second of wall time
                out.append(Sample("diskio.busy_percent", min(rate / 10.0, 100.0), labels, stamp))
            else:
                out.append(Sample(f"diskio.{self.counters[counter]}", rate, labels, stamp))
        return out


# ---------------------------------------------------------------------------
# Network


NET_COUNTERS = {
    "bytes_recv": "recv_bytes_per_s",
    "bytes_sent": "sent_bytes_per_s",
    "packets_recv": "recv_packets_per_s",
    "packets_sent": "sent_packets_per_s",
    "errin": "recv_errors_per_s",
    "errout": "sent_errors_per_s",
    "dropin": "recv_drops_per_s",
    "dropout": "sent_drops_per_s",
}
_NET_TEXT = {
    "recv_bytes_per_s": ("bytes/s", "bytes received"),
    "sent_bytes_per_s": ("bytes/s", "bytes sent"),
    "recv_packets_per_s": ("packets/s", "packets received"),
    "sent_packets_per_s": ("packets/s", "packets sent"),
    "recv_errors_per_s": ("errors/s", "receive errors"),
    "sent_errors_per_s": ("errors/s", "transmit errors"),
    "recv_drops_per_s": ("packets/s", "incoming packets dropped"),
    "sent_drops_per_s": ("packets/s", "outgoing packets dropped"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class NetworkSettings(Settings):
    """``[probes.network]``."""

    loopback: bool = setting("bool", False, help="also report the loopback interface")
    exclude: list[str] = setting("list", [], glob=True, help='interface name globs not to report, e.g. ["veth*"]')


class NetworkProbe(SystemProbe):
    name = "network"
    description = "network I/O rates per interface"
    counters: ClassVar[dict[str, str]] = NET_COUNTERS
    metrics = tuple(MetricInfo(f"net.{m}", unit, text, ("interface",), "rate") for m, (unit, text) in _NET_TEXT.items())
    options: ClassVar[type[NetworkSettings]] = NetworkSettings

    def __init__(self) -> None:
        self.settings = NetworkSettings()
        self._rates: CounterRates[tuple[str, str]] = CounterRates()

    def configure(self, settings: NetworkSettings) -> None:
        self.settings = settings
        self.collect()

    def collect(self) -> list[Sample]:
        nics = psutil.net_io_counters(pernic=True, nowrap=True) or {}
        readings: dict[tuple[str, str], float] = {}
        loopback, exclude = self.settings.loopback, self.settings.exclude
        for nic, io in nics.items():
            if (not loopback and nic in ("lo", "lo0")) or _matches(nic, exclude):
                continue
            for counter in self.counters:
                readings[(nic, counter)] = getattr(io, counter)
        rates = self._rates.update(readings, time.monotonic())
        if not rates:
            return []
        stamp = time.time()
        return [
            Sample(f"net.{self.counters[counter]}", rate, {"interface": nic}, stamp)
            for (nic, counter), rate in sorted(rates.items())
        ]


# ---------------------------------------------------------------------------
# Load and processes


class LoadProbe(SystemProbe):
    name = "load"
    description = "load averages"
    metrics = tuple(MetricInfo(f"load.{n}", "load", f"{n}-minute load average") for n in (1, 5, 15)) + tuple(
        MetricInfo(f"load.{n}_per_core", "load", f"{n}-minute load average divided by the logical CPU count") for n in (1, 5, 15)
    )

    def __init__(self) -> None:
        self.cores = psutil.cpu_count(logical=True) or 1

    def collect(self) -> list[Sample]:
        stamp = time.time()
        out = []
        for minutes, value in zip((1, 5, 15), psutil.getloadavg()):
            out.append(Sample(f"load.{minutes}", value, timestamp=stamp))
            out.append(Sample(f"load.{minutes}_per_core", value / self.cores, timestamp=stamp))
        return out


class ProcessesProbe(SystemProbe):
    """How many processes there are, and how many in each state (zombies are worth a rule)."""

    name = "processes"
    description = "process counts"
    # Reading every process is the costly part of a system snapshot (one /proc file
    # each); zombies and runaway forks are not a matter of seconds.
    interval = 60.0
    statuses = (
        psutil.STATUS_RUNNING,
        psutil.STATUS_SLEEPING,
        psutil.STATUS_DISK_SLEEP,
        psutil.STATUS_STOPPED,
        psutil.STATUS_ZOMBIE,
    )
    metrics = (
        MetricInfo("processes.total", "count", "processes on the machine"),
        MetricInfo(
            "processes.by_status", "count", f"processes in one state ({', '.join(statuses)} always reported)", ("status",)
        ),
    )

    def collect(self) -> list[Sample]:
        counts = dict.fromkeys(self.statuses, 0)
        total = 0
        for proc in psutil.process_iter():
            try:
                status = proc.status()  # not proc.info: psutil shares it between threads
            except psutil.NoSuchProcess:
                continue
            except psutil.Error:  # not ours to read: it still counts as a process
                status = None
            total += 1
            if status is not None:
                counts[status] = counts.get(status, 0) + 1
        stamp = time.time()
        out = [Sample("processes.total", total, timestamp=stamp)]
        out += [Sample("processes.by_status", n, {"status": s}, stamp) for s, n in sorted(counts.items())]
        return out


PROBES = (CpuProbe, MemoryProbe, SwapProbe, DiskProbe, DiskIOProbe, NetworkProbe, LoadProbe, ProcessesProbe)


@hookimpl
def register_probes(register):
    for probe in PROBES:
        register(probe())
