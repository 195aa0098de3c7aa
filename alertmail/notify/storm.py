"""Storm control: a per-recipient mail cap that folds the overflow into digests.

Promise: a recipient gets at most ``max_mails_per_hour`` mails in any rolling hour,
digests included, and no event is ever dropped. To keep that promise while still
sending a digest every ``digest_interval``, room is reserved for the digests: with
the defaults (10 per hour, a digest every 15 min, so at most 4 digests in an hour)
a recipient gets up to 6 separate mails in an hour; beyond that every event for
them is folded into the next digest, which goes out at most once per interval and
the first time one interval after their last separate mail. Separate mails resume
once the digest has gone and the hour has room again.

The one exception: when the agent stops, what is folded is sent at once (a digest
early rather than an event lost).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alertmail.rules.model import AlertEvent

if TYPE_CHECKING:
    from email.message import EmailMessage
    from pathlib import Path

    from alertmail.render.view import RenderContext
from alertmail.units import format_duration

HOUR = 3600.0


@dataclass
class Backlog:
    """What is folded for one recipient, waiting for their digest."""

    events: list[AlertEvent] = field(default_factory=list)
    since: float = 0.0  # when the first of them was folded
    due: float = 0.0  # when the digest goes out


class StormGuard:
    """Counts mails per recipient and decides: a separate mail now, or the next digest."""

    def __init__(self, max_per_hour: int, digest_interval: float) -> None:
        if max_per_hour < 0:
            raise ValueError("max_mails_per_hour cannot be negative")
        if digest_interval <= 0:
            raise ValueError("digest_interval must be longer than 0s")
        self.max_per_hour = max_per_hour
        self.digest_interval = digest_interval
        self._sent: dict[str, deque[float]] = {}
        self._last_digest: dict[str, float] = {}
        self.backlog: dict[str, Backlog] = {}

    @property
    def digests_per_hour(self) -> int:
        return math.ceil(HOUR / self.digest_interval)

    @property
    def separate_per_hour(self) -> int:
        """Separate mails a recipient may get in an hour before the storm mode starts."""
        return self.max_per_hour - self.digests_per_hour if self.max_per_hour else 0

    def problem(self) -> str | None:
        """Why this cap cannot work, or None."""
        if self.max_per_hour and self.separate_per_hour < 1:
            return (
                f"max_mails_per_hour = {self.max_per_hour} leaves no room for separate mails beside "
                f"{self.digests_per_hour} digests an hour (one every {format_duration(self.digest_interval)}); "
                "raise max_mails_per_hour or lengthen digest_interval"
            )
        return None

    def _recent(self, rcpt: str, now: float) -> deque[float]:
        sent = self._sent.setdefault(rcpt, deque())
        while sent and sent[0] <= now - HOUR:
            sent.popleft()
        return sent

    def allows(self, rcpt: str, now: float) -> bool:
        """May ``rcpt`` get a separate mail now? Never while a digest for them is pending (keeps order)."""
        if not self.max_per_hour:
            return True
        if rcpt in self.backlog:
            return False
        return len(self._recent(rcpt, now)) < self.separate_per_hour

    def sent(self, recipients: Sequence[str], now: float) -> None:
        if not self.max_per_hour:
            return
        for rcpt in recipients:
            self._recent(rcpt, now).append(now)

    def fold(self, rcpt: str, events: Sequence[AlertEvent], now: float) -> None:
        """Keep ``events`` for ``rcpt``'s next digest."""
        backlog = self.backlog.get(rcpt)
        if backlog is None:
            sent = self._recent(rcpt, now)
            last = max(self._last_digest.get(rcpt, 0.0), sent[-1] if sent else 0.0)
            backlog = self.backlog[rcpt] = Backlog(since=now, due=max(now, last + self.digest_interval))
        backlog.events.extend(events)

    def due(self, now: float, *, force: bool = False) -> list[tuple[str, Backlog]]:
        """The backlogs whose digest is due (all of them with ``force``), removed from the guard."""
        out = []
        for rcpt in [r for r, b in self.backlog.items() if force or b.due <= now]:
            out.append((rcpt, self.backlog.pop(rcpt)))
            self._last_digest[rcpt] = now
            self.sent([rcpt], now)
        return out

    def shift(self, delta: float) -> None:
        """The wall clock was stepped by ``delta`` seconds: move the counted mails and the digests' times by it,
        so the hour and the digest interval count on the monotonic clock."""
        for sent in self._sent.values():
            for i in range(len(sent)):
                sent[i] += delta
        for rcpt in self._last_digest:
            self._last_digest[rcpt] += delta
        for backlog in self.backlog.values():
            backlog.since += delta
            backlog.due += delta

    @property
    def next_due(self) -> float | None:
        return min((b.due for b in self.backlog.values()), default=None)


# -- the digest mail -------------------------------------------------------------


def render_digest(
    events: Sequence[AlertEvent], backlog_since: float, guard: StormGuard, ctx: RenderContext, journal: Path | None = None
) -> EmailMessage:
    """One mail in the alert mail's style: how many alerts, how many still firing and recovered, and a
    table of the folded events, worst first (``alertmail.render.digest``). ``journal``: the file that
    records every event, named when the table is cut short."""
    # The rendering code loads with the first digest, not with the idle agent.
    from alertmail.render.digest import render_digest_mail

    why = (
        f"You had {guard.separate_per_hour} separate alert mails within an hour, the most before "
        f"digests start (max_mails_per_hour = {guard.max_per_hour}, a digest at most every "
        f"{format_duration(guard.digest_interval)}), so these events were folded into this digest "
        "instead of being mailed one by one."
    )
    where = str(journal) if journal is not None else "state_dir/logs/alerts.jsonl"
    return render_digest_mail(events, ctx, notice=why, journal=where, since=backlog_since)
