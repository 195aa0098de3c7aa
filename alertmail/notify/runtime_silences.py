"""Silences at run time: ``state_dir/silences.toml``, which ``alertmail silence`` edits, and the SilenceSet in force.

The file holds fixed spans (``starts``, ``ends``) as readable TOML, written atomically
under a lock; what a silence is and how ``[[silences]]`` declares one is in
``alertmail.notify.silences``. The SilenceSet joins the config's silences and the
file's, re-reading the file when it changes.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import tomllib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alertmail.fsutil import lock, write_atomic
from alertmail.notify.silences import Silence, Silenceable, SilenceSettings, Span, config_silences

# The name log readers know: these lines are about silences, wherever their code lives.
log = logging.getLogger("alertmail.notify.silences")

RUNTIME_FILE = "silences.toml"
_HEADER = (
    "# Silences added at run time with `alertmail silence add`.\n"
    "# Remove one with `alertmail silence remove ID`; expired ones are pruned.\n"
    "# Times are UTC. The running agent re-reads this file when it changes.\n\n"
)


def _utc(timestamp: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(int(timestamp), dt.UTC)


def _epoch(value: Any) -> float:
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()
    raise ValueError(f"expected a date-time like 2026-11-26T14:00:00Z, got {value!r}")


def _to_record(silence: Silence) -> dict[str, Any]:
    span = silence.schedule
    assert isinstance(span, Span)
    record: dict[str, Any] = {"id": silence.id, "rule": silence.rule}
    if silence.labels:
        record["labels"] = dict(silence.labels)
    if silence.severity:
        record["severity"] = list(silence.severity)
    record |= {"starts": _utc(span.starts), "ends": _utc(span.ends), "comment": silence.comment}
    if silence.author:
        record["author"] = silence.author
    return record


def _from_record(record: Mapping[str, Any]) -> Silence:
    if not isinstance(record, Mapping) or not isinstance(record.get("id"), str):
        raise ValueError(f"a silence without an id: {record!r}")
    labels = record.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ValueError(f"silence {record['id']}: labels must be a table")
    return Silence(
        id=record["id"],
        schedule=Span(_epoch(record.get("starts")), _epoch(record.get("ends"))),
        rule=str(record.get("rule") or "*"),
        labels={str(k): str(v) for k, v in labels.items()},
        severity=tuple(str(s) for s in record.get("severity") or ()),
        comment=str(record.get("comment") or ""),
        source="cli",
        author=str(record.get("author") or ""),
    )


class RuntimeSilences:
    """``state_dir/silences.toml``: read, add, remove, prune; every change under a lock, written atomically."""

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / RUNTIME_FILE
        self._lock_path = Path(state_dir) / f".{RUNTIME_FILE}.lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # Two `silence add` at once must not lose one: read-modify-write under flock.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            lock(fd)
            yield
        finally:
            os.close(fd)

    def read(self) -> list[Silence]:
        """Every silence in the file (expired ones too); ValueError when the file is unreadable."""
        try:
            document = tomllib.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.path}: not valid TOML: {exc}") from None
        items = document.get("silences", [])
        if not isinstance(items, list):
            raise ValueError(f"{self.path}: expected [[silences]] tables")
        return [_from_record(item) for item in items]

    def _write(self, silences: Iterable[Silence]) -> None:
        import tomli_w

        body = tomli_w.dumps({"silences": [_to_record(s) for s in silences]})
        write_atomic(self.path, (_HEADER + body).encode())

    def add(
        self,
        *,
        duration: float,
        rule: str = "*",
        labels: Mapping[str, str] | None = None,
        severity: Sequence[str] = (),
        comment: str = "",
        author: str = "",
        now: float,
    ) -> Silence:
        silence = Silence(
            id=os.urandom(4).hex(),
            schedule=Span(float(int(now)), float(int(now + duration))),
            rule=rule,
            labels=dict(labels or {}),
            severity=tuple(severity),
            comment=comment,
            source="cli",
            author=author,
        )
        with self._locked():
            kept = [s for s in self.read() if not s.schedule.expired(now)]
            self._write([*kept, silence])
        return silence

    def remove(self, silence_id: str, *, now: float) -> bool:
        """Remove one silence by id (expired ones are pruned too); False when no such id."""
        with self._locked():
            current = self.read()
            kept = [s for s in current if s.id != silence_id and not s.schedule.expired(now)]
            found = any(s.id == silence_id for s in current)
            if found or len(kept) != len(current):
                self._write(kept)
        return found

    def prune(self, *, now: float) -> int:
        """Drop expired silences; the number dropped."""
        with self._locked():
            current = self.read()
            kept = [s for s in current if not s.schedule.expired(now)]
            if len(kept) != len(current):
                self._write(kept)
        return len(current) - len(kept)


class SilenceSet:
    """The silences in force: the config's plus the run-time file's, re-read when it changes."""

    def __init__(self, config_silences: Sequence[Silence] = (), state_dir: Path | str | None = None) -> None:
        self.config_silences = list(config_silences)
        self.runtime = RuntimeSilences(state_dir) if state_dir is not None else None
        self.runtime_silences: list[Silence] = []
        self._seen: tuple[int, int] | None = None

    def refresh(self, now: float) -> None:
        """Re-read the run-time file if its mtime or size changed (one stat call otherwise)."""
        if self.runtime is None:
            return
        try:
            st = self.runtime.path.stat()
            seen: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            seen = None
        if seen == self._seen:
            return
        self._seen = seen
        if seen is None:
            self.runtime_silences = []
            return
        try:
            self.runtime_silences = self.runtime.read()
        except ValueError as exc:
            log.error("%s; keeping the %d silences read before", exc, len(self.runtime_silences))
            return
        log.info("silences: %d run-time silence(s) from %s", len(self.runtime_silences), self.runtime.path)
        if any(s.schedule.expired(now) for s in self.runtime_silences):
            try:
                self.runtime.prune(now=now)
            except OSError as exc:
                log.warning("cannot prune expired silences in %s: %s", self.runtime.path, exc)

    @property
    def all(self) -> list[Silence]:
        return [*self.config_silences, *self.runtime_silences]

    def match(self, alert: Silenceable, now: float) -> Silence | None:
        """The first silence in force for this alert at ``now``, or None."""
        for silence in self.all:
            if silence.silences(alert, now):
                return silence
        return None

    def active(self, now: float) -> list[Silence]:
        return [s for s in self.all if s.schedule.active(now)]

    def __bool__(self) -> bool:
        return bool(self.config_silences) or self.runtime is not None


def in_force(silences: Sequence[SilenceSettings], *, timezone: str, state_dir: Path | str | None = None) -> SilenceSet:
    """The agent's silences: ``[[silences]]`` (in ``timezone``, ``[agent].timezone``, unless one names
    its own) plus ``state_dir/silences.toml`` (none without ``state_dir``)."""
    return SilenceSet(config_silences(silences, default_tz=timezone), state_dir)
