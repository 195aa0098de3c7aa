"""The notifier's incident records across a restart."""

from __future__ import annotations

import asyncio
import json

from alertmail.notify.notifier import Notifier
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


def notifier_for(state_dir, collector: MailCollector) -> Notifier:
    return Notifier(
        sender="alertmail@test.example",
        hostname="web01",
        timezone="UTC",
        route=["pickup"],
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
