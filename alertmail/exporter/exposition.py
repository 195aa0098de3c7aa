"""The two exposition formats: Prometheus text 0.0.4 and OpenMetrics 1.0.

Written out here rather than taken from prometheus_client: that library imports an
HTTP server, a WSGI stack and an HTTP client the agent does not use, and cost the
agent 2.5 MB of its idle memory (docs/fleet.md has the figures); both formats are
a few lines of text per family.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from alertmail.model import without_surrogates

log = logging.getLogger("alertmail.exporter")

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass
class Family:
    """One metric: its name (without ``_total`` for a counter), type, help, unit and samples."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str
    unit: str = ""
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, labels: dict[str, str], value: float) -> None:
        self.samples.append((labels, float(value)))

    @property
    def sample_name(self) -> str:
        return self.name + "_total" if self.kind == "counter" else self.name


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def _label_value(text: str) -> str:
    return without_surrogates(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())) + "}"


def _help(text: str) -> str:
    return without_surrogates(text).replace("\\", "\\\\").replace("\n", "\\n")


def _text_family(family: Family) -> str:
    name = family.sample_name
    lines = [f"# HELP {name} {_help(family.help)}", f"# TYPE {name} {family.kind}"]
    lines.extend(f"{name}{_labels(labels)} {_value(value)}" for labels, value in family.samples)
    return "\n".join(lines) + "\n"


def _openmetrics_family(family: Family) -> str:
    lines = [f"# TYPE {family.name} {family.kind}"]
    if family.unit:
        lines.append(f"# UNIT {family.name} {family.unit}")
    lines.append(f"# HELP {family.name} {_help(family.help).replace(chr(34), chr(92) + chr(34))}")
    lines.extend(f"{family.sample_name}{_labels(labels)} {_value(value)}" for labels, value in family.samples)
    return "\n".join(lines) + "\n"


def _join(families: list[Family], write: Callable[[Family], str]) -> list[bytes]:
    """Each family written out on its own: one that cannot be is left out and logged, never the whole scrape."""
    out = []
    for family in families:
        try:
            out.append(write(family).encode())
        except Exception:
            log.exception("metric family %r left out of this scrape", family.name)
    return out


def text_format(families: list[Family]) -> bytes:
    """The Prometheus text format; a counter's HELP and TYPE name it with ``_total``, as client libraries do."""
    return b"".join(_join(families, _text_family))


def openmetrics_format(families: list[Family]) -> bytes:
    """OpenMetrics 1.0: a counter family is named without ``_total``, its samples with it; ``# EOF`` ends it."""
    return b"".join(_join(families, _openmetrics_family)) + b"# EOF\n"


def negotiate(accept: str) -> str:
    """The content type to answer with: OpenMetrics when ``Accept`` names it, else the text format."""
    return OPENMETRICS if "application/openmetrics-text" in accept else TEXT


def encode(families: list[Family], content_type: str) -> bytes:
    return openmetrics_format(families) if content_type == OPENMETRICS else text_format(families)
