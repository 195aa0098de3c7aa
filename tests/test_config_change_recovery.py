"""A recovery caused by a reload that moved the recovery line says so: never "back below 1" over a chart at 2.1."""

from __future__ import annotations

import email
import email.policy
import time

from alertmail.model import Sample
from alertmail.render.mail import text_body
from alertmail.render.view import RenderContext, condition, subject
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import Rule
from alertmail.rules.wire import event_fields
from tests.test_reload import Agent, config_text

OPS = ("ops@example.test",)


def reloaded(before: Rule, after: Rule, value: float) -> list:
    """Fire ``before`` at 2.1, carry the state into an engine with ``after`` as a reload does, then feed ``value``."""
    engine = RuleEngine([before])
    assert [e.kind for e in engine.observe([Sample("m", 2.1, {}, 0)], 0)] == ["firing"]
    fresh = RuleEngine([after])
    fresh.restore(engine.snapshot())
    return fresh.observe([Sample("m", value, {}, 10)], 10)


def test_a_raised_threshold_resolves_with_the_reason_and_no_false_comparison():
    events = reloaded(Rule("r", "m", above=1, to=OPS), Rule("r", "m", above=99, to=OPS), 2.1)
    assert [e.kind for e in events] == ["resolved"]
    event = events[0]
    assert event.reason == "resolved by a configuration change: the rule now recovers below 99 (it was 1)"
    assert event_fields(event)["reason"] == event.reason
    line = condition(event)
    assert line == "m 2.1, resolved by a configuration change: the rule now recovers below 99 (it was 1)"
    assert "back below" not in line
    ctx = RenderContext(hostname="web01")
    assert "resolved by a configuration change" in subject(events, ctx)
    assert "resolved by a configuration change" in text_body(events, ctx)


def test_a_value_that_fell_below_the_old_line_too_is_a_plain_recovery():
    events = reloaded(Rule("r", "m", above=1, to=OPS), Rule("r", "m", above=99, to=OPS), 0.5)
    assert [e.kind for e in events] == ["resolved"] and events[0].reason == ""
    assert condition(events[0]) == "m 0.5, back below 1"  # true of the line it fired on, and of the new one


def test_a_moved_clear_line_counts_as_a_configuration_change_and_a_below_rule_says_above():
    events = reloaded(Rule("r", "m", above=2, clear=1, to=OPS), Rule("r", "m", above=2.5, clear=2.2, to=OPS), 2.1)
    assert events[0].reason.endswith("recovers below 2.2 (it was 1)")
    below = RuleEngine([Rule("r", "m", below=5, to=OPS)])
    below.observe([Sample("m", 2.1, {}, 0)], 0)
    fresh = RuleEngine([Rule("r", "m", below=1, to=OPS)])
    fresh.restore(below.snapshot())
    events = fresh.observe([Sample("m", 2.1, {}, 10)], 10)
    assert events[0].reason == "resolved by a configuration change: the rule now recovers above 1 (it was 5)"


def test_an_unchanged_rule_never_gives_a_reason():
    engine = RuleEngine([Rule("r", "m", above=1, to=OPS)])
    engine.observe([Sample("m", 2.1, {}, 0)], 0)
    fresh = RuleEngine([Rule("r", "m", above=1, to=OPS)])
    fresh.restore(engine.snapshot())
    assert fresh.observe([Sample("m", 2.1, {}, 10)], 10) == []
    assert fresh.observe([Sample("m", 0.5, {}, 20)], 20)[0].reason == ""


def mails(folder) -> list[email.message.EmailMessage]:
    out = []
    for path in sorted((folder / "var" / "pickup").glob("*.eml")):
        # Pickup's X-Sender / X-Receiver lines come first and read as headers.
        out.append(email.message_from_bytes(path.read_bytes(), policy=email.policy.default))
    return out


def wait_for_kind(agent: Agent, folder, kind: str) -> email.message.EmailMessage:
    deadline = time.monotonic() + 60
    while True:
        found = [m for m in mails(folder) if str(m["X-Alertmail-Kind"]) == kind]
        if found:
            return found[0]
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)


def test_end_to_end_a_reload_that_raises_the_threshold_mails_a_recovery_that_says_why(tmp_path):
    low = config_text('"pickup"').replace("above = 50", "above = 1").replace('repeat = "2s"', "")
    agent = Agent(tmp_path, low)
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("2.1")
        wait_for_kind(agent, tmp_path, "firing")
        agent.reload(low.replace("above = 1", "above = 99"))
        assert "configuration reloaded" in agent.output()
        mail = wait_for_kind(agent, tmp_path, "resolved")
        text = mail.get_body(("plain",)).get_content()
        assert "resolved by a configuration change: the rule now recovers below 99 (it was 1)" in str(mail["Subject"])
        assert "test.gauge 2.1, resolved by a configuration change" in text
        assert "back below" not in text and "back below" not in str(mail["Subject"])
    finally:
        agent.stop()
