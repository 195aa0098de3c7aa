"""Recorded samples: the CSV file ``alertmail probe --record`` writes and ``alertmail replay`` reads.

The format, one sample a line, with a header line::

    timestamp,metric,labels,value
    2026-11-26T14:03:00+01:00,disk.used_percent,mount=/;device=sda1,93.4
    1795698180,cpu.percent,,12.5

``timestamp`` is ISO 8601 (no offset means UTC) or epoch seconds; ``labels`` is
``k=v`` pairs joined by ``;``, with ``%``, ``;`` and ``=`` inside a key or value
written as ``%25``, ``%3B`` and ``%3D``.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from alertmail.errors import AlertmailError
from alertmail.model import Labels, Sample

HEADER = ("timestamp", "metric", "labels", "value")
_SAFE = "/:.,*@+-_ "  # kept readable in label values; only % ; = are escaped


class SampleFileError(AlertmailError, ValueError):
    """A line of a samples file that cannot be read; the message names file and line."""


# -- the CSV format ------------------------------------------------------------------


def format_labels(labels: Labels) -> str:
    return ";".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in labels)


def parse_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f'expected labels like "mount=/;device=sda1", got {text!r}')
        out[unquote(key)] = unquote(value)
    return out


def parse_timestamp(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected ISO 8601 (2026-11-26T14:03:00+01:00) or epoch seconds, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def read_samples(path: Path | str) -> list[Sample]:
    """Every sample of a CSV file, sorted by time; SampleFileError names the first bad line."""
    path = Path(path)
    out: list[Sample] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh), 1):
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row] == list(HEADER):
                continue
            if len(row) != 4:
                raise SampleFileError(f"{path}:{number}: expected 4 columns {','.join(HEADER)}, got {len(row)}")
            try:
                out.append(Sample(row[1].strip(), float(row[3]), parse_labels(row[2]), parse_timestamp(row[0])))
            except ValueError as exc:
                raise SampleFileError(f"{path}:{number}: {exc}") from None
    out.sort(key=lambda s: s.timestamp)
    return out


class SampleWriter:
    """Appends samples to a CSV file, header first when the file is new."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115  open as long as the writer; close() ends it
        self._csv = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._csv.writerow(HEADER)
        self.count = 0

    def write(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            stamp = dt.datetime.fromtimestamp(s.timestamp, dt.UTC).isoformat(timespec="milliseconds")
            self._csv.writerow((stamp.replace("+00:00", "Z"), s.metric, format_labels(s.labels), repr(s.value)))
            self.count += 1
        self._fh.flush()  # an interrupted recording keeps what it has

    def close(self) -> None:
        self._fh.close()


# -- recording -----------------------------------------------------------------------------


async def record(
    probes: dict[str, Any],
    intervals: dict[str, float],
    timeouts: dict[str, float],
    writer: SampleWriter,
    duration: float,
    *,
    echo: Any = None,
    progress: Any = None,
) -> int:
    """Run each probe at its own interval for ``duration`` seconds, appending samples; the count written.

    ``progress(elapsed, count)`` is called after each round of runs (the command shows it).
    """
    from alertmail.probes.runner import run_probe

    start = time.monotonic()
    next_run = dict.fromkeys(probes, start)
    while True:
        now = time.monotonic()
        if now - start >= duration:
            break
        due = [name for name, at in next_run.items() if at <= now]
        runs = await asyncio.gather(*(run_probe(probes[name], timeouts[name]) for name in due))
        for name, run in zip(due, runs):
            writer.write(run.samples)
            next_run[name] = max(next_run[name] + intervals[name], time.monotonic())
            if run.error and echo is not None:
                echo(run.error)
        if progress is not None:
            progress(time.monotonic() - start, writer.count)
        wait = min(next_run.values()) - time.monotonic()
        remaining = duration - (time.monotonic() - start)
        if remaining <= 0:
            break
        await asyncio.sleep(max(0.0, min(wait, remaining)))
    return writer.count
