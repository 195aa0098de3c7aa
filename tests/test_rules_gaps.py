"""What the engine does when data is thin: windows that are not yet covered, gaps, NaN, a pending alert whose samples stop.

Each test pins a sentence of docs/rules.md ("Windows", "When samples stop or say nothing").
"""

from __future__ import annotations

import math

import pytest

from alertmail.model import Sample
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import AlertEvent, Rule, State
from alertmail.rules.window import Window


def feed(engine: RuleEngine, points, metric: str = "m") -> list[AlertEvent]:
    """(time, value) points of one series, a tick after each; every event in order."""
    events: list[AlertEvent] = []
    for t, v in points:
        events += engine.observe([Sample(metric, v, {}, t)], t)
        events += engine.tick(t)
    return events


def kinds(events) -> list[tuple[float, str]]:
    return [(e.at, e.kind) for e in events]


def counter(start: float, end: float, per_second: float, step: float = 10.0, base: float = 0.0):
    """A counter growing ``per_second``, sampled every ``step`` seconds from ``start`` (inclusive) to ``end`` (exclusive)."""
    t = start
    while t < end:
        yield t, base + (t - start) * per_second
        t += step


# -- coverage: a window decides once its samples span min_coverage of it ----------------


def test_a_five_minute_rate_waits_until_its_samples_span_half_the_window():
    # A counter that grows 100/s from the first sample: a rate of 100 > 5 all along.
    engine = RuleEngine([Rule("errors-fast", "errors", above=5, over=300, agg="rate")])
    events = feed(engine, counter(0, 400, 100), metric="errors")
    # Not at 10 s on two samples: at 150 s, when the samples span half of 5 minutes.
    assert kinds(events) == [(150, "firing")]
    assert events[0].value == pytest.approx(100)


@pytest.mark.parametrize("agg", ["avg", "min", "max", "last"])
def test_every_aggregate_waits_for_the_same_coverage(agg):
    engine = RuleEngine([Rule("hot", "m", above=50, over=300, agg=agg)])
    events = feed(engine, [(t, 90) for t in range(0, 400, 10)])
    assert kinds(events) == [(150, "firing")]


def test_min_coverage_sets_the_fraction_and_one_means_the_whole_window():
    quarter = RuleEngine([Rule("q", "errors", above=5, over=300, agg="rate", min_coverage=0.25)])
    whole = RuleEngine([Rule("w", "errors", above=5, over=300, agg="rate", min_coverage=1.0)])
    points = list(counter(0, 400, 100))
    assert kinds(feed(quarter, points, metric="errors")) == [(80, "firing")]  # 75 s needed; samples every 10 s
    # The whole window is reachable with periodic samples: counted from the first sample of the run.
    assert kinds(feed(whole, points, metric="errors")) == [(300, "firing")]


def test_the_window_is_t_minus_over_to_t_with_the_old_edge_left_out():
    window = Window(60)
    window.add(0, 100.0)
    window.add(30, 1.0)
    window.add(60, 2.0)  # the window is now (0, 60]: the sample at 0 is out of it
    assert (window.value("max"), window.value("min")) == (2.0, 1.0)


def test_a_gap_as_long_as_the_window_starts_coverage_again():
    engine = RuleEngine([Rule("hot", "m", above=50, over=300, agg="avg")])
    # Healthy and covered, then nothing for 10 minutes, then high values.
    assert feed(engine, [(t, 10) for t in range(0, 300, 10)]) == []
    events = feed(engine, [(t, 90) for t in range(900, 1200, 10)])
    # The first high sample alone does not decide: the window waits until 150 s of the new run.
    assert kinds(events) == [(1050, "firing")]


def test_a_gap_shorter_than_the_window_keeps_deciding_on_what_the_window_holds():
    engine = RuleEngine([Rule("hot", "m", above=50, over=300, agg="max")])
    assert feed(engine, [(t, 10) for t in range(0, 300, 10)]) == []
    # 200 s without samples; the first one after the gap decides at once (the window still spans > 150 s).
    assert kinds(feed(engine, [(490, 90)])) == [(490, "firing")]


def test_an_uncovered_window_leaves_a_firing_alert_firing_until_it_decides_again():
    engine = RuleEngine([Rule("hot", "m", above=50, over=300, agg="avg")])
    assert kinds(feed(engine, [(t, 90) for t in range(0, 300, 10)])) == [(150, "firing")]
    # After a gap longer than the window, low values: no recovery until 150 s of them are in the window.
    events = feed(engine, [(t, 10) for t in range(1000, 1300, 10)])
    assert kinds(events) == [(1150, "resolved")]


def test_min_coverage_is_checked_by_the_rule():
    problems = dict(Rule("r", "m", above=1, over=60, agg="avg", min_coverage=0).problems())
    assert "above 0 and at most 1" in problems["min_coverage"]
    assert "min_coverage" in dict(Rule("r", "m", above=1, over=60, agg="avg", min_coverage=1.5).problems())
    with pytest.raises(ValueError, match="min_coverage"):
        RuleEngine([Rule("r", "m", above=1, over=60, agg="avg", min_coverage=2)])


# -- NaN ---------------------------------------------------------------------------------


def test_nan_changes_no_state_firing_stays_firing_and_pending_stays_pending():
    engine = RuleEngine([Rule("hot", "m", above=90), Rule("slow", "m2", above=90, for_=30)])
    assert kinds(feed(engine, [(0, 95)])) == [(0, "firing")]
    assert feed(engine, [(t, math.nan) for t in range(10, 100, 10)]) == []
    assert feed(engine, [(0, 95), (10, math.nan), (40, math.nan)], metric="m2") == []
    states = {s.rule.name: s for s in engine.states(100)}
    assert states["hot"].state is State.FIRING and states["hot"].value == 95
    assert states["slow"].state is State.PENDING
    # NaN is no evidence that the condition held: the next real sample decides.
    assert kinds(feed(engine, [(50, 95)], metric="m2")) == [(50, "firing")]


def test_nan_stays_out_of_windows():
    engine = RuleEngine([Rule("hot", "m", above=50, over=60, agg="avg")])
    events = feed(engine, [(0, 90), (10, math.nan), (20, math.nan), (30, 90)])
    assert kinds(events) == [(30, "firing")] and events[0].value == 90


def test_a_nan_sample_counts_as_reporting_for_absent():
    engine = RuleEngine([Rule("quiet", "m", above=90, absent=60)])
    assert kinds(feed(engine, [(0, 10), (60, math.nan)])) == []
    assert kinds(engine.tick(119)) == []
    assert kinds(engine.tick(120)) == [(120, "firing")]  # 60 s after the NaN
    assert kinds(feed(engine, [(130, math.nan)])) == [(130, "resolved")]


# -- samples stop ---------------------------------------------------------------------------


def test_a_pending_alert_whose_samples_stop_stays_pending_and_time_alone_never_fires_it():
    engine = RuleEngine([Rule("slow", "m", above=90, for_=60)])
    feed(engine, [(0, 95), (10, 95)])
    for t in range(20, 7200, 10):
        assert engine.tick(t) == []
    assert [(s.state, s.since) for s in engine.states(7200)] == [(State.PENDING, 0)]


def test_a_pending_alert_fires_on_the_first_bad_sample_after_a_gap_counting_from_before_it():
    engine = RuleEngine([Rule("slow", "m", above=90, for_=60)])
    feed(engine, [(0, 95), (10, 95)])
    events = feed(engine, [(600, 95)])
    assert kinds(events) == [(600, "firing")] and events[0].since == 0


def test_a_pending_alert_returns_to_ok_on_the_first_good_sample_after_a_gap():
    engine = RuleEngine([Rule("slow", "m", above=90, for_=60)])
    feed(engine, [(0, 95), (10, 95)])
    assert feed(engine, [(600, 50), (610, 95), (620, 95)]) == []
    assert [(s.state, s.since) for s in engine.states(620)] == [(State.PENDING, 610)]


def test_a_firing_alert_whose_samples_stop_keeps_firing_and_reminding_with_its_last_value():
    engine = RuleEngine([Rule("hot", "m", above=90, repeat=300)])
    feed(engine, [(0, 95)])
    events = engine.tick(299) + engine.tick(300) + engine.tick(3600)
    assert kinds(events) == [(300, "reminder"), (3600, "reminder")]
    assert {e.value for e in events} == {95}
    assert [s.state for s in engine.states(3600)] == [State.FIRING]


def test_a_value_back_below_the_line_before_the_gap_resolves_once_keep_firing_for_has_passed():
    engine = RuleEngine([Rule("hot", "m", above=90, keep_firing_for=120)])
    feed(engine, [(0, 95), (10, 50)])  # back at 10, then no more samples
    assert engine.tick(129) == []
    assert kinds(engine.tick(130)) == [(130, "resolved")]


def test_a_healthy_series_that_stops_is_forgotten_after_forget_after_and_its_window_with_it():
    engine = RuleEngine([Rule("hot", "m", above=50, over=300, agg="avg")], forget_after=600)
    feed(engine, [(t, 10) for t in range(0, 300, 10)])
    engine.tick(290 + 599)
    assert engine.states(889)[0].labels == () and engine.states(889)[0].note == ""
    engine.tick(290 + 600)
    assert engine.states(890)[0].note == "no matching series"
