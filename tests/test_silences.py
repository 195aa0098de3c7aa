"""Silences and maintenance windows: schedules across DST, matchers, the run-time file, the notifier's hold."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from alertmail.agent import silences_in_force
from alertmail.config.core import MailSettings
from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.notify.notifier import Notifier, NotifySettings
from alertmail.notify.runtime_silences import RuntimeSilences, SilenceSet
from alertmail.notify.silences import Cron, Silence, SilenceSettings, Span, Weekly, silence_from_settings
from alertmail.replay import MailCollector
from alertmail.rules.model import AlertEvent, Rule

UTC = dt.UTC


def at(text: str) -> float:
    """Epoch seconds of a UTC time written as "2026-03-29 01:00"."""
    return dt.datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def weekly(days: str, start: str, end: str, tz: str) -> Weekly:
    settings = SilenceSettings(days=days.split(","), start=start, end=end, timezone=tz)
    schedule = silence_from_settings(settings, index=0, default_tz="UTC").schedule
    assert isinstance(schedule, Weekly)
    return schedule


# -- schedules -------------------------------------------------------------------


def test_weekly_window_in_berlin_follows_the_wall_clock_on_the_spring_dst_day():
    window = weekly("sun", "02:00", "04:00", "Europe/Berlin")
    # A normal Sunday in winter: 02:00-04:00 CET is 01:00-03:00 UTC.
    assert not window.active(at("2026-03-22 00:59"))
    assert window.active(at("2026-03-22 01:00"))
    assert window.active(at("2026-03-22 02:59"))
    assert not window.active(at("2026-03-22 03:00"))
    # 2026-03-29: clocks jump from 02:00 CET to 03:00 CEST (01:00 UTC); the window is one hour long.
    assert not window.active(at("2026-03-29 00:59"))  # 01:59 CET
    assert window.active(at("2026-03-29 01:00"))  # 03:00 CEST
    assert window.active(at("2026-03-29 01:59"))  # 03:59 CEST
    assert not window.active(at("2026-03-29 02:00"))  # 04:00 CEST
    # A summer Sunday: 02:00-04:00 CEST is 00:00-02:00 UTC.
    assert window.active(at("2026-04-05 00:00"))
    assert not window.active(at("2026-04-05 02:00"))


def test_weekly_window_in_berlin_lasts_three_hours_on_the_autumn_dst_day():
    window = weekly("sun", "02:00", "04:00", "Europe/Berlin")
    # 2026-10-25: 03:00 CEST becomes 02:00 CET again (01:00 UTC); 02:00-04:00 local spans 00:00-03:00 UTC.
    assert not window.active(at("2026-10-24 23:59"))
    assert window.active(at("2026-10-25 00:00"))  # 02:00 CEST
    assert window.active(at("2026-10-25 01:30"))  # 02:30 CET, the second time round
    assert window.active(at("2026-10-25 02:59"))  # 03:59 CET
    assert not window.active(at("2026-10-25 03:00"))


def test_weekly_window_over_midnight_belongs_to_the_day_it_starts():
    window = weekly("fri", "22:00", "02:00", "UTC")
    assert not window.active(at("2026-11-27 21:59"))  # Friday
    assert window.active(at("2026-11-27 22:00"))
    assert window.active(at("2026-11-28 01:59"))  # Saturday morning: still Friday's window
    assert not window.active(at("2026-11-28 02:00"))
    assert not window.active(at("2026-11-28 22:30"))  # Saturday night has no window


def test_cron_window_in_new_york_moves_with_daylight_saving_time():
    window = Cron("0 9 * * mon-fri", 3600.0, "America/New_York")
    # Friday 2026-03-06, EST: 09:00-10:00 local is 14:00-15:00 UTC.
    assert not window.active(at("2026-03-06 13:30"))
    assert window.active(at("2026-03-06 14:00"))
    assert window.active(at("2026-03-06 14:59"))
    assert not window.active(at("2026-03-06 15:00"))
    # DST starts Sunday 2026-03-08. Monday 2026-03-09, EDT: 13:00-14:00 UTC.
    assert window.active(at("2026-03-09 13:30"))
    assert not window.active(at("2026-03-09 14:30"))
    # No window at the weekend.
    assert not window.active(at("2026-03-07 14:30"))
    assert not window.active(at("2026-03-08 13:30"))


def test_cron_window_longer_than_its_period_stays_active_between_starts():
    window = Cron("*/10 * * * *", 900.0, "UTC")
    assert all(window.active(at("2026-11-26 12:00") + s) for s in range(0, 3600, 60))


# -- matchers ------------------------------------------------------------------------


RULE = Rule(name="disk-full", metric="disk.used_percent", above=90, to=("ops@test.example",))
OTHER = Rule(name="load-high", metric="load.1m", above=8, to=("ops@test.example",))


def event(
    kind: str,
    rule: Rule = RULE,
    labels: dict | None = None,
    t: float = 0.0,
    *,
    incident: str = "",
    severity: str = "warning",
    state: str = "",
) -> AlertEvent:
    labels = labels if labels is not None else {"mount": "/data"}
    frozen = tuple(sorted(labels.items()))
    return AlertEvent(
        kind=kind,
        rule=rule,
        labels=frozen,
        value=95.0 if kind != "resolved" else 50.0,
        threshold=90.0,
        comparison=">",
        severity=severity,
        since=t,
        at=t,
        incident=incident or f"{rule.name}-{'-'.join(v for _, v in frozen)}",
        state=state,
    )


def test_silence_matches_rule_glob_labels_and_severity_all_together():
    always = Span(0, 1e12)
    silence = Silence("s1", always, rule="disk-*", labels={"mount": "/data*"}, severity=("warning",))
    assert silence.matches(event("firing", labels={"mount": "/data"}))
    assert silence.matches(event("firing", labels={"mount": "/data/archive", "device": "sdb1"}))
    assert not silence.matches(event("firing", labels={"mount": "/"}))
    assert not silence.matches(event("firing", labels={"device": "sdb1"}))  # the label is missing
    assert not silence.matches(event("firing", rule=OTHER))
    assert not silence.matches(event("firing", severity="critical"))


def test_exact_label_value_does_not_match_its_neighbour():
    silence = Silence("s1", Span(0, 1e12), labels={"mount": "/data"})
    assert silence.matches(event("firing", labels={"mount": "/data"}))
    assert not silence.matches(event("firing", labels={"mount": "/data2"}))


# -- config ----------------------------------------------------------------------------


def write_config(folder: Path, silences: str = "", notify: str = 'group_wait = "0s"') -> Path:
    path = folder / "config.toml"
    path.write_text(
        textwrap.dedent("""
        [agent]
        state_dir = "var"
        timezone = "Europe/Berlin"
        hostname = "web01"

        [mail]
        from = "alertmail@test.example"
        to = ["ops@test.example"]

        [notify]
        {notify}

        [[rules]]
        name = "disk-full"
        metric = "disk.used_percent"
        above = 90

        [[rules]]
        name = "load-high"
        metric = "load.1"
        above = 8
    """).format(notify=notify)
        + textwrap.dedent(silences)
    )
    return path


def test_config_silences_are_checked_and_every_problem_is_named(tmp_path):
    path = write_config(
        tmp_path,
        """
        [[silences]]
        days = ["sat", "caturday"]
        start = "25:00"
        end = "04:00"

        [[silences]]
        cron = "0 2 * * sat"

        [[silences]]
        cron = "not a cron"
        duration = "1h"

        [[silences]]
        rule = "disk-*"
        comment = "no schedule"

        [[silences]]
        days = ["sun"]
        start = "02:00"
        end = "03:00"
        timezone = "Mars/Olympus"
    """,
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "silences[0].days: unknown day 'caturday'" in text
    assert "silences[0].start: expected a time like" in text
    assert "silences[1].duration: a cron window needs a length" in text
    assert "silences[2].cron:" in text
    assert "silences[3]: no schedule" in text
    assert "silences[4].timezone: unknown IANA timezone 'Mars/Olympus'" in text


def test_config_silence_uses_the_agent_timezone_by_default(tmp_path):
    cfg = load_config(
        write_config(
            tmp_path,
            """
        [[silences]]
        rule = "disk-*"
        days = ["sat", "sun"]
        start = "02:00"
        end = "04:00"
        comment = "backups"
    """,
        )
    )
    (silence,) = silences_in_force(cfg).config_silences
    assert silence.schedule == Weekly(frozenset({5, 6}), 120, 240, "Europe/Berlin")
    assert silence.comment == "backups"


# -- the notifier holds silenced alerts -------------------------------------------------


AT_ONCE = NotifySettings(group_wait=0.0, max_mails_per_hour=0)
MAIL = MailSettings(sender="alertmail@test.example", route=["pickup"])


def notifier_for(state_dir: Path, silences: SilenceSet) -> tuple[Notifier, MailCollector]:
    collector = MailCollector()
    notifier = Notifier(
        notify=AT_ONCE,
        mail=MAIL,
        hostname="web01",
        timezone="UTC",
        queue=collector,
        state_dir=state_dir,
        silences=silences,
        render_options={"charts": "off"},
    )
    return notifier, collector


def window_silence(start: float, end: float, **matchers) -> SilenceSet:
    return SilenceSet([Silence("config-0", Span(start, end), **matchers)])


T0 = at("2026-11-26 12:00")


def kinds(collector: MailCollector) -> list[str]:
    return [str(m.message["X-Alertmail-Kind"]) for m in collector.mails]


def test_alert_still_firing_when_the_window_ends_sends_exactly_one_mail(tmp_path):
    notifier, collector = notifier_for(tmp_path, window_silence(T0, T0 + 3600, rule="disk-*"))

    async def run():
        await notifier.notify([event("firing", t=T0 + 60)], T0 + 60)
        await notifier.notify([event("reminder", t=T0 + 1800)], T0 + 1800)
        for t in range(int(T0 + 61), int(T0 + 3600), 300):
            await notifier.flush(t)
        assert collector.mails == []
        await notifier.flush(T0 + 3600)
        await notifier.flush(T0 + 3601)
        await notifier.flush(T0 + 7200)

    asyncio.run(run())
    assert kinds(collector) == ["firing"]
    msg = collector.mails[0].message
    assert "FIRING" in msg.get_body(("plain",)).get_content()
    assert collector.mails[0].at == T0 + 3600


def test_reminder_arriving_as_the_window_ends_joins_the_one_mail(tmp_path):
    notifier, collector = notifier_for(tmp_path, window_silence(T0, T0 + 3600))

    async def run():
        await notifier.notify([event("firing", t=T0 + 60)], T0 + 60)
        await notifier.notify([event("reminder", t=T0 + 3600)], T0 + 3600)

    asyncio.run(run())
    assert kinds(collector) == ["firing"]


def test_alert_that_resolves_inside_the_window_sends_nothing_at_all(tmp_path):
    notifier, collector = notifier_for(tmp_path, window_silence(T0, T0 + 3600))

    async def run():
        await notifier.notify([event("firing", t=T0 + 60)], T0 + 60)
        await notifier.notify([event("resolved", t=T0 + 600)], T0 + 600)
        await notifier.flush(T0 + 3600)
        await notifier.flush(T0 + 7200)

    asyncio.run(run())
    assert collector.mails == []
    journal = [json.loads(line) for line in (tmp_path / "logs" / "alerts.jsonl").read_text().splitlines()]
    assert [(j["kind"], j["fate"]) for j in journal] == [("firing", "silenced:config-0"), ("resolved", "silenced:config-0")]


def test_recovery_of_an_incident_mailed_before_the_window_is_still_sent_and_threaded(tmp_path):
    notifier, collector = notifier_for(tmp_path, window_silence(T0, T0 + 3600))

    async def run():
        await notifier.notify([event("firing", t=T0 - 600)], T0 - 600)
        await notifier.notify([event("reminder", t=T0 + 60)], T0 + 60)  # held
        await notifier.notify([event("resolved", t=T0 + 600)], T0 + 600)
        await notifier.flush(T0 + 7200)

    asyncio.run(run())
    assert kinds(collector) == ["firing", "resolved"]
    first, recovery = (m.message for m in collector.mails)
    assert recovery["In-Reply-To"] == first["Message-ID"]


def test_held_alert_survives_a_restart_and_is_mailed_when_the_window_ends(tmp_path):
    silences = window_silence(T0, T0 + 3600)
    notifier, collector = notifier_for(tmp_path, silences)
    asyncio.run(notifier.notify([event("firing", t=T0 + 60)], T0 + 60))
    assert collector.mails == []

    restarted, collector = notifier_for(tmp_path, silences)
    # The agent hands over the configured rules: the held alert is mailed with the rule as configured now.
    restarted.apply(AT_ONCE, MAIL, hostname="web01", timezone="UTC", rules=[replace(RULE, description="swap the disk in bay 3")])
    asyncio.run(restarted.flush(T0 + 3700))
    assert kinds(collector) == ["firing"]
    assert collector.mails[0].message["X-Alertmail-Incident"] == "disk-full-/data"
    assert "swap the disk in bay 3" in collector.mails[0].message.get_body(("plain",)).get_content()


def test_neighbouring_label_set_is_mailed_while_its_neighbour_is_silenced(tmp_path):
    notifier, collector = notifier_for(tmp_path, window_silence(T0, T0 + 3600, labels={"mount": "/data"}))
    asyncio.run(
        notifier.notify(
            [event("firing", labels={"mount": "/data"}, t=T0 + 1), event("firing", labels={"mount": "/data2"}, t=T0 + 1)], T0 + 1
        )
    )
    assert len(collector.mails) == 1
    assert "mount=/data2" in collector.mails[0].message.get_body(("plain",)).get_content()


# -- run-time silences: the CLI, the file, a restart -------------------------------------


@pytest.fixture
def cli_main(tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "alertmail", *args], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )

    return run


def test_silence_added_from_the_cli_survives_a_restart_and_suppresses_exactly_what_it_matches(tmp_path, cli_main):
    config = write_config(tmp_path)
    added = cli_main(
        "silence",
        "add",
        "--config",
        str(config),
        "--rule",
        "disk-full",
        "--labels",
        "mount=/data",
        "--for",
        "2h",
        "--comment",
        "replacing the disk",
    )
    assert added.returncode == 0, added.stderr
    silence_id = added.stdout.split()[0]

    # The file is TOML a person can read.
    text = (tmp_path / "var" / "silences.toml").read_text()
    assert f'id = "{silence_id}"' in text and 'comment = "replacing the disk"' in text and 'mount = "/data"' in text

    listed = cli_main("silence", "list", "--config", str(config), "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == silence_id and row["active"] and row["source"] == "cli"

    # A fresh agent (new notifier reading state_dir, as after a restart) honours it.
    cfg = load_config(config)
    notifier, collector = notifier_for(Path(cfg.state_dir), silences_in_force(cfg))
    now = time.time()
    asyncio.run(
        notifier.notify(
            [
                event("firing", labels={"mount": "/data"}, t=now),
                event("firing", labels={"mount": "/data2"}, t=now),
                event("firing", rule=OTHER, labels={"mount": "/data"}, t=now),
            ],
            now,
        )
    )
    mailed = sorted(i for m in collector.mails for i in str(m.message["X-Alertmail-Incident"]).split())
    assert mailed == sorted(["disk-full-/data2", "load-high-/data"])
    assert list(notifier.held) == ["disk-full-/data"]

    removed = cli_main("silence", "remove", "--config", str(config), silence_id)
    assert removed.returncode == 0, removed.stderr
    assert RuntimeSilences(cfg.state_dir).read() == []


def test_silence_add_refuses_to_silence_everything_by_accident(tmp_path, cli_main):
    config = write_config(tmp_path)
    result = cli_main("silence", "add", "--config", str(config), "--for", "1h")
    assert result.returncode == 64
    assert "--rule '*'" in result.stderr


def test_running_notifier_picks_up_a_silence_added_after_it_started(tmp_path):
    silences = SilenceSet([], tmp_path)
    notifier, collector = notifier_for(tmp_path, silences)
    asyncio.run(notifier.flush(T0))  # reads the (missing) file once
    RuntimeSilences(tmp_path).add(duration=3600, rule="disk-full", now=T0)
    asyncio.run(notifier.notify([event("firing", t=T0 + 10)], T0 + 10))
    assert collector.mails == []
    asyncio.run(notifier.flush(T0 + 3601))
    assert kinds(collector) == ["firing"]


def test_expired_run_time_silences_are_pruned(tmp_path):
    runtime = RuntimeSilences(tmp_path)
    old = runtime.add(duration=60, rule="disk-full", now=T0)
    new = runtime.add(duration=7200, rule="load-high", now=T0 + 120)  # the add prunes the expired one
    assert [s.id for s in runtime.read()] == [new.id]
    assert runtime.remove(old.id, now=T0 + 130) is False
    assert runtime.prune(now=T0 + 99999) == 1
    assert runtime.read() == []


def test_unreadable_run_time_file_keeps_the_silences_read_before(tmp_path, caplog):
    silences = SilenceSet([], tmp_path)
    RuntimeSilences(tmp_path).add(duration=3600, rule="disk-full", now=T0)
    silences.refresh(T0)
    assert len(silences.runtime_silences) == 1
    (tmp_path / "silences.toml").write_text("[[silences]\nbroken")
    silences.refresh(T0 + 1)
    assert len(silences.runtime_silences) == 1
    assert "not valid TOML" in caplog.text


def write_agent_config(folder: Path) -> Path:
    """An agent whose one probe reads its value from a file (the end-to-end tests' gauge plugin)."""
    from tests.gauge import install_gauge
    from tests.probe_agent import write_config as write_probe_config
    from tests.test_agent_e2e import HOSTILE

    install_gauge(folder, labels=HOSTILE)
    return write_probe_config(
        folder,
        """
        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        """,
        agent='plugin_dirs = ["plugins.d"]',
    )


def test_running_agent_holds_alerts_under_a_cli_silence_and_mails_once_when_it_is_removed(tmp_path, cli_main):
    from tests.test_agent_e2e import pickup_mails, start_agent, stop_agent, wait_for

    config = write_agent_config(tmp_path)
    journal = tmp_path / "var" / "logs" / "alerts.jsonl"
    proc = start_agent(config)
    try:
        added = cli_main("silence", "add", "--config", str(config), "--rule", "gauge-*", "--for", "1h", "--comment", "disk swap")
        assert added.returncode == 0, added.stderr
        (tmp_path / "plugins.d" / "value.txt").write_text("93.4")
        wait_for(lambda: journal.exists() and '"fate":"silenced:' in journal.read_text(), what="a silenced alert")
        assert pickup_mails(tmp_path) == []
        removed = cli_main("silence", "remove", "--config", str(config), added.stdout.split()[0])
        assert removed.returncode == 0, removed.stderr
        wait_for(lambda: pickup_mails(tmp_path), what="the mail after the silence")
    finally:
        log = stop_agent(proc)
    assert proc.returncode == 0, log
    assert [m["X-Alertmail-Kind"] for m in pickup_mails(tmp_path)] == ["firing"]
