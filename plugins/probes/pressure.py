"""The ``pressure`` probe: Linux pressure stall information (PSI) for CPU, memory and I/O.

::

    [probes.pressure]

Reads ``/proc/pressure/{cpu,memory,io}`` (Linux 4.20 and later, with PSI enabled) and
reports the 10-second averages: ``pressure.some_percent`` (some task stalled on the
resource) and ``pressure.full_percent`` (all non-idle tasks stalled at once; for CPU only
on Linux 5.13 and later). A host without PSI (an older kernel, ``psi=0`` on the kernel
command line, not Linux at all) reports nothing; the agent says so once, when the probe
is configured, not on every run.
"""

from __future__ import annotations

import logging
import time
from typing import ClassVar

from alertmail import Sample

log = logging.getLogger("alertmail.probes.pressure")

ROOT = "/proc/pressure"
RESOURCES = ("cpu", "memory", "io")


def parse_psi(text: str) -> dict[str, dict[str, float]]:
    """``{"some": {"avg10": 1.5, ..., "total": ...}, "full": {...}}`` from one /proc/pressure file.

    Unknown words and lines are skipped, so a newer kernel's additions do no harm.
    """
    out: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        if kind not in ("some", "full"):
            continue
        values: dict[str, float] = {}
        for word in rest.split():
            key, sep, value = word.partition("=")
            if not sep:
                continue
            try:
                values[key] = float(value)
            except ValueError:
                continue
        out[kind] = values
    return out


class PressureProbe:
    """avg10 of each resource's some and full lines."""

    name: ClassVar[str] = "pressure"
    description: ClassVar[str] = "CPU, memory and I/O pressure (Linux PSI)"
    interval: float | None = 10.0

    def __init__(self, root: str = ROOT) -> None:
        self.root = root
        self.resources: tuple[str, ...] = RESOURCES

    def configure(self, settings: object) -> None:
        """No keys of its own: finds which resources this host reports."""
        readable = []
        why = ""
        for resource in RESOURCES:
            try:
                with open(f"{self.root}/{resource}") as f:
                    f.read()
            except OSError as exc:  # missing, or EOPNOTSUPP when the kernel booted with psi=0
                why = why or f"{exc.filename}: {exc.strerror}"
                continue
            readable.append(resource)
        said = not self.resources  # a reload finds what start found: say it once
        self.resources = tuple(readable)
        if not readable and not said:
            log.info("pressure: this host has no pressure stall information (%s); the pressure probe reports nothing", why)

    def collect(self) -> list[Sample]:
        now = time.time()
        out: list[Sample] = []
        for resource in self.resources:
            try:
                with open(f"{self.root}/{resource}") as f:
                    psi = parse_psi(f.read())
            except OSError:
                continue  # it was readable at start; a container's /proc may come and go
            for kind in ("some", "full"):
                avg10 = psi.get(kind, {}).get("avg10")
                if avg10 is not None:
                    out.append(Sample(f"pressure.{kind}_percent", avg10, {"resource": resource}, now))
        return out

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
