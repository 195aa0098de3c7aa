"""The heartbeat: what the "still watching" mail says, and when it is scheduled."""

from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import re
import textwrap
import types
import zoneinfo
from pathlib import Path

import pytest

from alertmail.config.core import MailSettings
from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.model import Envelope
from alertmail.notify.heartbeat import SECTION, Heartbeat, HeartbeatSettings, mail_outcomes, queue_figures, schedule, summarise
from alertmail.notify.journal import Journal
from alertmail.notify.notifier import Notifier, NotifySettings
from alertmail.notify.runtime_silences import RuntimeSilences, SilenceSet
from alertmail.rules.model import AlertEvent, Rule

OPS = "ops@test.example"
DISK = Rule(name="disk-full", metric="disk.used_percent", above=90, to=(OPS,))
LOAD = Rule(name="load-high", metric="load.1m", above=8, to=(OPS,))
DAY = 86400.0
END = dt.datetime(2026, 11, 27, 8, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")).timestamp()
START = END - DAY


def event(kind: str, rule: Rule, t: float, incident: str, labels: tuple = (("mount", "/"),)) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=rule,
        labels=labels,
        value=95.0,
        threshold=90.0,
        comparison=">",
        severity="warning",
        since=t,
        at=t,
        incident=incident,
    )


def test_summary_counts_events_and_firing_time_within_the_period_only():
    lines = [
        # disk-full fired an hour before the period and resolved 30 minutes into it.
        {"t": START - 3600, "kind": "firing", "rule": "disk-full", "incident": "a", "fate": "notified"},
        {"t": START + 1800, "kind": "resolved", "rule": "disk-full", "incident": "a", "fate": "notified"},
        # load-high fired 2 h before the end and still fires; one of its reminders was silenced.
        {"t": END - 7200, "kind": "firing", "rule": "load-high", "incident": "b", "fate": "notified"},
        {"t": END - 3600, "kind": "reminder", "rule": "load-high", "incident": "b", "fate": "silenced:x"},
        {"t": END - 3000, "kind": "firing", "rule": "load-high", "incident": "b", "fate": "released"},
        {"t": START + 60, "mail": "[WARNING] ...", "to": [OPS], "kind": "alert"},
        {"t": START + 90, "mail": "[DIGEST] ...", "to": [OPS], "kind": "digest"},
        {"t": END + 10, "kind": "firing", "rule": "late", "incident": "c", "fate": "notified"},
    ]
    summary = summarise(lines, START, END)
    disk, load = summary.rules["disk-full"], summary.rules["load-high"]
    assert disk.firing_seconds == 1800 and disk.incidents == 0 and disk.open == 0
    assert disk.events == {"resolved": 1}
    assert load.firing_seconds == 7200 and load.incidents == 1 and load.open == 1
    assert load.events == {"firing": 1, "reminder": 1}
    assert "late" not in summary.rules
    assert summary.silenced == 1 and summary.events == 3
    assert summary.mails == {"alert": 1, "digest": 1}


def web01_notifier(queue, state_dir: Path) -> Notifier:
    """The notifier of host web01 (Europe/Berlin, mail into the pickup route, no charts)."""
    return Notifier(
        notify=NotifySettings(group_wait=0.0, max_mails_per_hour=0),
        mail=MailSettings(sender="alertmail@test.example", to=[OPS], route=["pickup"]),
        hostname="web01",
        timezone="Europe/Berlin",
        queue=queue,
        state_dir=state_dir,
        silences=SilenceSet([], state_dir),
        render_options={"charts": "off"},
    )


def test_heartbeat_mail_summarises_alerts_silences_and_the_queue(tmp_path):
    async def run():
        from alertmail.queue.spool import Queue

        # The queue's clock follows the test's calendar: each mail is queued when it is notified.
        now = [START]
        queue = Queue(tmp_path / "queue", fsync=False, clock=lambda: now[0])
        await queue.start()
        try:
            RuntimeSilences(tmp_path).add(duration=DAY, rule="load-*", comment="kernel update", now=END - 600)
            notifier = web01_notifier(queue, tmp_path)
            for now[0], ev in (
                (START + 3600, event("firing", DISK, START + 3600, "d1")),
                (START + 3600 + 754, event("resolved", DISK, START + 3600 + 754, "d1")),
                (END - 300, event("firing", LOAD, END - 300, "l1")),
            ):  # the last is silenced
                await notifier.notify([ev], now[0])
            now[0] = END
            heartbeat = Heartbeat(
                settings=HeartbeatSettings(every=DAY),
                notifier=notifier,
                queue=queue,
                badmail_folder=tmp_path / "badmail",
            )
            msg_id = await heartbeat.send(END)
            return queue, msg_id
        finally:
            await queue.close()

    queue, msg_id = asyncio.run(run())
    msg = email.message_from_bytes(queue.read_message(msg_id), policy=email.policy.default)
    text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert msg["Subject"] == "[OK] web01: alertmail still watching — 3 alert events, 1 firing now"
    assert msg["To"].addresses[0].addr_spec == OPS and msg["X-Alertmail-Kind"] == "heartbeat"
    assert msg["Auto-Submitted"] == "auto-generated"
    assert text.splitlines()[:2] == [
        "Still watching web01: 1 alert firing now",
        "This mail comes every 1d; if it stops coming, the agent or its mail path is down.",
    ]
    facts = dict(line.split(":", 1) for line in text.split("\n\n")[1].splitlines())
    assert {k: v.strip() for k, v in facts.items()} == {
        "Period": "2026-11-26 08:00 CET to 2026-11-27 08:00 CET",
        "Alerts": "3 events, 1 of them held back by silences",
        "Firing now": "1 (load-high)",
        "Mails": "2 queued in the period (2 alert): 0 delivered, 2 waiting, 0 given up",  # nothing delivers here
        "Queue": "2 waiting (0 deferred, oldest 23h); given up (badmail) in the period: 0",
        "Accepted": "2 messages into the queue since the agent started",
        "Silences": "1 in force now",
    }
    disk = next(line for line in text.splitlines() if line.strip().startswith("disk-full"))
    assert disk.split()[1:4] == ["1", "12m34s", "0"]
    load = next(line for line in text.splitlines() if line.strip().startswith("load-high"))
    assert load.split()[1:4] == ["1", "5m", "1"]
    assert text.index("load-high") < text.index("disk-full")  # what still fires leads
    assert "rule=load-*" in text and "kernel update" in text
    html = msg.get_body(("html",)).get_content()
    assert "Still watching web01: 1 alert firing now" in html and "kernel update" in html
    assert len(re.findall(r'<tr class="am-row">', html)) == 2


def test_queue_figures_count_deferred_messages_and_badmail_in_the_period(tmp_path):
    async def run():
        from alertmail.queue.spool import Queue

        queue = Queue(tmp_path / "queue", fsync=False)
        await queue.start()
        try:
            first = await queue.put(b"Subject: a\r\n\r\nx\r\n", Envelope("a@test.example", (OPS,)))
            await queue.put(b"Subject: b\r\n\r\nx\r\n", Envelope("a@test.example", (OPS,)))
            entry = queue.get(first)
            entry.attempts, entry.last_error = 2, "451 4.3.0 try later"
            await queue.update(entry)
            return queue_figures(queue, tmp_path / "badmail", START, entry.created + 60)
        finally:
            await queue.close()

    figures = asyncio.run(run())
    assert figures["queued"] == 2 and figures["deferred"] == 1
    assert figures["last_error"] == "451 4.3.0 try later"
    assert 59 <= figures["oldest_seconds"] <= 61
    assert figures["badmail"] == 0 and figures["accepted_since_start"] == 2


def write_config(folder: Path, heartbeat: str) -> Path:
    path = folder / "config.toml"
    path.write_text(
        textwrap.dedent("""
        [agent]
        state_dir = "var"
        timezone = "Europe/Berlin"

        [mail]
        to = ["ops@test.example"]

        [heartbeat]
    """)
        + textwrap.dedent(heartbeat)
    )
    return path


def agent_of(cfg, state_dir: Path) -> types.SimpleNamespace:
    """What ``schedule`` reads of the agent: its notifier's [mail] and timezone, its queue and folder."""
    notifier = types.SimpleNamespace(mail=cfg.mail, timezone=cfg.agent.timezone)
    return types.SimpleNamespace(notifier=notifier, queue=None, state_dir=state_dir)


def test_daily_heartbeat_is_scheduled_at_its_local_time(tmp_path):
    cfg = load_config(write_config(tmp_path, 'every = "1d"\nat = "08:30"\n'))
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    heartbeat = schedule(scheduler, agent_of(cfg, tmp_path), cfg.section(SECTION))
    assert heartbeat is not None and heartbeat.to == [OPS]
    job = scheduler.get_job("heartbeat")
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    # Across the autumn DST change it stays at 08:30 local.
    after = dt.datetime(2026, 10, 24, 12, 0, tzinfo=zone)
    fire = job.trigger.get_next_fire_time(None, after)
    assert fire == dt.datetime(2026, 10, 25, 8, 30, tzinfo=zone)
    assert fire.utcoffset() == dt.timedelta(hours=1)


def test_weekly_heartbeat_runs_on_its_day(tmp_path):
    cfg = load_config(write_config(tmp_path, 'every = "7d"\nday = "fri"\nto = ["boss@test.example"]\n'))
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    heartbeat = schedule(scheduler, agent_of(cfg, tmp_path), cfg.section(SECTION))
    assert heartbeat.to == ["boss@test.example"]
    zone = zoneinfo.ZoneInfo("Europe/Berlin")
    fire = scheduler.get_job("heartbeat").trigger.get_next_fire_time(None, dt.datetime(2026, 11, 26, 9, 0, tzinfo=zone))
    assert fire == dt.datetime(2026, 11, 27, 8, 0, tzinfo=zone)


def test_no_heartbeat_section_schedules_nothing(tmp_path):
    cfg = load_config(write_config(tmp_path, ""))
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler = BackgroundScheduler(timezone="UTC")
    assert schedule(scheduler, agent_of(cfg, tmp_path), cfg.section(SECTION)) is None
    assert scheduler.get_jobs() == []


def test_heartbeat_config_mistakes_are_reported(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, 'every = "30s"\nat = "8am"\nday = "someday"\n'))
    text = str(info.value)
    assert "heartbeat.at: expected a time like \"08:00\", got '8am'" in text
    assert "heartbeat.every: a heartbeat more often than every minute is noise" in text
    assert "heartbeat.day: expected one of" in text


def test_journal_rotates_and_reads_both_files(tmp_path, monkeypatch):
    import alertmail.notify.journal as hb

    monkeypatch.setattr(hb, "ROTATE_AT", 200)
    journal = Journal(tmp_path / "alerts.jsonl")
    for i in range(10):
        journal.mail(f"mail {i}", [OPS], "alert", float(i))
    assert (tmp_path / "alerts.jsonl.1").exists()
    read = journal.read(since=0.0)
    assert [line["t"] for line in read] == sorted(line["t"] for line in read)
    assert read[-1]["mail"] == "mail 9"
    assert len(journal.read(since=8.0)) == 2


def test_mail_outcomes_tell_delivered_waiting_and_given_up_apart(tmp_path):
    queue = types.SimpleNamespace(get=lambda msg_id: object() if msg_id == "waiting1" else None)
    (tmp_path / "badmail").mkdir()
    (tmp_path / "badmail" / "failed1.bad").write_bytes(b"x")
    ids = ["waiting1", "failed1", "gone1", "gone2"]
    assert mail_outcomes(ids, queue, tmp_path / "badmail") == {"delivered": 2, "waiting": 1, "failed": 1}


def test_missed_runs_are_counted_since_the_previous_heartbeat_and_a_reload_keeps_that(tmp_path):
    """The agent counts missed probe runs from its start; each heartbeat tells only the new ones."""
    cfg = load_config(write_config(tmp_path, 'every = "1d"\n'))
    from apscheduler.schedulers.background import BackgroundScheduler

    from alertmail.queue.spool import Queue

    async def run() -> list[str]:
        queue = Queue(tmp_path / "queue", fsync=False)
        await queue.start()
        try:
            notifier = web01_notifier(queue, tmp_path)
            agent = types.SimpleNamespace(
                cfg=cfg,
                notifier=notifier,
                queue=queue,
                state_dir=tmp_path,
                probes={"disk": (None, 60.0, 10.0), "cpu": (None, 10.0, 5.0)},
                rules=[DISK],
                missed={"disk": 2},
            )
            scheduler = BackgroundScheduler(timezone="UTC")
            ids = [await schedule(scheduler, agent, cfg.section(SECTION)).send(START)]
            agent.missed.update(disk=5, cpu=1)
            ids.append(
                await schedule(scheduler, agent, cfg.section(SECTION)).send(END)
            )  # a reload replaced the heartbeat in between
            ids.append(await scheduler.get_job("heartbeat").func(END + DAY))  # nothing missed since
            return [queue.read_message(i).decode() for i in ids]
        finally:
            await queue.close()

    def missed(raw: str) -> str | None:
        msg = email.message_from_string(raw, policy=email.policy.default)
        text = msg.get_body(("plain",)).get_content().replace("\r\n", "\n")
        lines = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Missed runs:")]
        return lines[0] if lines else None

    first, second, third = (missed(raw) for raw in asyncio.run(run()))
    assert first == "disk 2 since the agent started: runs the agent was too stalled to start on time"
    assert (
        second
        == "cpu 1, disk 3 since the previous heartbeat (Thu 26 Nov 08:00 CET): runs the agent was too stalled to start on time"
    )
    assert third is None
