"""Time, restarts and non-finite values in the rule engine (docs/rules.md "Time, restarts, NaN and infinities").

Pure units: the engine, the window, the notifier's waits and the step detector are fed
times by the test; the agent under a stepped clock is tests/test_clock_steps.py.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from alertmail.model import Sample
from alertmail.notify.notifier import Notifier
from alertmail.replay import MailCollector, replay
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import AlertEvent, Rule
from alertmail.rules.window import Window

T0 = 1_800_000_000.0


def run(rules, points, *, step_at: float | None = None, step: float = 0.0, until: float | None = None):
    """Feed (monotonic time, value) points of series "m" and tick every second up to ``until``; the wall clock
    reads monotonic time + T0, stepped by ``step`` at monotonic ``step_at`` (passed to ``engine.shift``, as
    the agent does). Every event, with its times taken back to monotonic ones."""
    engine = RuleEngine(rules)
    values = dict(points)
    end = until if until is not None else max(values) + 1
    out = []
    offset = T0
    for t in range(int(end) + 1):
        if step_at is not None and t == step_at:
            offset += step
            engine.shift(step)
        now = t + offset
        events = []
        if t in values:
            events += engine.observe([Sample("m", values[t], {"disk": "sda"}, now)], now)
        events += engine.tick(now)
        out += [(e.kind, e.at - offset, e.since - offset, e.labels) for e in events]
    return out


SCENARIOS = {
    "for": ([Rule("slow", "m", above=50, for_=60)], [(t, 90) for t in range(0, 200, 10)]),
    "repeat": ([Rule("hot", "m", above=50, repeat=60)], [(t, 90) for t in range(0, 200, 10)]),
    "keep_firing_for": (
        [Rule("hot", "m", above=50, keep_firing_for=60)],
        [(t, 90 if t < 50 else 10) for t in range(0, 200, 10)],
    ),
    "window": ([Rule("avg", "m", above=50, over=60, agg="avg")], [(t, 90 if t < 100 else 10) for t in range(0, 300, 10)]),
    "absent": ([Rule("gone", "m", absent=60)], [(t, 1) for t in range(0, 40, 10)]),
}


@pytest.mark.parametrize("step", [-600.0, 3600.0], ids=["back-10min", "forward-1h"])
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_stepped_wall_clock_changes_no_event_and_no_duration(name, step):
    rules, points = SCENARIOS[name]
    steady = run(rules, points, until=200)
    assert steady, "the scenario must produce events"
    assert run(rules, points, step_at=25, step=step, until=200) == steady


def test_a_pending_alert_fires_after_for_on_the_monotonic_clock_when_the_wall_clock_steps_back():
    engine = RuleEngine([Rule("slow", "m", above=50, for_=60)])
    assert engine.observe([Sample("m", 90, {}, T0)], T0) == []
    engine.shift(-600)  # at T0 + 30 the wall clock is set back ten minutes
    events = []
    for t in range(40, 80, 10):
        now = T0 - 600 + t
        events += engine.observe([Sample("m", 90, {}, now)], now)
    assert [(e.kind, e.at - (T0 - 600), e.duration) for e in events] == [("firing", 60, 60)]
    assert events[0].since == T0 - 600  # on the wall clock after the step


def test_a_forward_step_makes_no_series_absent():
    engine = RuleEngine([Rule("gone", "m", absent=60)])
    engine.observe([Sample("m", 1, {}, T0)], T0)
    engine.shift(3600)
    assert engine.tick(T0 + 3600 + 30) == []
    assert [e.kind for e in engine.tick(T0 + 3600 + 60)] == ["firing"]


def test_a_window_keeps_its_samples_across_a_step_back():
    engine = RuleEngine([Rule("avg", "m", above=50, over=60, agg="avg")])
    for t in range(0, 30, 10):  # 20 s of samples: less than the half of the window it needs to decide
        assert engine.observe([Sample("m", 90, {}, T0 + t)], T0 + t) == []
    engine.shift(-600)
    # Without the shift the window would be emptied (its samples ten minutes "ahead") and wait for coverage again.
    events = engine.observe([Sample("m", 90, {}, T0 - 600 + 40)], T0 - 600 + 40)
    assert [e.kind for e in events] == ["firing"]


# -- restarts: when each series was last seen is kept -------------------------------------


def test_a_series_that_stops_before_a_restart_is_reported_absent_with_its_labels_and_true_duration():
    rule = Rule("disk-gone", "m", absent=60)
    before = RuleEngine([rule])
    for t in range(0, 101, 10):
        before.observe([Sample("m", 1, {"disk": "sda"}, T0 + t)], T0 + t)
        if t <= 92:
            before.observe([Sample("m", 1, {"disk": "sdb"}, T0 + t)], T0 + t)
    snapshot = before.snapshot()  # saved at the stop, 8 s after sdb's last sample

    after = RuleEngine([rule])
    after.restore(snapshot)
    # The agent is back 70 s later: both last samples are older than `absent`, but no probe has run yet.
    events = after.tick(T0 + 170)
    for t in range(175, 260, 10):  # sda reports again, sdb does not
        events += after.observe([Sample("m", 1, {"disk": "sda"}, T0 + t)], T0 + t)
        events += after.tick(T0 + t)
    # Every series gets `absent` after the start (170 s) to report again; sdb is absent since its last sample.
    assert [(e.kind, dict(e.labels), e.at - T0, e.since - T0) for e in events] == [("firing", {"disk": "sdb"}, 235, 90)]
    assert events[0].duration == 145


def test_a_rule_narrowed_to_a_series_that_stopped_reports_it_with_labels_not_as_never_seen():
    rule = Rule("sdb-gone", "m", labels={"disk": "sdb"}, absent=60)
    before = RuleEngine([rule])
    for t in range(0, 93, 10):
        before.observe([Sample("m", 1, {"disk": "sdb"}, T0 + t)], T0 + t)
    snapshot = before.snapshot()
    after = RuleEngine([rule])
    after.restore(snapshot)
    events = [e for t in range(100, 200, 1) for e in after.tick(T0 + t)]
    assert [(e.kind, dict(e.labels), e.at - T0, e.duration) for e in events] == [("firing", {"disk": "sdb"}, 160, 70)]


def test_a_snapshot_keeps_only_the_last_seen_times_of_rules_that_watch_absent():
    engine = RuleEngine([Rule("hot", "m", above=50), Rule("gone", "m", absent=60)])
    engine.observe([Sample("m", 1, {"disk": "sda"}, T0)], T0)
    assert [(e["rule"], e["last_seen"]) for e in engine.snapshot()["series"]] == [("gone", T0)]


# -- NaN and infinities: one definition --------------------------------------------------


def feed(engine, points):
    events = []
    for t, v in points:
        events += engine.observe([Sample("m", v, {}, T0 + t)], T0 + t)
        events += engine.tick(T0 + t)
    return [(e.kind, e.at - T0) for e in events]


def test_a_probe_that_reads_infinity_fires_the_rule_as_replay_does():
    # The same sample, live (through the probe runner) and replayed: +Inf is above every threshold, -Inf below.
    from alertmail.probes.runner import run_probe

    class Probe:
        name = "odd"

        def __init__(self, value: float) -> None:
            self.value = value

        def collect(self):
            return [Sample("m", self.value, {}, T0)]

    rules = [Rule("hot", "m", above=50, critical=90, to=("ops@test.example",))]
    live = RuleEngine(rules)
    run = asyncio.run(run_probe(Probe(math.inf), 2))
    assert run.ok, run.error
    assert [(e.kind, e.severity) for e in live.observe(run.samples, T0)] == [("firing", "critical")]
    replayed = asyncio.run(replay([Sample("m", math.inf, {}, T0)], rules))
    assert [(line["kind"], line["severity"]) for line in replayed.events] == [("firing", "critical")]
    low = RuleEngine([Rule("cold", "m", below=5)])
    run = asyncio.run(run_probe(Probe(-math.inf), 2))
    assert [e.kind for e in low.observe(run.samples, T0)] == ["firing"]


def test_an_infinity_that_leaves_an_avg_window_leaves_no_stale_value():
    engine = RuleEngine([Rule("avg", "m", above=50, over=60, agg="avg")])
    points = [(t, 10.0) for t in range(0, 100, 10)] + [(100, math.inf)] + [(t, 10.0) for t in range(110, 400, 10)]
    # Firing while the +Inf is in (t - 60, t]; resolved on the first sample after it left.
    assert feed(engine, points) == [("firing", 100), ("resolved", 160)]


def test_a_window_holding_both_infinities_is_undecided_and_never_crashes():
    window = Window(60, min_coverage=0.5)
    for t in range(0, 100):
        window.add(float(t), math.inf if t == 40 else -math.inf if t == 41 else 1.0)
        if 40 < t < 100:
            assert window.value("avg") is None  # +Inf and -Inf together have no mean
    for t in range(100, 400):  # enough evictions to recompute the running sums
        window.add(float(t), 1.0)
    assert window.value("avg") == 1.0 and window.value("max") == 1.0 and window.value("min") == 1.0


def test_every_aggregate_of_a_window_holding_plus_infinity():
    window = Window(60)
    for t, v in [(0, 1.0), (10, math.inf), (20, 2.0)]:
        window.add(float(t), v)
    values = {agg: window.value(agg) for agg in ("max", "min", "last", "avg", "rate")}
    assert values == {"max": math.inf, "min": 1.0, "last": 2.0, "avg": math.inf, "rate": None}


def test_rate_counts_past_an_infinity_from_the_last_finite_reading():
    window = Window(60)
    for t, v in [(0, 0.0), (10, 100.0), (20, math.inf), (30, 300.0)]:
        window.add(float(t), v)
    assert window.value("rate") is None
    for t in range(40, 200, 10):
        window.add(float(t), 300.0 + (t - 30) * 10)
    assert window.value("rate") == pytest.approx(10.0)


def test_replay_of_infinities_in_a_window_neither_crashes_nor_keeps_a_stale_alert():
    rule = Rule("avg", "m", above=50, over=60, agg="avg", to=("ops@test.example",))
    values = [10.0] * 10 + [math.inf, -math.inf] + [10.0] * 40 + [math.inf] + [10.0] * 40
    samples = [Sample("m", v, {}, T0 + 10 * i) for i, v in enumerate(values)]
    result = asyncio.run(replay(samples, [rule]))
    events = [(line["kind"], line["at"] - T0) for line in result.events]
    # +Inf at 100 s fires; with the -Inf of 110 s beside it the window is undecided (still firing); once the
    # +Inf left, the -Inf alone resolves it (160 s). The +Inf of 520 s fires again, resolved once it left the window.
    assert events == [("firing", 100), ("resolved", 160), ("firing", 520), ("resolved", 580)]


# -- the notifier's waits ------------------------------------------------------------------


def _event(kind: str, at: float, incident: str) -> AlertEvent:
    rule = Rule("disk-full", "m", above=90, to=("ops@test.example",))
    return AlertEvent(kind, rule, (("disk", incident),), 95.0, 90.0, ">", "warning", at, at, incident)


def test_a_group_wait_runs_on_the_monotonic_clock_across_a_step_back(tmp_path):
    async def main():
        collector = MailCollector()
        notifier = Notifier(
            sender="alertmail@test.example",
            hostname="web01",
            timezone="UTC",
            route=["pickup"],
            queue=collector,
            state_dir=tmp_path,
            group_wait=60,
            render_options={"charts": "off"},
            durable=False,
        )
        await notifier.notify([_event("firing", T0, "a")], T0)  # the leading edge: mailed at once
        await notifier.notify([_event("firing", T0 + 10, "b")], T0 + 10)  # waits for the group until T0 + 60
        notifier.shift(-600)  # at T0 + 20 the wall clock is set back ten minutes
        await notifier.flush(T0 - 600 + 59)
        assert len(collector.mails) == 1
        await notifier.flush(T0 - 600 + 60)
        assert len(collector.mails) == 2
        assert collector.mails[1].at == pytest.approx(T0 - 600 + 60, abs=1)

    asyncio.run(main())


# -- detecting a step ------------------------------------------------------------------------


class FakeClocks:
    def __init__(self) -> None:
        self.wall = T0
        self.mono = 100.0

    def advance(self, seconds: float, drift: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + drift


def test_a_step_is_reported_once_with_its_size_and_a_drift_never():
    from alertmail.clock import WallClock

    clocks = FakeClocks()
    clock = WallClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    for _ in range(100):
        clocks.advance(5, drift=0.0025)  # NTP slewing at its fastest, 0.5 ms a second
        assert clock.check() == 0.0
    clocks.advance(5)
    clocks.wall -= 600
    assert clock.check() == pytest.approx(-600)
    assert clock.check() == 0.0
    clocks.wall += 3600
    assert clock.check() == pytest.approx(3600)
    assert clock.stepped == pytest.approx(3000)


def test_the_warning_writes_the_step_with_its_sign():
    from alertmail.clock import describe

    assert describe(-600.2) == "\u2212600 s"
    assert describe(3600) == "+3600 s"


# -- the agent: a step noticed at its next clock read moves what it holds -----------------


def _agent_with_fake_clocks(tmp_path, rule: Rule, clocks: FakeClocks):
    from alertmail.agent import Agent
    from alertmail.clock import WallClock
    from alertmail.config.core import AgentSettings, MailSettings
    from alertmail.config.load import Config

    cfg = Config(path=tmp_path / "config.toml", agent=AgentSettings(state_dir=tmp_path), mail=MailSettings(to=[]), rules=[rule])
    agent = Agent(cfg, plugins=None)
    agent.clock = WallClock(wall=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    agent._mail_queue = asyncio.Queue()  # start() makes it, and the notifier
    agent.notifier = Notifier(
        sender="alertmail@test.example",
        hostname="web01",
        timezone="UTC",
        route=["pickup"],
        queue=MailCollector(),
        state_dir=tmp_path,
        render_options={"charts": "off"},
        durable=False,
    )
    return agent


def test_the_agent_moves_its_rules_and_charts_by_a_step_it_notices(tmp_path, caplog):
    clocks = FakeClocks()
    agent = _agent_with_fake_clocks(tmp_path, Rule("slow", "m", above=50, for_=60, to=("ops@test.example",)), clocks)

    async def main():
        mailer = asyncio.create_task(agent._mailer())
        for t in range(0, 100, 10):
            if t == 30:
                clocks.wall -= 600  # set back ten minutes, between two probe runs
            now = agent.now()
            await agent.observe([Sample("m", 90, {}, now)], now)
            clocks.advance(10)
        await agent._mail_queue.join()
        mailer.cancel()

    with caplog.at_level("WARNING", logger="alertmail.agent"):
        asyncio.run(main())
    (mail,) = agent.notifier.queue.mails
    assert mail.at == pytest.approx(T0 - 600 + 60, abs=1)  # `for` counted 60 s, shown on the stepped clock
    assert [r.getMessage() for r in caplog.records if "stepped" in r.getMessage()] == [
        "wall clock stepped by \u2212600 s; alert timers keep counting on the monotonic clock"
    ]
    points = agent.history.get("m", ())
    assert [t - (T0 - 600) for t, _ in points] == list(range(0, 100, 10))  # in order, on the stepped clock


def test_events_handed_to_the_mailer_before_a_step_take_the_step_along(tmp_path):
    clocks = FakeClocks()
    agent = _agent_with_fake_clocks(tmp_path, Rule("hot", "m", above=50, to=("ops@test.example",)), clocks)

    async def main():
        now = agent.now()
        await agent.observe([Sample("m", 90, {}, now)], now)  # firing: handed over, not yet mailed
        clocks.wall -= 600
        agent.now()  # the step is noticed before the mailer takes the event
        mailer = asyncio.create_task(agent._mailer())
        await agent._mail_queue.join()
        mailer.cancel()

    asyncio.run(main())
    (mail,) = agent.notifier.queue.mails
    assert mail.at == pytest.approx(T0 - 600, abs=1)
