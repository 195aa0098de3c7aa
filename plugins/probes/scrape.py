"""The ``scrape`` probe: read Prometheus exporters and textfile-collector files.

::

    [probes.scrape]
    interval = "30s"
    targets = [ { name = "node", url = "http://127.0.0.1:9100/metrics" } ]
    files = ["/var/lib/prometheus/node-exporter/*.prom"]   # textfile-collector files, optional

Every series becomes a sample of ``scrape.<series name>`` with the series' labels plus
``target`` (the target's name, or the file's path; a scraped ``target`` label becomes
``exported_target``). Counters come as they are and also as per-second rates named
``scrape.<series name>_per_second`` (from the second scrape on; a counter that went down
was reset and starts again). Histograms and summaries come as their series:
``_bucket{le}``, ``_sum``, ``_count``, and ``{quantile}``. Per target: ``scrape.up``,
``scrape.series``, ``scrape.seconds``, ``scrape.limited``; per file ``scrape.age_seconds``.

The text is parsed by ``prometheus_client``'s parser (the Prometheus text format 0.0.4,
which every exporter serves when asked for it). Limits per target: ``max_size`` bytes of
response, ``max_series`` series, ``scrape_timeout``: a target that passes one is
dropped for that run (``scrape.up`` 0, ``scrape.limited`` 1) and the run reports the
problem, so the agent's ``agent-probe-failed`` self-alert mails it with the reason.
This module is loaded only when ``[probes.scrape]`` is in the config (``external.py``).
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.client import HTTPException
from typing import Any, ClassVar

from alertmail import Sample, Settings, format_duration, parse_duration, setting
from alertmail.plugins.probes.checklist import Key, parse_checks

ACCEPT = "text/plain;version=0.0.4;q=1,*/*;q=0.1"
# Deltas over less than this are rounding: no rate yet (as the system probes' MIN_SPAN).
MIN_SPAN = 0.2


@dataclass(frozen=True)
class Target:
    name: str
    url: str | None = None  # an exporter; else ``path`` is a textfile
    path: str | None = None
    timeout: float = 10.0


@dataclass
class Scraped:
    """One target's outcome: its samples, or why there are none."""

    target: Target
    samples: list[Sample] = field(default_factory=list)
    error: str = ""  # why up is 0
    limited: bool = False
    seconds: float = 0.0
    series: int = 0
    age: float | None = None


class Limited(Exception):
    """A target passed a limit; the message says which and the fix."""


EXAMPLE = '{ name = "node", url = "http://127.0.0.1:9100/metrics" }'


def _name(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected a non-empty string, the target label of its series, e.g. name = "node"')
    return value


def _url(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith(("http://", "https://")):
        raise ValueError('expected an http:// or https:// URL, e.g. url = "http://127.0.0.1:9100/metrics"')
    return value


def _timeout(value: Any) -> float:
    timeout = parse_duration(value)
    if timeout <= 0:
        raise ValueError("a target's timeout must be more than 0")
    return timeout


def parse_targets(value: Any, default_timeout: float) -> list[Target]:
    """The ``targets`` option; ValueError naming every bad entry and key."""
    keys = {
        "name": Key(_name, required=True, example='the target label of its series, e.g. name = "node"'),
        "url": Key(_url, required=True, example='e.g. url = "http://127.0.0.1:9100/metrics"'),
        "timeout": Key(_timeout, default_timeout),
    }
    entries, problems = parse_checks(value, keys, EXAMPLE, option="targets", noun="target")
    if problems:
        raise ValueError("\n".join(problems))
    return [Target(t["name"], url=t["url"], timeout=t["timeout"]) for _, t in entries]


def fetch(target: Target, max_size: int) -> bytes:
    """The body of one exporter's response; Limited past max_size or the timeout, OSError else."""
    import urllib.request

    assert target.url is not None
    deadline = time.monotonic() + target.timeout
    request = urllib.request.Request(target.url, headers={"Accept": ACCEPT, "User-Agent": "alertmail-scrape"})
    # Straight to the target: an http_proxy in the agent's environment is for other traffic.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(request, timeout=target.timeout) as response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_size:
            raise Limited(f"the response is {int(length)} bytes, over max_size ({max_size})")
        body = bytearray()
        while chunk := response.read(65536):
            body += chunk
            if len(body) > max_size:
                raise Limited(f"the response is over max_size ({max_size} bytes)")
            if time.monotonic() > deadline:
                raise Limited(f"the response took longer than its timeout ({format_duration(target.timeout)})")
    return bytes(body)


def parse(text: str, target: str, max_series: int, stamp: float) -> tuple[list[Sample], dict[tuple, float]]:
    """The samples of one exposition, and the counters among them (series -> value) for rates."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: list[Sample] = []
    counters: dict[tuple, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = dict(s.labels)
            if "target" in labels:
                labels["exported_target"] = labels.pop("target")
            labels["target"] = target
            sample = Sample(f"scrape.{s.name}", s.value, labels, stamp)
            if len(samples) >= max_series:
                raise Limited(f"more than max_series ({max_series}) series")
            samples.append(sample)
            if family.type == "counter" and not s.name.endswith("_created"):
                counters[sample.series] = sample.value
    return samples, counters


@dataclass(frozen=True, slots=True, kw_only=True)
class ScrapeSettings(Settings):
    """``[probes.scrape]``."""

    targets: list[Any] = setting("any", [], help='list of { name = "LABEL", url = "http://HOST:PORT/metrics", timeout = "10s" }')
    files: list[str] = setting("list", [], help="textfile-collector files (*.prom), globs allowed")
    scrape_timeout: float = setting("duration", 10.0, minimum=0.001, help="a target's timeout when its entry gives none")
    max_size: int = setting("size", 10_000_000, minimum=1, help="largest response read from a target; a bigger one is dropped")
    max_series: int = setting("int", 20_000, help="series taken from one target or file; more and it is dropped")
    rates: bool = setting("bool", True, help="also offer each counter as scrape.<name>_per_second")
    parallel: int = setting("int", 4, help="targets scraped at the same time")


class ScrapeProbe:
    """Scrapes every target and reads every file, ``parallel`` at a time."""

    name = "scrape"
    options: ClassVar[type[ScrapeSettings]] = ScrapeSettings

    def __init__(self) -> None:
        self.targets: list[Target] = []
        self.settings = ScrapeSettings()
        # target -> counter series -> (value, monotonic time of the reading)
        self._last: dict[str, dict[tuple, tuple[float, float]]] = {}
        self._problems: list[str] = []
        self._lock = threading.Lock()

    def configure(self, settings: ScrapeSettings) -> None:
        problems: list[str] = []
        try:
            targets = parse_targets(settings.targets, settings.scrape_timeout)
        except ValueError as exc:
            problems += str(exc).splitlines()
            targets = []
        for i, pattern in enumerate(settings.files):
            if not isinstance(pattern, str) or not os.path.isabs(pattern):
                problems.append(f"files[{i}]: expected an absolute path or glob, e.g. /var/lib/prometheus/node-exporter/*.prom")
        for key, value in (("max_series", settings.max_series), ("parallel", settings.parallel)):
            if value < 1:
                problems.append(f"{key}: expected a whole number of at least 1, got {value!r}")
        if problems:
            raise ValueError("\n".join(problems))
        self.targets, self.settings = targets, settings

    def _scrape(self, target: Target, stamp: float) -> Scraped:
        out = Scraped(target)
        max_size = self.settings.max_size
        start = time.monotonic()
        try:
            if target.url is not None:
                body = fetch(target, max_size)
            else:
                assert target.path is not None
                with open(target.path, "rb") as fh:
                    out.age = max(time.time() - os.fstat(fh.fileno()).st_mtime, 0.0)
                    body = fh.read(max_size + 1)
                if len(body) > max_size:
                    raise Limited(f"the file is over max_size ({max_size} bytes)")
            out.samples, counters = parse(body.decode("utf-8", "replace"), target.name, self.settings.max_series, stamp)
            out.series = len(out.samples)
            if self.settings.rates:
                out.samples += self._rates(target.name, counters, start, stamp)
        except Limited as exc:
            out.samples, out.limited, out.error = [], True, str(exc)
        except TimeoutError:
            out.samples, out.limited = [], True
            out.error = f"no answer within its timeout ({format_duration(target.timeout)})"
        except (OSError, ValueError, HTTPException) as exc:  # refused, HTTP errors, cut short, not the text format
            out.samples, out.error = [], f"{type(exc).__name__}: {exc}"
        out.seconds = time.monotonic() - start
        return out

    def _rates(self, target: str, counters: Mapping[tuple, float], now: float, stamp: float) -> list[Sample]:
        """Per-second rates since the last scrape of ``target``; series gone from it are forgotten."""
        out = []
        with self._lock:
            before = self._last.get(target, {})
            kept: dict[tuple, tuple[float, float]] = {}
            for series, value in counters.items():
                last = before.get(series)
                if last is not None and now - last[1] < MIN_SPAN:
                    kept[series] = last  # too soon to tell: the older reading stays the baseline
                    continue
                kept[series] = (value, now)
                if last is not None and value >= last[0]:  # lower: reset, the new value is the baseline
                    metric, labels = series
                    out.append(Sample(f"{metric}_per_second", (value - last[0]) / (now - last[1]), labels, stamp))
            self._last[target] = kept
        return out

    def _all_targets(self) -> list[Target]:
        paths = sorted(
            {p for pattern in self.settings.files for p in (glob.glob(pattern) if glob.has_magic(pattern) else [pattern])}
        )
        return [*self.targets, *(Target(p, path=p) for p in paths)]

    def collect(self) -> list[Sample]:
        targets = self._all_targets()
        if not targets:
            return []
        stamp = time.time()
        with ThreadPoolExecutor(min(self.settings.parallel, len(targets)), thread_name_prefix="scrape") as pool:
            results = list(pool.map(lambda t: self._scrape(t, stamp), targets))
        out: list[Sample] = []
        problems: list[str] = []
        for r in results:
            labels = {"target": r.target.name}
            out += r.samples
            out.append(Sample("scrape.up", 0.0 if r.error else 1.0, labels, stamp))
            out.append(Sample("scrape.limited", 1.0 if r.limited else 0.0, labels, stamp))
            out.append(Sample("scrape.series", r.series, labels, stamp))
            out.append(Sample("scrape.seconds", r.seconds, labels, stamp))
            if r.age is not None:
                out.append(Sample("scrape.age_seconds", r.age, labels, stamp))
            if r.limited:
                problems.append(
                    f"target {r.target.name}: {r.error}: dropped this run; raise max_size, max_series or the timeout"
                    " in [probes.scrape], or have the exporter offer less"
                )
        self._problems = problems
        return out

    def problem(self) -> str | None:
        """What went wrong on the last run though it returned samples: targets that passed a limit."""
        return "; ".join(self._problems) or None

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """For the self-alert on this probe: the limits passed on the last run."""
        if metric.startswith("agent.") and labels.get("probe") == self.name:
            return self.problem()
        return None

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
