"""Chart history stays bounded: series that stop reporting are dropped, by History and by the agent's tick."""

from __future__ import annotations

import asyncio

from alertmail.agent import HISTORY_SWEEP, Agent
from alertmail.config.load import Config
from alertmail.model import Sample, freeze_labels
from alertmail.probes.history import History
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
    cfg = Config(path=tmp_path / "config.toml", agent={"state_dir": tmp_path}, mail={"to": []}, rules=[rule])
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
