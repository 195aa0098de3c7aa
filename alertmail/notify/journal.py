"""The alert journal: one JSON line per alert event the notifier handled, and one per mail queued.

``state_dir/logs/alerts.jsonl`` records each event with its fate (``notified``,
``silenced:ID``, ``released``, ``digest:RCPT``, ``render-failed`` when only a plain
mail could be made of it); the heartbeat summarises it. It rotates
to ``alerts.jsonl.1`` at 2 MB.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("alertmail.heartbeat")

ROTATE_AT = 2 * 1024 * 1024


class Journal:
    """Append-only JSON lines about alert events and mails; a record, not a queue (no fsync)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def _append(self, line: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if self.path.stat().st_size > ROTATE_AT:
                    os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            except FileNotFoundError:
                pass
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line, separators=(",", ":"), ensure_ascii=True) + "\n")
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)

    def record(self, event: Any, fate: str, now: float) -> None:
        """One alert event (an AlertEvent) and what became of it."""
        self._append(
            {
                "t": now,
                "kind": event.kind,
                "rule": event.rule.name,
                "labels": dict(event.labels),
                "value": event.value,
                "severity": event.severity,
                "incident": event.incident,
                "since": event.since,
                "at": event.at,
                "state": getattr(event, "state", ""),
                "fate": fate,
            }
        )

    def mail(self, subject: str, recipients: Sequence[str], kind: str, now: float, msg_id: str = "") -> None:
        """One mail handed to the queue (``msg_id``: its queue id, to tell later whether it was delivered)."""
        self._append({"t": now, "mail": subject, "to": list(recipients), "kind": kind, "id": msg_id})

    def read(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Lines at or after ``since`` (both files), oldest first; unreadable lines are skipped."""
        out = []
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                with open(path, encoding="utf-8", errors="replace") as fh:
                    for text in fh:
                        try:
                            line = json.loads(text)
                        except ValueError:
                            continue
                        if isinstance(line, dict) and isinstance(line.get("t"), int | float) and line["t"] >= since:
                            out.append(line)
            except FileNotFoundError:
                continue
        return out
