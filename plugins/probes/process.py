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

import fnmatch
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import psutil

from alertmail import MetricInfo, Sample, Settings, hookimpl, setting
from alertmail.plugins.probes.checklist import Key, parse_checks

# Below this span CPU-time deltas are mostly clock-tick rounding (see system.MIN_SPAN).
MIN_SPAN = 0.2


@dataclass(frozen=True, slots=True)
class Watch:
    """One ``watch`` entry: which processes make up the group called ``name``."""

    name: str
    match: str | None = None  # glob on the process name
    cmdline: str | None = None  # glob on the command line, arguments joined by spaces
    user: str | None = None  # exact user name

    def selects(self, name: str, user: str | None, cmdline: Callable[[], str]) -> bool:
        """True when a process with this name and user (and command line) belongs here.

        ``cmdline`` is called only when this watch looks at the command line: reading
        it is one more /proc file per process.
        """
        if self.match is not None and not fnmatch.fnmatchcase(name, self.match):
            return False
        if self.user is not None and user != self.user:
            return False
        return self.cmdline is None or fnmatch.fnmatchcase(cmdline(), self.cmdline)


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"control characters (line breaks, NUL) are not allowed, got {value!r}")
    return value


def _needs_a_match(watch: dict[str, Any]) -> list[str]:
    if watch["match"] is None and watch["cmdline"] is None:
        return [': needs match = "NAME-GLOB" (process name) or cmdline = "GLOB" (command line)']
    return []


WATCH_KEYS = {
    "name": Key(_text, required=True, example='the label value of this group, e.g. name = "nginx"'),
    "match": Key(_text),
    "cmdline": Key(_text),
    "user": Key(_text),
}


def parse_watch(value: Any) -> list[Watch]:
    """The ``watch`` option as Watch entries; ValueError naming every bad entry and key."""
    entries, problems = parse_checks(
        value, WATCH_KEYS, '{ name = "nginx", match = "nginx" }', _needs_a_match, option="watch", noun="watch"
    )
    if problems:
        raise ValueError("\n".join(problems))
    return [Watch(w["name"], w["match"], w["cmdline"], w["user"]) for _, w in entries]


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessSettings(Settings):
    """``[probes.process]``."""

    watch: list[Any] = setting(
        "any", [], help='list of { name = "LABEL", match = "NAME-GLOB" | cmdline = "GLOB", user = "USER" }'
    )


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
            "process.cpu_percent",
            "percent",
            "CPU used by the matching processes together (100 = one core; can exceed 100)",
            ("name",),
        ),
        MetricInfo(
            "process.rss_bytes",
            "bytes",
            "resident memory of the matching processes together (shared pages counted in each)",
            ("name",),
        ),
    )
    options: ClassVar[type[ProcessSettings]] = ProcessSettings

    def __init__(self) -> None:
        self.watches: list[Watch] = []
        self._attrs: list[str] = ["name", "status", "ppid"]
        # CPU seconds of each matched process at the last reading. psutil.Process hashes
        # by pid and start time, so a reused pid is a different key.
        self._cpu: dict[psutil.Process, float] = {}
        self._seen: set[psutil.Process] = set()  # every process of the last reading
        self._at: float | None = None  # monotonic time of the last reading

    def configure(self, settings: ProcessSettings) -> None:
        self.watches = parse_watch(settings.watch)
        self._attrs = ["name", "status", "ppid"] + (["username"] if any(w.user for w in self.watches) else [])
        self._cpu, self._seen, self._at = {}, set(), None
        self.collect()  # the CPU baseline, so the first scheduled run has a real value

    def _read(self, proc: psutil.Process) -> tuple[list[str], float | None, int]:
        """(names of the watches ``proc`` belongs to, its CPU seconds or None, its RSS).

        One oneshot() per process, so /proc/PID/stat is read once for the name, the
        state and the CPU times. Raises psutil.NoSuchProcess when it is gone.
        """
        with proc.oneshot():
            # Not process_iter(attrs): its proc.info lives on Process objects that psutil
            # shares between threads, and the processes probe may be scanning right now.
            info = proc.as_dict(self._attrs)
            if info["status"] == psutil.STATUS_ZOMBIE or info["name"] is None:
                return [], None, 0

            line: list[str] = []

            def cmdline() -> str:
                if not line:
                    line.append(self._cmdline(proc, info))
                return line[0]

            names = [w.name for w in self.watches if w.selects(info["name"], info.get("username"), cmdline)]
            if not names:
                return [], None, 0
            try:
                times, memory = proc.cpu_times(), proc.memory_info()
            except psutil.AccessDenied:  # it runs, but its figures are not ours to read
                return names, None, 0
            return names, times.user + times.system, memory.rss

    @staticmethod
    def _cmdline(proc: psutil.Process, info: Mapping[str, Any]) -> str:
        # Kernel threads (children of kthreadd, pid 2) have no command line: skip the read.
        if psutil.LINUX and (proc.pid == 2 or info.get("ppid") == 2):
            return ""
        try:
            return " ".join(proc.cmdline())
        except psutil.AccessDenied:
            return ""

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
        count = dict.fromkeys((w.name for w in self.watches), 0)
        rss = dict.fromkeys(count, 0)
        cpu = dict.fromkeys(count, 0.0)
        cpu_now: dict[psutil.Process, float] = {}
        seen: set[psutil.Process] = set()
        me = os.getpid()
        for proc in psutil.process_iter():
            seen.add(proc)
            if proc.pid == me:
                continue
            try:
                names, used, resident = self._read(proc)
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # ended while being read: it no longer runs
            if used is not None:
                cpu_now[proc] = used
                since = max(self._cpu_since_last(proc, used), 0.0)
            for name in names:
                count[name] += 1
                rss[name] += resident
                if used is not None:
                    cpu[name] += since
        now, wall = time.monotonic(), time.time()
        span = None if self._at is None else now - self._at
        usable = span is not None and span >= MIN_SPAN
        out: list[Sample] = []
        for name in count:
            labels = {"name": name}
            out.append(Sample("process.count", count[name], labels, wall))
            out.append(Sample("process.rss_bytes", rss[name], labels, wall))
            if usable and span:
                out.append(Sample("process.cpu_percent", cpu[name] / span * 100.0, labels, wall))
        if span is None or usable:
            self._cpu, self._seen, self._at = cpu_now, seen, now
        return out

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


@hookimpl
def register_probes(register):
    register(ProcessProbe())
