"""Invariants of the rule engine over random series (hypothesis)."""

from __future__ import annotations

import dataclasses
import json

from hypothesis import example, given, settings
from hypothesis import strategies as st

from alertmail.model import Sample
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import AlertEvent, Rule
from alertmail.rules.window import WINDOW_BUCKETS, Window

# Per test, not a global profile: other test modules keep their own settings.
PROPERTY = settings(deadline=None, max_examples=120)

# Values cluster on and around the levels (60 clear, 80 threshold, 95 critical) where bugs live.
LEVELS = [0, 59.9, 60, 60.1, 70, 79.9, 80, 80.1, 90, 94.9, 95, 95.1, 100]
values = st.one_of(st.sampled_from(LEVELS), st.floats(0, 100, allow_nan=False))
# (seconds since the previous step, value or None for "no sample, only a tick")
steps = st.lists(st.tuples(st.sampled_from([0.5, 1, 5, 10, 10, 10, 30]), st.one_of(values, st.none())), min_size=1, max_size=80)


@st.composite
def rules(draw) -> Rule:
    below = draw(st.booleans())
    clear = draw(st.sampled_from([60.0, 70.0, 80.0]))
    critical = draw(st.sampled_from([None, 95.0]))
    kwargs = {
        "for_": draw(st.sampled_from([0.0, 5.0, 20.0, 60.0])),
        "keep_firing_for": draw(st.sampled_from([0.0, 10.0, 30.0])),
        "repeat": draw(st.sampled_from([0.0, 15.0, 50.0])),
        "flapping": draw(st.booleans()),
    }
    if below:  # the mirror image: the same levels reflected around 50
        return Rule("r", "m", below=20.0, clear=100 - clear, critical=None if critical is None else 5.0, **kwargs)
    return Rule("r", "m", above=80.0, clear=clear, critical=critical, **kwargs)


def simulate(engine: RuleEngine, rule: Rule, plan, start: float = 0.0) -> tuple[list[tuple[float, float]], list[AlertEvent]]:
    """Run the plan; return the samples fed (time, value) and every event."""
    t = start
    samples: list[tuple[float, float]] = []
    events: list[AlertEvent] = []
    for dt, value in plan:
        t += dt
        if value is not None:
            if rule.below is not None:
                value = 100 - value
            samples.append((t, value))
            events += engine.observe([Sample("m", value, {}, t)], t)
        events += engine.tick(t)
    return samples, events


def signed(rule: Rule, value: float) -> float:
    return rule.direction * value


@PROPERTY
@given(rules(), steps)
def test_never_fires_before_for_has_elapsed(rule, plan):
    samples, events = simulate(RuleEngine([rule]), rule, plan)
    edge = signed(rule, rule.threshold)
    for e in events:
        if e.kind == "firing":
            assert e.at - e.since >= rule.for_
            held = [v for t, v in samples if e.since <= t <= e.at]
            assert held and all(signed(rule, v) > edge for v in held)


@PROPERTY
@given(rules(), steps)
def test_never_resolves_inside_hysteresis_band(rule, plan):
    samples, events = simulate(RuleEngine([rule]), rule, plan)
    clear_edge = signed(rule, rule.clear_level)
    for e in events:
        if e.kind != "resolved":
            continue
        before = [(t, v) for t, v in samples if t <= e.at]
        assert signed(rule, before[-1][1]) <= clear_edge
        # keep_firing_for: every sample since `at - keep_firing_for` was clear too.
        bad = [t for t, v in before if signed(rule, v) > clear_edge]
        first_good = min(t for t, _ in before if not bad or t > bad[-1])
        assert e.at - first_good >= rule.keep_firing_for


@PROPERTY
@given(rules(), steps)
def test_every_incident_runs_firing_then_reminders_then_resolved(rule, plan):
    _, events = simulate(RuleEngine([rule]), rule, plan)
    phase: dict[str, str] = {}
    allowed = {
        None: {"firing": "open", "flapping": "flapping"},
        "open": {"reminder": "open", "escalated": "open", "resolved": "closed", "flapping": "flapping"},
        "flapping": {"flap-ended:firing": "open", "flap-ended:ok": "closed"},
        "closed": {},
    }
    last_at = -1.0
    for e in events:
        assert e.at >= last_at
        last_at = e.at
        key = f"{e.kind}:{e.state}" if e.kind == "flap-ended" else e.kind
        now = phase.get(e.incident)
        assert key in allowed[now], f"{key} after {now} in incident {e.incident}"
        phase[e.incident] = allowed[now][key]


@PROPERTY
@given(rules(), steps)
def test_severity_never_drops_and_reminders_keep_their_interval(rule, plan):
    _, events = simulate(RuleEngine([rule]), rule, plan)
    rank = {"warning": 0, "critical": 1}
    last: dict[str, AlertEvent] = {}
    for e in events:
        before = last.get(e.incident)
        if before is not None:
            assert rank[e.severity] >= rank[before.severity]
            if e.kind == "reminder":
                assert rule.repeat and e.at - before.at >= rule.repeat
        last[e.incident] = e


@PROPERTY
@given(rules(), steps)
def test_without_flap_detection_firing_and_resolved_alternate(rule, plan):
    rule = dataclasses.replace(rule, flapping=False)
    _, events = simulate(RuleEngine([rule]), rule, plan)
    changes = [e.kind for e in events if e.kind in ("firing", "resolved")]
    assert changes == ["firing", "resolved"] * (len(changes) // 2) + ["firing"] * (len(changes) % 2)


@PROPERTY
@given(rules(), steps)
def test_same_input_gives_same_events(rule, plan):
    assert simulate(RuleEngine([rule]), rule, plan)[1] == simulate(RuleEngine([rule]), rule, plan)[1]


@PROPERTY
@given(rules(), steps, steps)
# A quiet series left out of the snapshot must count flap changes as one never seen.
@example(Rule("r", "m", above=80.0, clear=60.0), [(0.5, 0)], [(0.5, 80.1), (0.5, 0), (0.5, 80.1), (0.5, 0)])
def test_restart_from_snapshot_changes_nothing(rule, first, second):
    straight = RuleEngine([rule])
    samples, _ = simulate(straight, rule, first)
    start = samples[-1][0] if samples else 0.0
    saved = json.loads(json.dumps(straight.snapshot()))
    restarted = RuleEngine([rule])
    restarted.restore(saved)
    assert simulate(restarted, rule, second, start + 1000)[1] == simulate(straight, rule, second, start + 1000)[1]


@PROPERTY
@given(st.sampled_from([5.0, 25.0, 60.0]), st.booleans(), steps)
def test_absent_fires_only_after_silence_and_resolves_on_the_next_sample(absent, labelled, plan):
    rule = Rule("r", "m", labels={"host": "*"} if labelled else {}, absent=absent, repeat=30)
    engine = RuleEngine([rule])
    labels = {"host": "a"}
    t, seen, events = 0.0, [], []
    for dt, value in plan:
        t += dt
        if value is not None:
            seen.append(t)
            events += engine.observe([Sample("m", value, labels, t)], t)
        events += engine.tick(t)
    start = plan[0][0]
    for e in events:
        assert e.comparison == "absent"
        before = [s for s in seen if s <= e.at]
        if e.kind == "firing":
            assert e.at - (before[-1] if before else start) >= absent
            assert e.since == (before[-1] if before else start)
            assert e.labels == (() if not before else tuple(labels.items()))
        elif e.kind == "resolved":
            assert e.at in seen
    opened = [e.incident for e in events if e.kind == "firing"]
    closed = [e.incident for e in events if e.kind == "resolved"]
    assert len(set(opened)) == len(opened) and set(closed) <= set(opened)


@PROPERTY
@given(st.lists(st.tuples(st.floats(0, 5), st.floats(-1e6, 1e6)), min_size=1, max_size=400), st.sampled_from([1.0, 10.0, 60.0]))
# A large value that left the window used to leave its rounding in the running sum: avg -2.4e-12 over zeros.
@example(
    points=[
        (0.0, 0.0),
        (1.0, 0.0),
        (1.0, 0.0),
        (1.0, 0.0),
        (1.0, 1.0),
        (1.0, 65535.48123698863),
        (3.0, 0.0),
        (5.0, 0.0),
        (3.0, 0.0),
    ],
    span=10.0,
)
def test_window_memory_stays_bounded_and_min_max_bracket_the_window(points, span):
    window = Window(span)
    t = 0.0
    fed: list[tuple[float, float]] = []
    for dt, v in points:
        t += dt
        window.add(t, v)
        fed.append((t, v))
        assert len(window) <= WINDOW_BUCKETS + 1
    # The window holds (t - span, t] plus at most one bucket width before it.
    inside = [v for ts, v in fed if ts > t - span]
    slack = [v for ts, v in fed if ts > t - span - window.width]
    assert min(slack) <= window.value("min") <= min(inside)
    assert max(inside) <= window.value("max") <= max(slack)
    ulp = 1e-9 * max(map(abs, slack)) + 1e-12  # a mean of equal floats may round past them
    assert min(slack) - ulp <= window.value("avg") <= max(slack) + ulp


@PROPERTY
@given(st.floats(0.01, 1000), st.lists(st.floats(0.1, 20), min_size=2, max_size=100))
def test_rate_of_a_steady_counter_is_its_slope(slope, gaps):
    window = Window(60)
    t = 0.0
    for gap in gaps:
        window.add(t, 5000 + slope * t)
        t += gap
    rate = window.value("rate")
    assert rate is None or abs(rate - slope) <= 1e-6 * slope
