"""What the notifier keeps of an event across a restart (a recovery held by a silence)."""

from __future__ import annotations

import json

from alertmail.notify.incidents import event_from_json, event_to_json
from alertmail.rules.model import AlertEvent, Rule

RULE = Rule("disk-full", "disk.used_percent", above=99, severity="critical", runbook="https://wiki.example.com/disk")


def resolved() -> AlertEvent:
    return AlertEvent(
        kind="resolved",
        rule=RULE,
        labels=(("mount", "/"),),
        value=2.1,
        threshold=99.0,
        comparison="<",
        severity="critical",
        since=100.0,
        at=200.0,
        incident="abc",
        fired_at=110.0,
        state="ok",
        reason="resolved by a configuration change: the rule now recovers below 99 (it was 1)",
    )


def test_a_held_recovery_keeps_its_reason_through_the_state_file():
    saved = json.loads(json.dumps(event_to_json(resolved())))
    back = event_from_json(saved, {RULE.name: RULE})
    assert back.reason == resolved().reason
    assert back == resolved()


def test_an_event_of_a_rule_since_removed_keeps_its_runbook():
    saved = json.loads(json.dumps(event_to_json(resolved())))
    back = event_from_json(saved, {})  # the rule is gone from the config
    assert back.rule.runbook == "https://wiki.example.com/disk"
    assert back.reason.startswith("resolved by a configuration change")


def test_state_written_before_reasons_existed_still_loads():
    saved = event_to_json(resolved())
    del saved["reason"], saved["rule"]["runbook"]
    back = event_from_json(saved, {})
    assert back.reason == "" and back.rule.runbook == ""
