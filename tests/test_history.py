"""Chart history stays bounded (series that stop reporting are dropped, by History and by the agent's tick)
and survives a restart."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time

import pytest

from alertmail.agent import HISTORY_SWEEP, Agent
from alertmail.config.core import AgentSettings, MailSettings
from alertmail.config.load import Config
from alertmail.model import Sample, freeze_labels
from alertmail.probes.history import History, decode, encode
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import Rule

T0 = 1_800_000_000.0
WINDOW = 3600.0
METRIC = "proc.rss_bytes"
LIVE = freeze_labels({"pid": "live"})


def gone(at: float) -> list[Sample]:
    """One sample each from 10,000 processes that then exit."""
    return [Sample(METRIC, 1.0, {"pid": str(pid)}, at) for pid in range(10_000)]


def test_series_that_stop_reporting_are_dropped_after_the_window_while_a_reporting_one_is_kept():
    history = History(window=WINDOW)
    history.add(gone(T0))
    for t in range(0, int(WINDOW) + 60, 60):
        history.add([Sample(METRIC, 2.0, LIVE, T0 + t)])
    assert len(history) == 10_001

    history.forget_idle(T0 + WINDOW)  # their newest point is exactly one window old: still inside it
    assert len(history) == 10_001

    history.forget_idle(T0 + WINDOW + 1)
    assert len(history) == 1
    assert history.get(METRIC, freeze_labels({"pid": "0"})) == []
    kept = history.get(METRIC, LIVE)
    assert kept[-1] == (T0 + WINDOW, 2.0) and len(kept) == int(WINDOW // 60) + 1


def test_the_agent_tick_drops_history_of_series_that_stopped_reporting(tmp_path):
    rule = Rule(name="rss-huge", metric=METRIC, above=1e15, to=("ops@example.test",))
    cfg = Config(path=tmp_path / "config.toml", agent=AgentSettings(state_dir=tmp_path), mail=MailSettings(to=[]), rules=[rule])
    agent = Agent(cfg, plugins=None)
    sizes: dict[float, int] = {}

    async def run() -> None:
        agent._mail_queue = asyncio.Queue()  # start() makes it; a tick only hands its events over to it
        await agent.observe(gone(T0), T0)
        t = T0
        while t <= T0 + WINDOW + 2 * HISTORY_SWEEP:
            await agent.observe([Sample(METRIC, 2.0, LIVE, t)], t)
            await agent.tick(t)
            sizes[t - T0] = len(agent.history)
            t += HISTORY_SWEEP

    asyncio.run(run())
    assert sizes[0] == sizes[WINDOW] == 10_001
    assert sizes[WINDOW + HISTORY_SWEEP] == 1
    assert agent.history.get(METRIC, LIVE)


# -- across restarts ---------------------------------------------------------------


def test_saved_history_comes_back_without_points_older_than_the_window_or_from_the_future(tmp_path):
    path = tmp_path / "history.json"
    history = History(window=WINDOW)
    history.add([Sample(METRIC, float(i), LIVE, T0 + 60 * i) for i in range(90)])  # 89 minutes: the first 29 fall out
    history.add([Sample("m.nan", math.nan, {}, T0 + 5000)])
    history.save(path)
    now = T0 + 60 * 89 + 600  # ten minutes later: ten more minutes fall out
    back = History(window=WINDOW)
    assert back.load(path, now) == 51 + 1
    points = back.get(METRIC, LIVE)
    assert points[0] == (T0 + 60 * 39, 39.0) and points[-1] == (T0 + 60 * 89, 89.0)
    assert math.isnan(back.get("m.nan", ())[0][1])
    clock_back = History(window=WINDOW)
    assert clock_back.load(path, T0 + 60 * 50) == 22  # minutes 29 to 50: points after "now" are not history
    assert clock_back.get(METRIC, LIVE)[-1] == (T0 + 60 * 50, 50.0)


def test_loading_keeps_only_series_a_rule_still_watches_and_merges_points_that_came_first(tmp_path):
    path = tmp_path / "history.json"
    history = History(window=WINDOW)
    history.add([Sample(METRIC, 1.0, LIVE, T0), Sample("gone.metric", 1.0, {}, T0)])
    history.save(path)
    back = History(window=WINDOW)
    back.add([Sample(METRIC, 2.0, LIVE, T0 + 30)])
    assert back.load(path, T0 + 60, keep=lambda metric, labels: metric == METRIC) == 1
    assert back.get(METRIC, LIVE) == [(T0, 1.0), (T0 + 30, 2.0)] and back.get("gone.metric", ()) == []


@pytest.mark.parametrize(
    "data",
    [b"{not json", b"\xff\xfe", b"[]", b'{"version": 7, "series": []}', b'{"version": 1, "series": [{"metric": 3}]}'],
)
def test_a_damaged_history_file_is_ignored_with_a_warning(tmp_path, caplog, data):
    path = tmp_path / "history.json"
    path.write_bytes(data)
    history = History(window=WINDOW)
    with caplog.at_level(logging.WARNING, logger="alertmail.history"):
        assert history.load(path, T0) == 0
    assert len(history) == 0
    assert f"chart history {path} is damaged" in caplog.text and "charts start empty" in caplog.text


def test_the_saved_file_is_bounded_keeping_the_newest_points_of_every_series():
    series = [(METRIC, freeze_labels({"pid": str(p)}), [(T0 + t, 1.0) for t in range(700)]) for p in range(1000)]
    saved = decode(encode(series, max_points=10_000))
    assert sum(len(points) for _, _, points in saved) == 10_000 and len(saved) == 1000
    assert all(points[0][0] == T0 + 690 and points[-1][0] == T0 + 699 for _, _, points in saved)
    # More series than points to share: the ones that reported last are kept.
    series[7][2].append((T0 + 5000, 2.0))
    saved = decode(encode(series, max_points=3))
    assert (dict(saved[0][1])["pid"], saved[0][2][-1]) == ("7", (T0 + 5000, 2.0))
    assert len(saved) == 3


def test_a_restarted_agent_has_the_chart_history_from_before_the_restart(tmp_path):
    from tests.test_reload import Agent as Process
    from tests.test_reload import config_text

    saved = tmp_path / "var" / "history.json"
    first = Process(tmp_path, config_text('"pickup"'))
    try:
        time.sleep(3)  # the gauge reports every 0.5 s
    finally:
        first.stop()
    stopped = time.time()
    before = [t for t, _ in dict_of(saved)[("test.gauge", ())]]
    assert len(before) >= 3 and max(before) < stopped

    second = Process(tmp_path, config_text('"pickup"'))
    try:
        # The gauge's series and those of the agent's own rules (probe failures, overruns).
        assert re.search(rf"chart history: \d+ points of \d+ series taken back from {re.escape(str(saved))}", second.output())
        time.sleep(2)
    finally:
        second.stop()
    after = [t for t, _ in dict_of(saved)[("test.gauge", ())]]
    assert set(before) <= set(after) and max(after) > stopped  # the old points, then the new ones: no gap


def dict_of(path):
    return {(metric, labels): points for metric, labels, points in decode(path.read_bytes())}


def test_over_windows_start_from_the_saved_history_after_a_restart(tmp_path):
    rule = Rule(name="errors-fast", metric="app.errors", above=5, over=300, agg="rate", to=("ops@example.test",))
    cfg = Config(path=tmp_path / "config.toml", agent=AgentSettings(state_dir=tmp_path), mail=MailSettings(to=[]), rules=[rule])
    now = time.time()
    before = Agent(cfg, plugins=None)

    async def run() -> None:
        before._mail_queue = asyncio.Queue()  # start() makes it; the events are handed over to it
        for i in range(20):
            await before.observe([Sample("app.errors", 100.0 * i, {}, now - 250 + 10 * i)], now - 250 + 10 * i)

    asyncio.run(run())
    before._save_history()

    after = Agent(cfg, plugins=None)
    after._load_history()
    assert after.engine.states(now)[0].state.value == "ok"  # priming decides nothing by itself
    # The window holds 190 s from before the restart: the first live sample decides at once.
    events = after.engine.observe([Sample("app.errors", 2000.0 + 100.0, {}, now)], now)
    assert [e.kind for e in events] == ["firing"] and events[0].value > 5

    cold = RuleEngine([rule])
    assert cold.observe([Sample("app.errors", 2100.0, {}, now)], now) == []  # what a restart used to mean


def test_priming_fills_only_windows_and_skips_nan():
    engine = RuleEngine([Rule("avg", "m", above=50, over=60, agg="avg"), Rule("plain", "m", above=50)])
    assert engine.prime([Sample("m", 90.0, {}, T0 + t) for t in range(0, 60, 10)] + [Sample("m", math.nan, {}, T0 + 61)]) == 6
    assert [(s.rule.name, s.value, s.state.value) for s in engine.states(T0 + 61)] == [
        ("avg", None, "ok"),
        ("plain", None, "ok"),
    ]
    assert [e.rule.name for e in engine.observe([Sample("m", 10.0, {}, T0 + 62)], T0 + 62)] == ["avg"]
