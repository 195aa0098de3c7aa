"""The per-process probe: count, CPU and memory of the processes a config names.

::

    [probes.process]
    watch = [
      { name = "nginx", match = "nginx" },                    # process name (glob)
      { name = "web", cmdline = "*gunicorn*app:main*" },      # command line (glob)
      { name = "db", match = "postgres", user = "postgres" }, # ... run by this user
    ]

Every watch reports ``process.count`` on every run, 0 included, so "my daemon is not
running" is an ordinary rule (``below = 1``). Labels carry the configured ``name``, never
the process's own name or command line: those are chosen by whoever started the process.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import psutil

from alertmail import MetricInfo, Option, Sample, hookimpl

# Below this span CPU-time deltas are mostly clock-tick rounding (see system.MIN_SPAN).
MIN_SPAN = 0.2
WATCH_KEYS = ("name", "match", "cmdline", "user")


@dataclass(frozen=True, slots=True)
class Watch:
    """One ``watch`` entry: which processes make up the group called ``name``."""

    name: str
    match: str | None = None  # glob on the process name
    cmdline: str | None = None  # glob on the command line, arguments joined by spaces
    user: str | None = None  # exact user name

    def selects(self, info: Mapping[str, Any]) -> bool:
        if self.match is not None and not fnmatch.fnmatchcase(info.get("name") or "", self.match):
            return False
        if self.cmdline is not None and not fnmatch.fnmatchcase(" ".join(info.get("cmdline") or ()), self.cmdline):
            return False
        return self.user is None or info.get("username") == self.user


def parse_watch(value: Any) -> list[Watch]:
    """The ``watch`` option as Watch entries; ValueError naming every bad entry and key."""
    if not isinstance(value, list):
        raise ValueError(f"watch: expected a list of tables like [{{ name = \"nginx\", match = \"nginx\" }}], got {value!r}")
    problems: list[str] = []
    watches: list[Watch] = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        where = f"watch[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a table like {{ name = \"nginx\", match = \"nginx\" }}, got {entry!r}")
            continue
        bad = False
        for key, item in entry.items():
            if key not in WATCH_KEYS:
                hint = difflib.get_close_matches(key, WATCH_KEYS, n=1)
                problems.append(f"{where}.{key}: unknown key; " + (f"did you mean {hint[0]!r}?" if hint else f"known keys: {', '.join(WATCH_KEYS)}"))
                bad = True
            elif not isinstance(item, str) or not item:
                problems.append(f"{where}.{key}: expected a non-empty string, got {item!r}")
                bad = True
        name = entry.get("name")
        if "name" not in entry:
            problems.append(f"{where}.name: missing; the label value of this group, e.g. name = \"nginx\"")
            bad = True
        elif name in names:
            problems.append(f"{where}.name: {name!r} is used twice; each watch needs its own name")
            bad = True
        if not any(k in entry for k in ("match", "cmdline")):
            problems.append(f"{where}: needs match = \"NAME-GLOB\" (process name) or cmdline = \"GLOB\" (command line)")
            bad = True
        if not bad:
            names.add(name)
            watches.append(Watch(name, entry.get("match"), entry.get("cmdline"), entry.get("user")))
    if problems:
        raise ValueError("\n".join(problems))
    return watches


class ProcessProbe:
    """Per-group process count, CPU percent and resident memory."""

    name: ClassVar[str] = "process"
    description: ClassVar[str] = "processes matched by name or command line"
    # It reads every process (one or two /proc files each); set a shorter interval in
    # [probes.process] when a daemon's absence must be noticed sooner.
    interval: float | None = 30.0
    metrics: ClassVar[tuple[MetricInfo, ...]] = (
        MetricInfo("process.count", "count", "matching processes (0 when none runs)", ("name",)),
        MetricInfo(
            "process.cpu_percent", "percent",
            "CPU used by the matching processes together (100 = one core; can exceed 100)", ("name",),
        ),
        MetricInfo("process.rss_bytes", "bytes", "resident memory of the matching processes together (shared pages counted in each)", ("name",)),
    )
    options: ClassVar[dict[str, Option]] = {
        "watch": Option("any", [], help="list of { name = \"LABEL\", match = \"NAME-GLOB\" | cmdline = \"GLOB\", user = \"USER\" }"),
    }

    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self._attrs: list[str] = ["name", "status"]
        # CPU seconds of each matched process at the last reading. psutil.Process hashes
        # by pid and start time, so a reused pid is a different key.
        self._cpu: dict[psutil.Process, float] = {}
        self._seen: set[psutil.Process] = set()  # every process of the last reading
        self._at: float | None = None  # monotonic time of the last reading

    def configure(self, options: Mapping[str, Any]) -> None:
        self.watches = parse_watch(options.get("watch") or [])
        attrs = ["name", "status"]
        if any(w.cmdline for w in self.watches):
            attrs.append("cmdline")  # read only when asked: it is the costly part of the scan
        if any(w.user for w in self.watches):
            attrs.append("username")
        self._attrs = attrs
        self._cpu, self._seen, self._at = {}, set(), None
        self.collect()  # the CPU baseline, so the first scheduled run has a real value

    def _scan(self) -> tuple[dict[str, list[psutil.Process]], set[psutil.Process]]:
        """The matching processes per watch name, and every live process."""
        groups: dict[str, list[psutil.Process]] = {w.name: [] for w in self.watches}
        seen: set[psutil.Process] = set()
        me = os.getpid()
        for proc in psutil.process_iter(self._attrs):
            seen.add(proc)
            info = proc.info
            if proc.pid == me or info.get("status") == psutil.STATUS_ZOMBIE:
                continue
            for watch in self.watches:
                if watch.selects(info):
                    groups[watch.name].append(proc)
        return groups, seen

    def _cpu_since_last(self, proc: psutil.Process, used: float) -> float:
        """CPU seconds ``proc`` used since the last reading."""
        if proc in self._cpu:
            return used - self._cpu[proc]
        if proc not in self._seen:
            return used  # started after the last reading: all of its time is new
        # It ran then but did not match (it has just exec'd or renamed itself): its time
        # before now is unknown, so it starts counting from this reading.
        return 0.0

    def collect(self) -> list[Sample]:
        if not self.watches:
            return []
        groups, seen = self._scan()
        now, wall = time.monotonic(), time.time()
        span = None if self._at is None else now - self._at
        usable = span is not None and span >= MIN_SPAN
        cpu_now: dict[psutil.Process, float] = {}
        out: list[Sample] = []
        for watch in self.watches:
            count, rss, cpu = 0, 0, 0.0
            for proc in groups[watch.name]:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        memory = proc.memory_info()
                except (psutil.NoSuchProcess, psutil.ZombieProcess):
                    continue  # ended between the scan and now: it no longer runs
                except psutil.AccessDenied:
                    count += 1  # it runs, but its figures are not ours to read
                    continue
                count += 1
                rss += memory.rss
                used = times.user + times.system
                cpu_now[proc] = used
                cpu += max(self._cpu_since_last(proc, used), 0.0)
            labels = {"name": watch.name}
            out.append(Sample("process.count", count, labels, wall))
            out.append(Sample("process.rss_bytes", rss, labels, wall))
            if usable:
                out.append(Sample("process.cpu_percent", cpu / span * 100.0, labels, wall))
        if span is None or usable:
            self._cpu, self._seen, self._at = cpu_now, seen, now
        return out

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


@hookimpl
def register_probes(register):
    register(ProcessProbe())
