"""The rule engine, one behaviour at a time (pure: the tests own the clock)."""

from __future__ import annotations

import json

import pytest

from alertmail.model import Sample
from alertmail.rules.engine import RuleEngine
from alertmail.rules.flapping import FlapHistory
from alertmail.rules.model import AlertEvent, Rule, State, incident_id
from alertmail.rules.window import WINDOW_BUCKETS, Window


def run(engine: RuleEngine, points, metric: str = "m", labels=None, tick: bool = True) -> list[AlertEvent]:
    """Feed (time, value) points of one series; tick after each; all events in order."""
    events: list[AlertEvent] = []
    for t, v in points:
        if v is not None:
            events += engine.observe([Sample(metric, v, labels or {}, t)], t)
        if tick:
            events += engine.tick(t)
    return events


def kinds(events) -> list[tuple[float, str]]:
    return [(e.at, e.kind) for e in events]


# -- thresholds, for, clear -------------------------------------------------


def test_fires_on_first_bad_sample_without_for():
    engine = RuleEngine([Rule("r", "m", above=90)])
    events = run(engine, [(0, 50), (10, 95)])
    assert kinds(events) == [(10, "firing")]
    e = events[0]
    assert (e.value, e.threshold, e.comparison, e.severity, e.since, e.fired_at) == (95, 90, ">", "warning", 10, 10)


def test_fires_only_after_condition_held_for_the_whole_for():
    engine = RuleEngine([Rule("r", "m", above=90, for_=30)])
    events = run(engine, [(0, 95), (10, 95), (20, 95), (29, 95), (30, 95), (40, 95)])
    assert kinds(events) == [(30, "firing")]
    assert events[0].since == 0 and events[0].duration == 30


def test_good_sample_while_pending_returns_to_ok_silently():
    engine = RuleEngine([Rule("r", "m", above=90, for_=30)])
    events = run(engine, [(0, 95), (20, 95), (25, 50), (30, 95), (50, 95), (60, 95)])
    assert kinds(events) == [(60, "firing")]
    assert events[0].since == 30


def test_pending_is_not_promoted_by_time_alone():
    engine = RuleEngine([Rule("r", "m", above=90, for_=30)])
    engine.observe([Sample("m", 95, {}, 0)], 0)
    assert engine.tick(100) == []
    assert [s.state for s in engine.states(100)] == [State.PENDING]


def test_never_resolves_inside_hysteresis_band():
    engine = RuleEngine([Rule("r", "m", above=90, clear=80)])
    events = run(engine, [(0, 95), (10, 89), (20, 81), (30, 80.5), (40, 85), (50, 80)])
    assert kinds(events) == [(0, "firing"), (50, "resolved")]
    assert events[1].incident == events[0].incident and events[1].value == 80


def test_without_clear_recovers_at_the_threshold():
    engine = RuleEngine([Rule("r", "m", above=90)])
    assert kinds(run(engine, [(0, 95), (10, 90.5), (20, 90)])) == [(0, "firing"), (20, "resolved")]


def test_below_rule_fires_under_threshold_and_recovers_at_clear():
    engine = RuleEngine([Rule("r", "m", below=10, clear=20)])
    events = run(engine, [(0, 50), (10, 5), (20, 15), (30, 20)])
    assert kinds(events) == [(10, "firing"), (30, "resolved")]
    assert events[0].comparison == "<"


def test_hysteresis_band_does_not_start_pending():
    engine = RuleEngine([Rule("r", "m", above=90, clear=80, for_=10)])
    assert run(engine, [(0, 85), (10, 85), (20, 85)]) == []


# -- levels -----------------------------------------------------------------


def test_escalates_from_warning_to_critical_within_one_incident():
    engine = RuleEngine([Rule("r", "m", above=80, critical=95)])
    events = run(engine, [(0, 85), (10, 97), (20, 99), (30, 50)])
    assert kinds(events) == [(0, "firing"), (10, "escalated"), (30, "resolved")]
    firing, escalated, resolved = events
    assert (firing.severity, firing.threshold) == ("warning", 80)
    assert (escalated.severity, escalated.threshold, escalated.previous_severity) == ("critical", 95, "warning")
    assert firing.incident == escalated.incident == resolved.incident
    assert resolved.severity == "critical"


def test_fires_critical_directly_when_value_jumps_past_critical():
    engine = RuleEngine([Rule("r", "m", above=80, critical=95)])
    events = run(engine, [(0, 50), (10, 99)])
    assert [(e.kind, e.severity, e.threshold) for e in events] == [("firing", "critical", 95)]


def test_severity_does_not_drop_back_within_an_incident():
    engine = RuleEngine([Rule("r", "m", above=80, critical=95, repeat=100)])
    events = run(engine, [(0, 97), (10, 85), (20, 97), (100, 85)])
    assert [(e.kind, e.severity) for e in events] == [("firing", "critical"), ("reminder", "critical")]


def test_warning_and_critical_alone_set_a_below_rule():
    rule = Rule("r", "m", warning=20, critical=10)
    assert (rule.direction, rule.comparison, rule.threshold) == (-1, "<", 20)
    events = run(RuleEngine([rule]), [(0, 15), (10, 5), (20, 25)])
    assert [(e.kind, e.severity) for e in events] == [("firing", "warning"), ("escalated", "critical"), ("resolved", "critical")]


def test_single_level_uses_the_rules_severity():
    events = run(RuleEngine([Rule("r", "m", above=1, severity="page")]), [(0, 2)])
    assert events[0].severity == "page"


def test_engine_refuses_an_inconsistent_rule():
    with pytest.raises(ValueError, match="clear"):
        RuleEngine([Rule("r", "m", above=90, clear=95)])
    with pytest.raises(ValueError, match="duplicate"):
        RuleEngine([Rule("r", "m", above=1), Rule("r", "n", above=1)])


# -- repeat, keep_firing_for ---------------------------------------------------


def test_reminder_repeats_every_interval_while_firing():
    engine = RuleEngine([Rule("r", "m", above=90, repeat=60)])
    events = run(engine, [(0, 95)])
    for t in range(10, 200, 10):
        events += engine.tick(t)
    events += run(engine, [(200, 50)])
    assert kinds(events) == [(0, "firing"), (60, "reminder"), (120, "reminder"), (180, "reminder"), (200, "resolved")]
    assert len({e.incident for e in events}) == 1
    assert all(e.since == 0 for e in events)


def test_no_reminder_when_repeat_is_off():
    engine = RuleEngine([Rule("r", "m", above=90)])
    run(engine, [(0, 95)])
    assert engine.tick(10**6) == []


def test_keep_firing_for_needs_the_value_clear_that_long():
    engine = RuleEngine([Rule("r", "m", above=90, keep_firing_for=30)])
    events = run(engine, [(0, 95), (10, 50), (20, 50), (30, 95), (40, 50), (60, 50), (70, 50)])
    assert kinds(events) == [(0, "firing"), (70, "resolved")]


def test_keep_firing_for_expires_on_tick_without_new_samples():
    engine = RuleEngine([Rule("r", "m", above=90, keep_firing_for=30)])
    events = run(engine, [(0, 95), (10, 50)])
    assert engine.tick(39) == []
    resolved = engine.tick(40)
    assert [e.kind for e in resolved] == ["resolved"] and resolved[0].incident == events[0].incident


# -- labels -------------------------------------------------------------------


def test_label_matchers_take_exact_values_and_globs():
    rule = Rule("r", "net.errors", labels={"interface": "eth*", "dir": "rx"}, above=1)
    assert rule.matches(Sample("net.errors", 5, {"interface": "eth0", "dir": "rx"}))
    assert not rule.matches(Sample("net.errors", 5, {"interface": "lo", "dir": "rx"}))
    assert not rule.matches(Sample("net.errors", 5, {"interface": "eth0", "dir": "tx"}))
    assert not rule.matches(Sample("net.errors", 5, {"interface": "eth0"}))
    assert not rule.matches(Sample("net.drops", 5, {"interface": "eth0", "dir": "rx"}))
    assert Rule("r", "disk", labels={"mount": "/"}, above=1).matches(Sample("disk", 1, {"mount": "/", "fs": "ext4"}))
    assert not Rule("r", "disk", labels={"mount": "/"}, above=1).matches(Sample("disk", 1, {"mount": "/home"}))


def test_each_label_set_is_its_own_alert():
    engine = RuleEngine([Rule("r", "disk", labels={"mount": "/*"}, above=90)])
    events = engine.observe(
        [
            Sample("disk", 95, {"mount": "/"}, 0),
            Sample("disk", 50, {"mount": "/home"}, 0),
            Sample("disk", 99, {"mount": "/var"}, 0),
            Sample("disk", 99, {"mount": "tmpfs"}, 0),
        ],
        0,
    )
    assert sorted(dict(e.labels)["mount"] for e in events) == ["/", "/var"]
    assert len({e.incident for e in events}) == 2


# -- windows --------------------------------------------------------------------


def test_window_avg_does_not_fire_on_a_single_spike():
    engine = RuleEngine([Rule("r", "m", above=50, over=60, agg="avg")])
    points = [(t, 100 if t == 30 else 10) for t in range(0, 120, 10)]
    assert run(engine, points) == []
    events = run(engine, [(t, 100) for t in range(120, 200, 10)])
    assert kinds(events) == [(140, "firing")]  # the window (80, 140] holds three 10s and three 100s


def test_window_max_and_min_follow_the_window():
    window = Window(60)
    for t, v in [(0, 5), (10, 1), (20, 9), (70, 3)]:
        window.add(t, v)
    assert (window.value("min"), window.value("max"), window.value("last")) == (3, 9, 3)


def test_rate_is_per_second_increase_and_survives_counter_reset():
    window = Window(100)
    for t, v in [(0, 1000), (10, 1100), (20, 1200), (30, 50), (40, 150)]:
        window.add(t, v)
    # 100 + 100 + 50 (restart from zero) + 100 over 40 s
    assert window.value("rate") == pytest.approx(350 / 40)


def test_rate_needs_two_samples():
    window = Window(60)
    window.add(0, 10)
    assert window.value("rate") is None


def test_rate_rule_fires_on_fast_growth():
    engine = RuleEngine([Rule("r", "errors", above=5, over=30, agg="rate")])
    events = run(
        engine, [(t, t * 1) for t in range(0, 60, 10)] + [(t, 60 + (t - 60) * 10) for t in range(60, 120, 10)], metric="errors"
    )
    assert kinds(events)[0][1] == "firing"
    assert events[0].value > 5


def test_window_memory_is_bounded_however_fast_samples_come():
    window = Window(60)
    for i in range(20_000):
        window.add(i * 0.01, float(i % 7))
    assert len(window) <= WINDOW_BUCKETS + 1
    assert window.value("max") == 6 and window.value("min") == 0


def test_window_starts_afresh_when_the_clock_jumps_back_past_it():
    window = Window(60)
    for t, v in [(1000, 100), (1010, 200), (100, 5), (110, 7)]:
        window.add(t, v)
    assert (window.value("avg"), window.value("min"), window.value("max"), len(window)) == (6, 5, 7, 2)


# -- absent ---------------------------------------------------------------------


def test_absent_series_fires_and_resolves_when_samples_return():
    engine = RuleEngine([Rule("proc", "proc.count", labels={"name": "nginx"}, absent=60)])
    events = run(
        engine,
        [(0, 1), (30, 1), (60, None), (89, None), (90, None), (120, None), (130, 1)],
        metric="proc.count",
        labels={"name": "nginx"},
    )
    assert kinds(events) == [(90, "firing"), (130, "resolved")]
    firing, resolved = events
    assert firing.comparison == "absent" and firing.since == 30 and firing.labels == (("name", "nginx"),)
    assert resolved.incident == firing.incident


def test_rule_that_matches_no_series_fires_absent_with_empty_labels():
    engine = RuleEngine([Rule("heartbeat", "app.heartbeat", absent=60), Rule("other", "x", above=1)])
    assert engine.tick(0) == [] and engine.tick(59) == []
    events = engine.tick(60)
    assert [(e.kind, e.rule.name, e.labels, e.comparison) for e in events] == [("firing", "heartbeat", (), "absent")]
    back = engine.observe([Sample("app.heartbeat", 1, {"pid": "7"}, 100)], 100)
    assert [(e.kind, e.labels, e.incident) for e in back] == [("resolved", (), events[0].incident)]
    assert engine.tick(1000) == [] or all(e.labels for e in engine.tick(1000))


def test_absent_alert_reminds_while_missing():
    engine = RuleEngine([Rule("r", "m", absent=10, repeat=30)])
    run(engine, [(0, 1)])
    events = [e for t in range(1, 80) for e in engine.tick(t)]
    assert kinds(events) == [(10, "firing"), (40, "reminder"), (70, "reminder")]


# -- flapping --------------------------------------------------------------------


def flappy(start: int = 0, n: int = 40):
    return [(start + 10 * i, 95 if i % 2 == 0 else 50) for i in range(n)]


def test_flapping_series_yields_one_flapping_event():
    engine = RuleEngine([Rule("r", "m", above=90, repeat=20)])
    events = run(engine, flappy())
    # The history starts ok, so the first firing is a change: 6 %, 12 %, 18 %, then 24 % at the fourth.
    assert [e.kind for e in events] == ["firing", "resolved", "firing", "flapping"]
    assert events[-1].percent_change > 20


def test_flapping_ends_once_with_the_final_state_ok():
    engine = RuleEngine([Rule("r", "m", above=90)])
    events = run(engine, flappy() + [(400 + 10 * i, 50) for i in range(30)])
    assert [e.kind for e in events] == ["firing", "resolved", "firing", "flapping", "flap-ended"]
    ended = events[-1]
    assert ended.state == "ok" and ended.incident == events[-2].incident and ended.percent_change < 5
    assert kinds(run(engine, [(1000, 95)]))[0][1] == "firing"


def test_flapping_that_settles_firing_keeps_the_incident_until_resolved():
    engine = RuleEngine([Rule("r", "m", above=90, repeat=50)])
    events = run(engine, flappy() + [(400 + 10 * i, 95) for i in range(30)] + [(700, 10)])
    # The last change (at 400) has aged to the lowest weights by 590: below 5 %.
    assert kinds(events)[3:] == [(30, "flapping"), (590, "flap-ended"), (640, "reminder"), (690, "reminder"), (700, "resolved")]
    assert events[4].state == "firing"
    assert len({e.incident for e in events[3:]}) == 1


def test_flapping_detection_can_be_turned_off():
    events = run(RuleEngine([Rule("r", "m", above=90, flapping=False)]), flappy(n=10))
    assert [e.kind for e in events] == ["firing", "resolved"] * 5


def test_flapping_thresholds_can_be_set_by_the_caller():
    events = run(RuleEngine([Rule("r", "m", above=90)], flap_start=10, flap_stop=1), flappy())
    assert [e.kind for e in events] == ["firing", "flapping"]
    with pytest.raises(ValueError):
        RuleEngine([], flap_start=5, flap_stop=10)


def test_percent_state_change_weights_recent_changes_more():
    every = FlapHistory()
    for i in range(21):
        every.record(i % 2 == 0)
    assert every.percent() == pytest.approx(100)
    newest, oldest = FlapHistory(), FlapHistory()
    for i in range(21):
        newest.record(i == 20)
        oldest.record(i >= 1)
    assert newest.percent() == pytest.approx(1.25 * 100 / 20)  # Nagios: 0.75 for the oldest change, 1.25 the newest
    assert oldest.percent() == pytest.approx(0.75 * 100 / 20)
    assert FlapHistory().percent() == 0


# -- incidents, restart, status -----------------------------------------------------


def test_incident_id_is_deterministic_and_new_per_firing():
    a = run(RuleEngine([Rule("r", "m", above=90, flapping=False)]), [(0, 95), (10, 50), (20, 95)])
    b = run(RuleEngine([Rule("r", "m", above=90, flapping=False)]), [(0, 95), (10, 50), (20, 95)])
    assert [e.incident for e in a] == [e.incident for e in b]
    assert a[0].incident == a[1].incident != a[2].incident
    assert a[0].incident == incident_id("r", (), 0)


def test_restarted_engine_does_not_refire_but_sends_the_recovery():
    rules = [Rule("r", "m", labels={"host": "a*"}, above=90, repeat=100)]
    first = RuleEngine(rules)
    fired = run(first, [(0, 95), (10, 96)], labels={"host": "a1"})
    saved = json.loads(json.dumps(first.snapshot()))

    second = RuleEngine(rules)
    assert second.restore(saved) == 1
    events = run(second, [(50, 97), (100, 97), (110, 10)], labels={"host": "a1"})
    assert kinds(events) == [(100, "reminder"), (110, "resolved")]
    assert {e.incident for e in events} == {fired[0].incident}


def test_restore_drops_incidents_of_rules_that_are_gone():
    first = RuleEngine([Rule("old", "m", above=1)])
    run(first, [(0, 5)])
    assert RuleEngine([Rule("new", "m", above=1)]).restore(first.snapshot()) == 0


def test_restored_absent_series_waits_a_full_absent_after_restart():
    rules = [Rule("r", "m", absent=60)]
    first = RuleEngine(rules)
    run(first, [(0, 1), (100, None)])
    assert [e.kind for e in first.tick(100)] == [] and first.states(100)[0].note == "absent"
    second = RuleEngine(rules)
    second.restore(json.loads(json.dumps(first.snapshot())))
    assert second.tick(1000) == [] and second.tick(2000) == []
    assert [e.kind for e in second.observe([Sample("m", 1, {}, 2001)], 2001)] == ["resolved"]


def test_states_show_every_series_and_rules_without_series():
    engine = RuleEngine([Rule("disk", "disk", above=90, for_=60), Rule("none", "nothing", above=1)])
    engine.observe([Sample("disk", 95, {"mount": "/"}, 0), Sample("disk", 10, {"mount": "/home"}, 0)], 0)
    rows = [(r.rule.name, r.labels, r.state, r.value, r.since, r.note) for r in engine.states(0)]
    assert rows == [
        ("disk", (("mount", "/"),), State.PENDING, 95, 0, ""),
        ("disk", (("mount", "/home"),), State.OK, 10, None, ""),
        ("none", (), State.OK, None, None, "no matching series"),
    ]


def test_nan_sample_is_no_evidence_either_way():
    engine = RuleEngine([Rule("r", "m", above=90)])
    events = run(engine, [(0, 95), (10, float("nan")), (20, 95)])
    assert kinds(events) == [(0, "firing")]


def test_quiet_healthy_series_are_forgotten():
    engine = RuleEngine([Rule("r", "m", above=90)], forget_after=100)
    run(engine, [(0, 10)], labels={"pid": "1"})
    run(engine, [(0, 95)], labels={"pid": "2"})
    engine.tick(200)
    assert [(r.labels, r.state) for r in engine.states(200)] == [((("pid", "2"),), State.FIRING)]


def test_events_and_rules_are_hashable_for_grouping():
    events = run(RuleEngine([Rule("r", "m", labels={"a": "b"}, above=1)]), [(0, 5)], labels={"a": "b"})
    assert len({events[0], events[0]}) == 1 and len({events[0].rule}) == 1


def test_restored_rule_level_absent_is_not_mailed_again_and_resolves():
    rules = [Rule("heartbeat", "app.heartbeat", absent=60, repeat=3600)]
    first = RuleEngine(rules)
    first.tick(0)
    fired = first.tick(60)
    second = RuleEngine(rules)
    assert second.restore(json.loads(json.dumps(first.snapshot()))) == 1
    assert second.tick(100) == [] and second.tick(200) == []
    back = second.observe([Sample("app.heartbeat", 1, {}, 300)], 300)
    assert [(e.kind, e.incident) for e in back] == [("resolved", fired[0].incident)]


def test_states_show_flapping_and_absent_alerts():
    engine = RuleEngine([Rule("flappy", "m", above=90), Rule("gone", "g", absent=10)])
    run(engine, flappy(n=6))
    engine.observe([Sample("g", 1, {}, 0)], 0)
    engine.tick(100)
    rows = {r.rule.name: r for r in engine.states(100)}
    assert rows["flappy"].state is State.FLAPPING and rows["flappy"].incident
    assert (rows["gone"].state, rows["gone"].note, rows["gone"].since) == (State.FIRING, "absent", 0)


# -- flapping as Nagios Core's flapping.c computes it --------------------------------

NAGIOS_HISTORY = 21  # MAX_STATE_HISTORY_ENTRIES


class NagiosFlap:
    """check_for_service_flapping() of Nagios Core's base/flapping.c, line for line, for one service.

    The state history is a ring of 21 states, all OK at the start; a SOFT non-OK state is
    not recorded (nor checked); every other result is recorded, then the curved change
    over the ring (weights 0.75 for the oldest change up to 1.25 for the newest) is
    compared: >= high starts flapping, <= low stops it, in between nothing changes.
    """

    def __init__(self, low: float = 5.0, high: float = 20.0) -> None:
        self.history = [0] * NAGIOS_HISTORY  # STATE_OK
        self.index = 0
        self.low, self.high = low, high
        self.is_flapping = False
        self.percent = 0.0

    def check(self, state: int, soft: bool = False) -> None:
        if soft and state != 0:
            return
        self.history[self.index] = state
        self.index = (self.index + 1) % NAGIOS_HISTORY
        low_curve, high_curve = 0.75, 1.25
        curved_changes = 0.0
        y = self.index
        last = self.history[y]
        for x in range(1, NAGIOS_HISTORY):
            y = (y + 1) % NAGIOS_HISTORY
            if last != self.history[y]:
                curved_changes += ((x - 1) * (high_curve - low_curve)) / (NAGIOS_HISTORY - 2) + low_curve
            last = self.history[y]
        self.percent = curved_changes * 100.0 / (NAGIOS_HISTORY - 1)
        if self.low < self.percent < self.high:
            return
        self.is_flapping = self.percent >= self.high


def test_percent_state_change_matches_nagios_for_every_history():
    import random

    rng = random.Random(13)
    for _ in range(300):
        ours, nagios = FlapHistory(), NagiosFlap()
        for _ in range(rng.randrange(1, 60)):
            firing = rng.random() < 0.5
            ours.record(firing)
            nagios.check(2 if firing else 0)
            assert ours.percent() == nagios.percent


def nagios_flaps(points, for_: float = 0.0) -> list[tuple[float, bool]]:
    """Where the reference starts and stops flapping for (time, value) points of an above = 90 rule."""
    nagios, out, since = NagiosFlap(), [], None
    hard = 0
    for t, v in points:
        bad = v > 90
        if not bad:
            since = None
            soft = False  # a recovery, soft or hard, is recorded
            hard = 0
        else:
            since = t if since is None else since
            soft = hard == 0 and t - since < for_  # still pending: a SOFT problem state
            if not soft:
                hard = 2
        was = nagios.is_flapping
        nagios.check(2 if bad else 0, soft=soft)
        if nagios.is_flapping != was:
            out.append((t, nagios.is_flapping))
    return out


def engine_flaps(events) -> list[tuple[float, bool]]:
    return [(e.at, e.kind == "flapping") for e in events if e.kind in ("flapping", "flap-ended")]


def test_a_series_reaching_exactly_twenty_percent_flaps_as_in_nagios():
    # 15 evaluations changing at the 1st, 2nd, 4th and 15th: weights 0.75 + (5, 6, 8, 19) / 38 sum to 4.0 = 20.0 %.
    values = [95, 50, 50, 95] + [95] * 10 + [50]
    points = [(10.0 * i, v) for i, v in enumerate(values)]
    reference = nagios_flaps(points)
    assert reference == [(140.0, True)]
    events = run(RuleEngine([Rule("r", "m", above=90)]), points)
    assert engine_flaps(events) == reference
    assert events[-1].kind == "flapping" and events[-1].percent_change == 20.0


def test_pending_evaluations_are_not_recorded_as_nagios_skips_soft_states():
    rule = Rule("r", "m", above=90, for_=15)
    # Short bursts stay pending (SOFT in Nagios: not recorded); recorded as ok they would push
    # the real changes back to lighter weights, and the series would not be seen flapping.
    values = [95, 95, 95, 50, 50, 95, 95, 50, 95, 95, 50, 95, 50, 50] + [95] * 6 + [50]
    points = [(10.0 * i, v) for i, v in enumerate(values)]
    reference = nagios_flaps(points, for_=15)
    assert reference == [(200.0, True)]
    assert engine_flaps(run(RuleEngine([rule]), points)) == reference


@pytest.mark.parametrize("for_", [0.0, 15.0, 35.0])
def test_random_series_flap_where_nagios_flaps(for_):
    import random

    rng = random.Random(7)
    for _ in range(200):
        p = rng.choice([0.1, 0.3, 0.5])
        values, bad = [], False
        for _ in range(rng.randrange(10, 120)):
            if rng.random() < p:
                bad = not bad
            values.append(95 if bad else 50)
        points = [(10.0 * i, v) for i, v in enumerate(values)]
        events = run(RuleEngine([Rule("r", "m", above=90, for_=for_)]), points)
        assert engine_flaps(events) == nagios_flaps(points, for_=for_), values
