"""The ``nagios`` probe: run Nagios plugins and read what they say (the Nagios plugin API).

::

    [probes.nagios]
    interval = "1m"
    checks = [
      { name = "root-disk", command = ["/usr/lib/nagios/plugins/check_disk", "-w", "10%", "-c", "5%", "-p", "/"] },
      { name = "smtp", command = ["/usr/lib/nagios/plugins/check_smtp", "-H", "127.0.0.1"], timeout = "10s" },
    ]

Every check reports ``nagios.status{check}`` (the exit status: 0 OK, 1 WARNING,
2 CRITICAL, 3 UNKNOWN), ``nagios.perfdata{check, label}`` for each performance-data
value in base units, and ``nagios.seconds{check}``. The plugin's output line and its
long output are kept as the check's detail, which the alert mail shows.

A plugin runs from an argv list, never through a shell, in a process group of its
own with stdin on /dev/null, in ``/`` and with a small fixed environment (see ``ENV``);
at its timeout the whole group is killed. Its output is read up to ``max_output``
bytes; the rest is read and dropped. Checks run in threads of this probe's run
(``parallel`` at once), never on the agent's event loop. This module is loaded only
when ``[probes.nagios]`` is in the config (``external.py`` registers the probe).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from alertmail import Sample, Settings, parse_duration, setting
from alertmail.plugins.probes.checklist import ItemProblem, Key, parse_checks

STATUS_WORDS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
UNKNOWN = 3
# The environment a plugin runs with: nothing of the agent's own (no secrets from its
# unit file), a C locale so numbers print with a decimal point, as the plugins' tests assume.
ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C", "LC_ALL": "C"}
# After the group got SIGTERM at its timeout, this long to go before SIGKILL.
TERM_GRACE = 1.0
# The detail kept for the mail: the output line and this much of the long output.
DETAIL_CHARS = 2000

# Units of performance data: factor to the base unit. B/KB/MB/GB/TB are powers of 1024, as
# the monitoring-plugins print them (check_disk's MB are MiB). "c" (a counter) and "%" stay as they are.
UNIT_FACTORS = {
    "": 1.0,
    "%": 1.0,
    "c": 1.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "B": 1.0,
    "KB": 1024.0,
    "MB": 1024.0**2,
    "GB": 1024.0**3,
    "TB": 1024.0**4,
}
_PERF = re.compile(r"""\s*('(?:[^']|'')+'|[^'=\s][^=]*?)=([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)([A-Za-z%]*)\S*""")


@dataclass(frozen=True)
class Check:
    """One entry of ``checks``: a name (the label value) and the argv to run."""

    name: str
    command: tuple[str, ...]
    timeout: float
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass
class Result:
    """What one run of one check said."""

    status: int
    output: str  # the first line's text (before "|"), or why the check could not run
    long_output: str = ""
    perfdata: list[tuple[str, float]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def detail(self) -> str:
        text = f"{STATUS_WORDS[self.status]}: {self.output}".rstrip()
        if self.long_output:
            long = self.long_output if len(self.long_output) <= DETAIL_CHARS else self.long_output[:DETAIL_CHARS] + " [cut]"
            text += "\n" + long
        return text


EXAMPLE = '{ name = "load", command = ["/usr/lib/nagios/plugins/check_load", "-w", "5,4,3", "-c", "10,8,6"] }'
COMMAND_EXAMPLE = '["/usr/lib/nagios/plugins/check_load", "-w", "5,4,3", "-c", "10,8,6"]'


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected a non-empty string, the label value of this check, e.g. name = "load"')
    return value


def _command(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(a, str) for a in value):
        raise ValueError(f"expected a list of strings, the program and its arguments (no shell), e.g. {COMMAND_EXAMPLE}")
    if not os.path.isabs(value[0]):
        raise ItemProblem("[0]", f"{value[0]!r} is not an absolute path; write the full path of the plugin")
    if not os.access(value[0], os.X_OK) or os.path.isdir(value[0]):
        raise ItemProblem(
            "[0]",
            f"{value[0]} is not an executable file here;"
            " install the plugin (Debian: monitoring-plugins-basic) or correct the path",
        )
    return tuple(value)


def _timeout(value: Any) -> float:
    timeout = parse_duration(value)
    if timeout <= 0:
        raise ValueError("a check's timeout must be more than 0")
    return timeout


def _env(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValueError(f'expected a table of strings, e.g. env = {{ TZ = "UTC" }}, got {value!r}')
    return dict(value)


CHECK_KEYS = {
    "name": Key(_name, required=True, example='the label value of this check, e.g. name = "load"'),
    "command": Key(_command, required=True, example=f"the plugin's absolute path and its arguments, e.g. {COMMAND_EXAMPLE}"),
    "timeout": Key(_timeout),  # default: [probes.nagios] check_timeout
    "env": Key(_env, {}),
}


def parse_perfdata(text: str) -> list[tuple[str, float]]:
    """``'label'=value[UOM];warn;crit;min;max ...`` as (label, value in base units) pairs.

    Values the plugin could not determine (``U``) and unknown units' values are kept as
    the number printed; a part that is not performance data is skipped.
    """
    out: list[tuple[str, float]] = []
    for match in _PERF.finditer(text):
        label, number, unit = match.group(1).strip(), match.group(2), match.group(3)
        if label.startswith("'") and label.endswith("'"):
            label = label[1:-1].replace("''", "'")
        if unit.upper() in ("B", "KB", "MB", "GB", "TB"):
            unit = unit.upper()  # kB, Mb ... as some plugins print them
        factor = UNIT_FACTORS.get(unit, 1.0)
        out.append((label, float(number) * factor))
    return out


def parse_output(text: str, status: int) -> Result:
    """The plugin API: ``TEXT | PERFDATA`` on the first line, then long output, whose
    first ``|`` starts more performance data that runs to the end."""
    lines = text.splitlines()
    first = lines[0] if lines else ""
    output, _, perf = first.partition("|")
    long_lines: list[str] = []
    more: list[str] = []
    for line in lines[1:]:
        if more:
            more.append(line)
        elif "|" in line:
            head, _, tail = line.partition("|")
            if head.strip():
                long_lines.append(head)
            more.append(tail)
        else:
            long_lines.append(line)
    perfdata = parse_perfdata(perf) + parse_perfdata(" ".join(more))
    return Result(status, output.strip() or "(no output)", "\n".join(long_lines).strip(), perfdata)


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def run_check(check: Check, max_output: int) -> Result:
    """Run one check to its end or its timeout; never raises for the plugin's faults."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            check.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env={**ENV, **check.env},
            start_new_session=True,  # its own process group: the timeout kills it and its children
            close_fds=True,
        )
    except OSError as exc:
        return Result(UNKNOWN, f"cannot run {check.command[0]}: {exc.strerror or exc}", seconds=time.monotonic() - start)
    kept = {"stdout": bytearray(), "stderr": bytearray()}
    deadline = start + check.timeout
    timed_out = False
    with selectors.DefaultSelector() as sel:
        assert proc.stdout is not None and proc.stderr is not None
        sel.register(proc.stdout, selectors.EVENT_READ, "stdout")
        sel.register(proc.stderr, selectors.EVENT_READ, "stderr")
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = kept[key.data]
                if len(buf) < max_output:
                    buf += chunk[: max_output - len(buf)]
    proc.stdout.close()
    proc.stderr.close()
    if not timed_out:
        try:
            proc.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
    if timed_out:
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(TERM_GRACE)
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc, signal.SIGKILL)  # and whatever it started that ignored SIGTERM
        proc.wait()
        return Result(UNKNOWN, f"timed out after {check.timeout:g}s; the plugin and its process group were killed",
                      seconds=time.monotonic() - start)  # fmt: skip
    seconds = time.monotonic() - start
    text = kept["stdout"].decode("utf-8", "replace")
    code = proc.returncode
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = str(-code)
        return Result(UNKNOWN, f"killed by signal {name}", seconds=seconds)
    if code > UNKNOWN:
        err = kept["stderr"].decode("utf-8", "replace").strip() or text.strip()
        return Result(UNKNOWN, f"exit status {code} (not a Nagios status): {err[:500] or 'no output'}", seconds=seconds)
    if not text.strip():
        text = kept["stderr"].decode("utf-8", "replace")
    result = parse_output(text, code)
    result.seconds = seconds
    return result


@dataclass(frozen=True, slots=True, kw_only=True)
class NagiosSettings(Settings):
    """``[probes.nagios]``."""

    checks: list[Any] = setting(
        "any", [], help='list of { name = "LABEL", command = ["/path/check_x", "ARG", ...], timeout = "10s", env = {...} }'
    )
    check_timeout: float = setting("duration", 10.0, minimum=0.001, help="a check's timeout when its entry gives none")
    max_output: int = setting("size", 16384, minimum=1, help="bytes of a plugin's output read; the rest is dropped")
    parallel: int = setting("int", 4, help="checks run at the same time")


class NagiosProbe:
    """Runs the configured checks every interval, ``parallel`` at a time."""

    name = "nagios"
    options: ClassVar[type[NagiosSettings]] = NagiosSettings

    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.settings = NagiosSettings()
        self.results: dict[str, Result] = {}

    def configure(self, settings: NagiosSettings) -> None:
        problems: list[str] = []
        if settings.parallel < 1:
            problems.append(f"parallel: expected a whole number of at least 1, got {settings.parallel!r}")
        keys = {**CHECK_KEYS, "timeout": Key(_timeout, settings.check_timeout)}
        entries, more = parse_checks(settings.checks, keys, EXAMPLE)
        problems += more
        if problems:
            raise ValueError("\n".join(problems))
        self.checks = [Check(c["name"], c["command"], c["timeout"], c["env"]) for _, c in entries]
        self.settings = settings

    def collect(self) -> list[Sample]:
        if not self.checks:
            return []
        max_output = self.settings.max_output
        with ThreadPoolExecutor(min(self.settings.parallel, len(self.checks)), thread_name_prefix="nagios") as pool:
            results = list(pool.map(lambda c: run_check(c, max_output), self.checks))
        stamp = time.time()
        out: list[Sample] = []
        for check, result in zip(self.checks, results):
            self.results[check.name] = result
            out.append(Sample("nagios.status", result.status, {"check": check.name}, stamp))
            out.append(Sample("nagios.seconds", result.seconds, {"check": check.name}, stamp))
            seen: set[str] = set()
            for label, value in result.perfdata:
                if label not in seen:  # a label printed twice: the first counts
                    seen.add(label)
                    out.append(Sample("nagios.perfdata", value, {"check": check.name, "label": label}, stamp))
        return out

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """What the check's plugin said on its last run, for the alert mail."""
        result = self.results.get(labels.get("check", ""))
        return result.detail if result is not None and metric.startswith("nagios.") else None

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
