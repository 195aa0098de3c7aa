"""Every kind of mail alertmail writes, built through the real code paths, as the bytes that are queued.

Single alert, grouped, reminder, recovery, flapping, digest (through the notifier with its
storm cap), heartbeat, delivery-status report and send-test. Charts are drawn (in process).
Used by the SpamAssassin test and by ``python -m tests.mail_kinds DIR`` to write them out.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import sys
import types
from pathlib import Path

from alertmail.config.core import AgentSettings, MailSettings
from alertmail.notify.heartbeat import Heartbeat, HeartbeatSettings
from alertmail.notify.notifier import Notifier, NotifySettings
from alertmail.queue.dsn import build_dsn
from alertmail.queue.entry import Entry, RecipientState
from alertmail.queue.spool import Queue
from alertmail.replay import MailCollector
from alertmail.rules.model import AlertEvent, Rule

SENDER = "alertmail@web01.example.com"
OPS = "ops@example.com"
DISK = Rule(
    name="disk-root-full",
    metric="disk.used_percent",
    labels={"mount": "/"},
    above=90,
    to=(OPS,),
    severity="critical",
    description="The root file system is nearly full.",
)
CPU = Rule(name="cpu-busy", metric="cpu.percent", above=85, to=(OPS,))
T0 = 1_796_000_000.0


def history(metric: str, labels) -> list[tuple[float, float]]:
    return [(T0 - 1800 + 30 * i, 60.0 + i) for i in range(60)]


def event(kind: str, rule: Rule, at: float, value: float, incident: str, **kw) -> AlertEvent:
    labels = tuple(sorted(dict(rule.labels or {"host": "web01"}).items()))
    return AlertEvent(
        kind=kind,
        rule=rule,
        labels=labels,
        value=value,
        threshold=rule.above or 0.0,
        comparison=">",
        severity=rule.severity,
        since=T0,
        at=at,
        incident=incident,
        **kw,
    )


# Every alert mailed as it comes, no cap (the storm mail sets its own).
AT_ONCE = NotifySettings(group_wait=0.0, max_mails_per_hour=0)


def notifier(
    folder: Path,
    queue: MailCollector,
    *,
    sender: str = SENDER,
    hostname: str = "web01.example.com",
    notify: NotifySettings = AT_ONCE,
    **kw,
) -> Notifier:
    return Notifier(
        notify=notify,
        mail=MailSettings(sender=sender, to=[OPS], route=["pickup"]),
        hostname=hostname,
        timezone="Europe/Berlin",
        queue=queue,
        state_dir=folder,
        history=history,
        render_options={"charts": "in-process"},
        **kw,
    )


async def _build(folder: Path, sender: str = SENDER, hostname: str = "web01.example.com") -> dict[str, bytes]:
    from alertmail.units import mail_domain

    mails: dict[str, bytes] = {}
    queue = MailCollector()
    n = notifier(folder / "alerts", queue, sender=sender, hostname=hostname)
    steps = [
        ("single alert", [event("firing", DISK, T0, 93.4, "d1")]),
        ("grouped", [event("firing", CPU, T0 + 600, 97.0, "c1"), event("firing", DISK, T0 + 600, 94.0, "d2")]),
        ("reminder", [event("reminder", DISK, T0 + 4000, 95.1, "d1")]),
        ("recovery", [event("resolved", DISK, T0 + 5000, 71.0, "d1")]),
        ("flapping", [event("flapping", CPU, T0 + 6000, 88.0, "c2", percent_change=35.0)]),
    ]
    for kind, events in steps:
        before = len(queue.mails)
        await n.notify(events, events[0].at)
        await n.flush(events[0].at + 3600, force=True)
        mails[kind] = queue.mails[before].data
    storm_queue = MailCollector()
    cap = NotifySettings(group_wait=0.0, max_mails_per_hour=1, digest_interval=60.0)
    storm = notifier(folder / "storm", storm_queue, sender=sender, hostname=hostname, notify=cap)
    burst = [
        event("firing", Rule(name=f"disk-{i}", metric="disk.used_percent", above=90, to=(OPS,)), T0 + i, 91.0 + i, f"s{i}")
        for i in range(6)
    ]
    for i, one in enumerate(burst):
        await storm.notify([one], T0 + i)
    await storm.flush(T0 + 3 * 3600, force=True)
    mails["digest"] = next(m.data for m in storm_queue.mails if "DIGEST" in m.subject)
    spool = Queue(folder / "queue", fsync=False)
    await spool.start()
    try:
        heartbeat = Heartbeat(settings=HeartbeatSettings(every=86400.0), notifier=n, queue=spool, badmail_folder=folder / "bad")
        msg = heartbeat.compose(T0 + 86400)
    finally:
        await spool.close()
    msg["From"], msg["To"], msg["Message-ID"] = sender, OPS, f"<heartbeat.1@{mail_domain(sender, hostname)}>"
    msg["Date"] = email.utils.formatdate(T0 + 86400)
    mails["heartbeat"] = msg.as_bytes(policy=email.policy.SMTP)
    entry = Entry(id="0123456789abcdef0123", created=T0, sender=sender, recipients={OPS: RecipientState()}, size=100)
    entry.recipients[OPS].status, entry.recipients[OPS].code = "failed", 550
    entry.recipients[OPS].message, entry.recipients[OPS].enhanced = "mailbox unavailable", "5.1.1"
    dsn = build_dsn(
        entry,
        mails["single alert"],
        [(OPS, entry.recipients[OPS])],
        action="failed",
        hostname=hostname,
        now=T0 + 60,
        domain=mail_domain(sender, hostname),
    )
    mails["delivery-status report"] = dsn.as_bytes(policy=email.policy.SMTP)
    mails["send-test"] = await _send_test(sender, hostname)
    return mails


async def _send_test(sender: str = SENDER, hostname: str = "web01.example.com") -> bytes:
    from alertmail.cli.send_test import EXAMPLE_RULE, build_mail

    cfg = types.SimpleNamespace(
        mail=MailSettings(sender=sender, charts="in-process"),
        agent=AgentSettings(timezone="UTC"),
        section=lambda section: section.typed({}),
        hostname=hostname,
    )
    return await build_mail(cfg, types.SimpleNamespace(probes={}), EXAMPLE_RULE, (OPS,), ["smtp"])


def build_all(folder: Path, sender: str = SENDER, hostname: str = "web01.example.com") -> dict[str, bytes]:
    """kind -> the message as queued (CRLF line ends), from ``sender`` on a host named ``hostname``."""
    folder.mkdir(parents=True, exist_ok=True)
    return asyncio.run(_build(folder, sender, hostname))


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "mail-kinds")
    for kind, data in build_all(out / ".state").items():
        (out / f"{kind.replace(' ', '-')}.eml").write_bytes(data)
        print(out / f"{kind.replace(' ', '-')}.eml")
