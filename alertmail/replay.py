"""Try rules before trusting them: recorded samples through the rules and the notifier.

``alertmail replay --samples FILE.csv`` runs recorded samples (the format is in
``alertmail.probes.samples``; ``alertmail probe --record`` writes them) through the rules
and the notifier (grouping, silences, storm cap) on the recorded clock. The result is the
timeline of alert events, with what became of each, and the mails that would have been
sent. No mail leaves: the notifier's queue is a list in memory. ``--render DIR`` writes
each mail as ``.eml`` and its HTML part as ``.html`` (charts inlined as ``data:`` URIs so a
browser opens it as is).
"""

from __future__ import annotations

import base64
import email
import email.policy
import email.utils
import itertools
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alertmail.model import Envelope, Sample

if TYPE_CHECKING:
    from alertmail.config.core import MailSettings
    from alertmail.notify.notifier import NotifySettings
    from alertmail.notify.runtime_silences import SilenceSet
    from alertmail.rules.model import Rule

# -- mails kept in memory --------------------------------------------------------------


@dataclass
class CollectedMail:
    id: str
    data: bytes
    envelope: Envelope

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    @property
    def at(self) -> float:
        return email.utils.parsedate_to_datetime(str(self.message["Date"])).timestamp()

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])


class MailCollector:
    """Stands in for the queue: keeps every mail the notifier queues, in order."""

    def __init__(self) -> None:
        self.mails: list[CollectedMail] = []

    async def put(self, data: bytes, envelope: Envelope, *, route: list[str] | None = None, origin: str = "agent") -> str:
        mail = CollectedMail(f"replay-{len(self.mails) + 1:04d}", bytes(data), envelope)
        self.mails.append(mail)
        return mail.id

    def entries(self) -> list[Any]:
        return []


# -- the replay --------------------------------------------------------------------------


@dataclass
class Replay:
    """What a replay produced: the journal lines (events and their fate) and the mails."""

    samples: int
    timeline: list[dict[str, Any]] = field(default_factory=list)
    mails: list[CollectedMail] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The alert events the rules produced, each once (not its release or digest line)."""
        return [
            line
            for line in self.timeline
            if "mail" not in line and (line["fate"] == "notified" or line["fate"].startswith("silenced"))
        ]


async def replay(
    samples: Sequence[Sample],
    rules: Sequence[Rule],
    *,
    notify: NotifySettings | None = None,
    mail: MailSettings | None = None,
    silences: SilenceSet | None = None,
    hostname: str = "replay",
    timezone: str | None = None,
    tick: float = 1.0,
    charts: bool = False,
    render_options: Mapping[str, Any] | None = None,
    state_dir: Path | None = None,
) -> Replay:
    """Run ``samples`` (sorted by time) through ``rules`` and a notifier on the recorded clock.

    ``notify`` and ``mail`` are the config's ``[notify]`` and ``[mail]``, ``timezone`` its
    ``[agent].timezone``; each left out is what a config without it has (its declared defaults).
    Between samples the engine and the notifier are ticked every ``tick`` seconds, as
    the agent does, so reminders, absent series, group waits, digests and the ends of
    silences happen at their times. After the last sample, what still waits (groups,
    digests) is flushed at its due time. ``state_dir`` (default: a temporary folder)
    receives the notifier's incident files and journal. ``render_options`` are the agent's
    (``[mail].templates``, the probes' units); ``charts`` says whether to draw charts.
    """
    from alertmail.config.core import AgentSettings, MailSettings
    from alertmail.notify.notifier import Notifier, NotifySettings
    from alertmail.probes.history import History
    from alertmail.rules.engine import RuleEngine

    if tick <= 0:
        raise ValueError("tick must be longer than 0s")
    with tempfile.TemporaryDirectory(prefix="alertmail-replay-") as tmp:
        folder = Path(state_dir) if state_dir is not None else Path(tmp)
        engine = RuleEngine(rules)
        history = History()
        collector = MailCollector()
        notifier = Notifier(
            notify=notify or NotifySettings(),
            # The mails stay in memory: one route, named for what it is.
            mail=replace(mail or MailSettings(), route=["replay"], also_route=[]),
            hostname=hostname,
            timezone=timezone or AgentSettings().timezone,
            queue=collector,
            state_dir=folder,
            history=history.get,
            silences=silences,
            rules=rules,
            # A replay is a short-lived command: draw charts in this process.
            render_options={**(render_options or {}), "charts": "in-process" if charts else "off"},
            durable=False,
        )

        async def step(now: float) -> None:
            events = engine.tick(now)
            if events:
                await notifier.notify(events, now)
            await notifier.flush(now)

        clock: float | None = None
        for ts, group in itertools.groupby(samples, key=lambda s: s.timestamp):
            batch = list(group)
            if clock is not None:
                t = clock + tick
                while t < ts:
                    await step(t)
                    t += tick
            history.add(s for s in batch if any(rule.matches(s) for rule in rules))
            events = engine.observe(batch, ts)
            await notifier.notify(events, ts)
            await step(ts)
            clock = ts
        for _ in range(100_000):  # drain: every wait ends, bounded in case a digest keeps coming
            due = notifier.next_flush
            if due is None:
                break
            await notifier.flush(max(due, clock or due))
            clock = max(due, clock or due)
        timeline = notifier.journal.read()
        return Replay(len(samples), timeline, list(collector.mails))


# -- rendering files ---------------------------------------------------------------------

_CID = re.compile(r"""(["'(])cid:([^"')\s]+)""")


def html_with_data_uris(message: EmailMessage) -> str | None:
    """The HTML part of ``message`` with each ``cid:`` image replaced by a ``data:`` URI."""
    part = message.get_body(preferencelist=("html",))
    if part is None:
        return None
    images = {}
    for sub in message.walk():
        cid = sub.get("Content-ID")
        if cid and sub.get_content_maintype() == "image":
            data = sub.get_payload(decode=True)
            data = data if isinstance(data, bytes) else b""
            images[str(cid).strip("<>")] = f"data:{sub.get_content_type()};base64,{base64.b64encode(data).decode()}"
    html = part.get_content()
    return _CID.sub(lambda m: m.group(1) + images.get(m.group(2), f"cid:{m.group(2)}"), html)


def write_mail_files(mails: Sequence[CollectedMail], folder: Path) -> list[Path]:
    """``NNN-kind.eml`` and ``NNN-kind.html`` per mail (text in <pre> when a mail has no HTML)."""
    import html as html_mod

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, mail in enumerate(mails, 1):
        msg = mail.message
        kind = re.sub(r"[^a-z0-9-]+", "-", str(msg.get("X-Alertmail-Kind", "mail")).lower()).strip("-") or "mail"
        stem = folder / f"{n:03d}-{kind}"
        stem.with_suffix(".eml").write_bytes(mail.data)
        page = html_with_data_uris(msg)
        if page is None:
            body = msg.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            page = (
                f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html_mod.escape(mail.subject)}</title>'
                f"</head><body><pre>{html_mod.escape(text)}</pre></body></html>"
            )
        stem.with_suffix(".html").write_text(page, encoding="utf-8")
        written += [stem.with_suffix(".eml"), stem.with_suffix(".html")]
    return written
