"""A single-file probe plugin for end-to-end tests: one gauge whose value the test writes into a file."""

from __future__ import annotations

from pathlib import Path

TEMPLATE = """
from pathlib import Path
from alertmail import MetricInfo, Sample, hookimpl

VALUE = Path(__file__).with_name("value.txt")

class Gauge:
    name = "gauge"
    interval = 0.5
    metrics = {metrics}

    def collect(self):
        # Labels come as the test gives them: a hostile one must reach no header raw.
        yield Sample({metric!r}, float(VALUE.read_text()), {labels!r})

@hookimpl
def register_probes(register):
    register(Gauge())
"""


def install_gauge(
    folder: Path,
    *,
    metric: str = "test.gauge",
    labels: dict[str, str] | None = None,
    value: str = "10",
    unit: str | None = None,
    description: str = "",
) -> Path:
    """Write ``folder/plugins.d/gauge.py`` and its value file; the value file's path (write to it to move the gauge)."""
    plugins = folder / "plugins.d"
    plugins.mkdir(parents=True, exist_ok=True)
    metrics = f"(MetricInfo({metric!r}, {unit!r}, {description!r}, {tuple(labels or {})!r}),)" if unit else "()"
    (plugins / "gauge.py").write_text(TEMPLATE.format(metric=metric, labels=labels or {}, metrics=metrics))
    (plugins / "value.txt").write_text(value)
    return plugins / "value.txt"
