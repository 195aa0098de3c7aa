"""Storm control: a per-recipient cap per rolling hour, digests for the overflow, nothing dropped."""

from __future__ import annotations

import asyncio
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from alertmail.config.core import MailSettings
from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.notify.notifier import NotifySettings
from alertmail.notify.storm import StormGuard
from alertmail.probes.samples import read_samples
from alertmail.render.digest import MAX_ROWS
from alertmail.replay import replay
from alertmail.rules.model import Rule

DATA = Path(__file__).parent / "data"
OPS = "ops@test.example"
DISK = Rule(name="disk-full", metric="disk.used_percent", above=90, to=(OPS,))
# The storm cap as it ships; every alert mailed as it comes (no group_wait), so the cap alone decides.
CAP = NotifySettings(group_wait=0.0, max_mails_per_hour=10, digest_interval=900.0)


def body(mail) -> str:
    return mail.message.get_body(("plain",)).get_content()


def max_in_any_hour(times: list[float]) -> int:
    times = sorted(times)
    return max((sum(1 for u in times if t - 3600 < u <= t) for t in times), default=0)


def test_200_alert_burst_yields_at_most_the_capped_number_of_mails_with_every_event_accounted_for():
    samples = read_samples(DATA / "burst.csv")
    assert len(samples) == 200
    result = asyncio.run(replay(samples, [DISK], notify=CAP))

    assert len(result.events) == 200
    assert 1 < len(result.mails) <= 10
    assert max_in_any_hour([m.at for m in result.mails]) <= 10
    digests = [m for m in result.mails if m.message["X-Alertmail-Kind"] == "digest"]
    assert digests, "the overflow went into a digest"
    text = body(digests[0])
    assert "folded" in text and "none was dropped" in text
    folded = int(digests[0].message["X-Alertmail-Digest"])
    # The digest lists the first MAX_ROWS events and counts the rest, naming the journal that has each.
    assert folded > MAX_ROWS
    assert f"... and {folded - MAX_ROWS} more events ({folded - MAX_ROWS} firing), not listed here." in text
    assert "logs/alerts.jsonl" in text
    in_digests = {line["labels"]["mount"] for line in result.timeline if str(line.get("fate", "")).startswith("digest:")}
    listed = "\n".join(body(m) for m in result.mails)
    for i in range(200):
        mount = f"/srv/vol{i:03d}"
        assert f"mount={mount}" in listed or mount in in_digests, f"event {i} is in no mail and no digest"
    # A digest row has state, severity, time, rule, labels and the value against the threshold.
    row = next(line for line in text.splitlines() if "mount=/srv/vol006" in line)
    assert row.split() == [
        "FIRING",
        "warning",
        "13:00",
        "UTC",
        "disk-full",
        "[mount=/srv/vol006]",
        "disk.used_percent",
        "97",
        ">",
        "90",
    ]


def test_digest_comes_one_interval_after_the_last_separate_mail():
    result = asyncio.run(replay(read_samples(DATA / "burst.csv"), [DISK], notify=CAP))
    separate = [m for m in result.mails if m.message["X-Alertmail-Kind"] != "digest"]
    digests = [m for m in result.mails if m.message["X-Alertmail-Kind"] == "digest"]
    assert len(separate) == 6  # 10 per hour minus room for 4 digests (one per 15 min)
    assert digests[0].at == separate[-1].at + 900


def test_a_long_storm_never_exceeds_the_cap_in_any_rolling_hour():
    guard = StormGuard(10, 600.0)
    sent: list[float] = []
    folded = 0
    now = 0.0
    while now < 4 * 3600:  # an event every 20 s for four hours
        if guard.allows(OPS, now):
            guard.sent([OPS], now)
            sent.append(now)
        else:
            guard.fold(OPS, ["event"], now)  # type: ignore[list-item]
            folded += 1
        for _, backlog in guard.due(now):
            sent.append(now)
            folded -= len(backlog.events)
        now += 20
    for _, backlog in guard.due(now, force=True):
        sent.append(now)
        folded -= len(backlog.events)
    assert folded == 0
    assert max_in_any_hour(sent[:-1]) <= 10  # the forced last digest is the shutdown exception
    assert len(sent) > 20


def test_no_cap_mails_every_group():
    result = asyncio.run(replay(read_samples(DATA / "burst.csv")[:30], [DISK], notify=replace(CAP, max_mails_per_hour=0)))
    assert len(result.mails) == 30
    assert all(m.message["X-Alertmail-Kind"] == "firing" for m in result.mails)


def test_recipient_under_the_cap_still_gets_separate_mails_while_another_is_folded():
    quiet = Rule(name="load-high", metric="load.1m", above=8, to=("dev@test.example",))
    samples = read_samples(DATA / "burst.csv")
    from alertmail.model import Sample

    late = samples[-1].timestamp + 1
    samples.append(Sample("load.1m", 12.0, {}, late))
    result = asyncio.run(replay(samples, [DISK, quiet], notify=CAP))
    dev = [m for m in result.mails if m.envelope.recipients == ("dev@test.example",)]
    assert len(dev) == 1 and dev[0].message["X-Alertmail-Kind"] == "firing"
    assert dev[0].at == late


def test_cap_too_small_for_its_digests_is_a_config_error(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(
        textwrap.dedent("""
        [mail]
        to = ["ops@test.example"]

        [notify]
        max_mails_per_hour = 4
        digest_interval = "15m"
    """)
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "notify.max_mails_per_hour: max_mails_per_hour = 4 leaves no room" in str(info.value)


def test_notify_does_not_wait_for_a_flush_that_is_still_queueing(tmp_path):
    from alertmail.notify.notifier import Notifier
    from alertmail.rules.model import AlertEvent

    class SlowQueue:
        def __init__(self) -> None:
            self.release = asyncio.Event()
            self.mails: list[bytes] = []

        async def put(self, data, envelope, *, route=None, origin="agent"):
            await self.release.wait()
            self.mails.append(data)
            return f"m{len(self.mails)}"

    def firing(name: str, t: float) -> AlertEvent:
        return AlertEvent(
            kind="firing",
            rule=DISK,
            labels=(("mount", name),),
            value=95.0,
            threshold=90.0,
            comparison=">",
            severity="warning",
            since=t,
            at=t,
            incident=name,
        )

    async def run() -> SlowQueue:
        queue = SlowQueue()
        notifier = Notifier(
            notify=NotifySettings(group_wait=0.0, max_mails_per_hour=0),
            mail=MailSettings(sender="alertmail@test.example", route=["pickup"]),
            hostname="web01",
            timezone="UTC",
            queue=queue,
            state_dir=tmp_path,
            render_options={"charts": "off"},
        )
        first = asyncio.create_task(notifier.notify([firing("/a", 0.0)], 0.0))
        while not notifier._lock.locked():
            await asyncio.sleep(0)
        # A probe's events arrive while the first mail waits for the queue: they are taken, not blocked on.
        await asyncio.wait_for(notifier.notify([firing("/b", 1.0)], 1.0), timeout=5)
        assert len(queue.mails) == 0
        queue.release.set()
        await first
        await notifier.flush(2.0)  # the next tick sends what came meanwhile
        return queue

    queue = asyncio.run(run())
    assert len(queue.mails) == 2
