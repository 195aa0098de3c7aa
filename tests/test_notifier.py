"""The notifier's incident records across a restart."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

from alertmail.config.core import MailSettings
from alertmail.notify.notifier import Notifier, NotifySettings
from alertmail.replay import MailCollector
from alertmail.rules.model import AlertEvent, Rule

RULE = Rule(name="disk-full", metric="disk.used_percent", above=90, to=("ops@test.example",))
T0 = 1_800_000_000.0


def event(kind: str, at: float) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=RULE,
        labels=(("mount", "/data"),),
        value=95.0 if kind == "firing" else 50.0,
        threshold=90.0,
        comparison=">",
        severity="warning",
        since=T0,
        at=at,
        incident="disk-full-data",
    )


# Every alert mailed as it comes, no cap: what each test sets apart from that is its subject.
AT_ONCE = NotifySettings(group_wait=0.0, max_mails_per_hour=0)
MAIL = MailSettings(sender="alertmail@test.example", route=["pickup"])


def notifier_for(state_dir, collector: MailCollector, notify: NotifySettings = AT_ONCE, mail: MailSettings = MAIL) -> Notifier:
    return Notifier(
        notify=notify,
        mail=mail,
        hostname="web01",
        timezone="UTC",
        queue=collector,
        state_dir=state_dir,
        render_options={"charts": "off"},
    )


def test_recovery_after_a_restart_replies_to_the_first_mail_even_with_an_incidents_file_of_an_earlier_version(tmp_path):
    collector = MailCollector()
    asyncio.run(notifier_for(tmp_path, collector).notify([event("firing", T0)], T0))
    # Earlier versions wrote a "references" list into each record.
    records = json.loads((tmp_path / "incidents.json").read_text())
    for record in records.values():
        record["references"] = []
    (tmp_path / "incidents.json").write_text(json.dumps(records))

    asyncio.run(notifier_for(tmp_path, collector).notify([event("resolved", T0 + 600)], T0 + 600))
    first, recovery = (m.message for m in collector.mails)
    assert recovery["In-Reply-To"] == first["Message-ID"]
    assert json.loads((tmp_path / "incidents.json").read_text()) == {}


# -- group_wait: the first alert at once, what follows batched -------------------------------


def alert(name: str, at: float, kind: str = "firing") -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=RULE,
        labels=(("mount", name),),
        value=95.0 if kind == "firing" else 50.0,
        threshold=90.0,
        comparison=">",
        severity="warning",
        since=at,
        at=at,
        incident=f"disk-full-{name}",
    )


def mounts(mail) -> list[str]:
    body = mail.message.get_body(("plain",)).get_content()
    return sorted({line.split("mount=")[1].split()[0].strip("]") for line in body.splitlines() if "mount=" in line})


def test_first_alert_goes_out_at_once_and_what_follows_within_group_wait_comes_as_one_mail(tmp_path):
    collector = MailCollector()
    notifier = notifier_for(tmp_path, collector, replace(AT_ONCE, group_wait=30.0))

    async def run() -> None:
        await notifier.notify([alert("/a", T0)], T0)
        assert len(collector.mails) == 1, "nothing was waiting: the first alert is queued by the same flush"
        assert notifier.next_flush is None
        await notifier.notify([alert("/b", T0 + 5)], T0 + 5)
        await notifier.notify([alert("/c", T0 + 20)], T0 + 20)
        assert notifier.next_flush == T0 + 30  # one group_wait after the first mail
        for t in (T0 + 6, T0 + 21, T0 + 29.9):
            await notifier.flush(t)
        assert len(collector.mails) == 1, "alerts following within group_wait wait for the next mail"
        await notifier.flush(T0 + 30)
        assert len(collector.mails) == 2
        assert mounts(collector.mails[1]) == ["/b", "/c"]
        # The mail at T0 + 30 opens a new group_wait: an alert at T0 + 40 goes out at T0 + 60.
        await notifier.notify([alert("/d", T0 + 40)], T0 + 40)
        assert len(collector.mails) == 2 and notifier.next_flush == T0 + 60
        await notifier.flush(T0 + 60)
        assert len(collector.mails) == 3 and mounts(collector.mails[2]) == ["/d"]
        # Quiet for a group_wait: the next alert leads again.
        await notifier.notify([alert("/e", T0 + 90)], T0 + 90)
        assert len(collector.mails) == 4 and mounts(collector.mails[3]) == ["/e"]

    asyncio.run(run())


def test_group_wait_is_counted_per_set_of_recipients(tmp_path):
    collector = MailCollector()
    notifier = notifier_for(tmp_path, collector, replace(AT_ONCE, group_wait=30.0))
    other = Rule(name="load-high", metric="load.1m", above=8, to=("dev@test.example",))

    async def run() -> None:
        await notifier.notify([alert("/a", T0)], T0)
        dev = AlertEvent("firing", other, (), 12.0, 8.0, ">", "warning", T0 + 5, T0 + 5, "load-high")
        await notifier.notify([dev], T0 + 5)
        assert [m.envelope.recipients for m in collector.mails] == [("ops@test.example",), ("dev@test.example",)]

    asyncio.run(run())


def test_a_new_critical_grouped_with_a_recovery_is_mailed_as_critical(tmp_path):
    collector = MailCollector()
    mem = Rule(name="a-mem", metric="memory.used_percent", above=90, severity="warning", to=("ops@test.example",))
    cpu = Rule(name="b-cpu", metric="cpu.percent", above=95, severity="critical", to=("ops@test.example",))
    recovery = AlertEvent("resolved", mem, (), 50.0, 90.0, ">", "warning", T0 - 600, T0, "a-mem")
    critical = AlertEvent("firing", cpu, (), 99.0, 95.0, ">", "critical", T0, T0, "b-cpu")
    asyncio.run(notifier_for(tmp_path, collector).notify([recovery, critical], T0))
    (mail,) = collector.mails
    assert mail.message["Subject"] == "[CRITICAL] web01: 1 firing, 1 resolved — b-cpu, a-mem"
    body = mail.message.get_body(("plain",)).get_content()
    assert body.index("FIRING: b-cpu") < body.index("RESOLVED: a-mem")


def test_also_route_queues_each_mail_once_more_on_its_own_route(tmp_path):
    from alertmail.queue.spool import Queue

    async def run() -> list[tuple[list[str] | None, bytes]]:
        queue = Queue(tmp_path / "queue", fsync=False)
        await queue.start()
        try:
            notifier = notifier_for(tmp_path, MailCollector(), mail=replace(MAIL, also_route=["alertmanager"]))
            notifier.queue = queue
            await notifier.notify([event("firing", T0)], T0)
            return [(e.route, queue.read_message(e.id)) for e in queue.entries()]
        finally:
            await queue.close()

    (first_route, first), (second_route, second) = asyncio.run(run())
    assert (first_route, second_route) == (["pickup"], ["alertmanager"]) and first == second


def test_also_route_names_are_checked_like_the_route(tmp_path):
    import pytest

    from alertmail.config.load import load_config
    from alertmail.config.schema import ConfigError

    config = tmp_path / "config.toml"
    config.write_text('[mail]\nroute = ["pickup"]\nalso_route = ["alertmanagr"]\n')
    with pytest.raises(
        ConfigError, match=r"mail\.also_route\[0\]: no transport named 'alertmanagr'; did you mean 'alertmanager'\?"
    ):
        load_config(config)
