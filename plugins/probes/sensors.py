"""The ``sensors`` probe: temperatures and fan speeds, as psutil reads them (Linux hwmon, FreeBSD).

::

    [probes.sensors]

A host without sensors (most virtual machines and containers) reports no samples and no
error; so does a system where psutil has no sensor support (macOS and Windows for
temperatures). The agent logs it once, when the probe is configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import psutil

from alertmail import Sample

log = logging.getLogger("alertmail.probes.sensors")


def readings(groups: Mapping[str, list[Any]], field: str, metric: str, now: float) -> list[Sample]:
    """One sample per sensor entry of a psutil ``sensors_*()`` result, labelled by chip and label.

    Entries without a label are named ``<field>N`` in order (temp1, fan2), as hwmon numbers
    them; a label a chip repeats (two NVMe drives both say "Composite") gets " #2", " #3".
    """
    out: list[Sample] = []
    for sensor, entries in sorted(groups.items()):
        seen: dict[str, int] = {}
        for i, entry in enumerate(entries, 1):
            value = getattr(entry, "current", None)
            if value is None:
                continue
            label = entry.label or f"{field}{i}"
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label} #{seen[label]}"
            out.append(Sample(metric, value, {"sensor": sensor, "label": label}, now))
    return out


class SensorsProbe:
    """Every temperature sensor and fan psutil finds."""

    name: ClassVar[str] = "sensors"
    description: ClassVar[str] = "temperatures and fan speeds (psutil)"
    interval: float | None = 30.0

    def __init__(self) -> None:
        self._temperatures: Callable[[], Mapping[str, list[Any]]] | None = getattr(psutil, "sensors_temperatures", None)
        self._fans: Callable[[], Mapping[str, list[Any]]] | None = getattr(psutil, "sensors_fans", None)
        self._said = False

    def configure(self, settings: object) -> None:
        """No keys of its own: says once when the host shows no sensor."""
        if not self.collect() and not self._said:  # a reload finds what start found: say it once
            self._said = True
            log.info("sensors: this host shows no temperature sensor or fan; the sensors probe reports nothing")

    def collect(self) -> list[Sample]:
        now = time.time()
        out: list[Sample] = []
        if self._temperatures is not None:
            out += readings(self._temperatures() or {}, "temp", "sensors.temperature_celsius", now)
        if self._fans is not None:
            out += readings(self._fans() or {}, "fan", "sensors.fan_rpm", now)
        return out

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
