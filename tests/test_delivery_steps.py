"""The queue's retry times across a step of the wall clock, with the real queue, delivery and
transports (pickup, and smtp to a port nobody listens on), the wall clock stepped by the test.

A step moves the next tries set before it and only those: a message queued after a step
forward, before the dispatcher has looked at the clock, must not wait as long as the step.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from alertmail.clock import WallClock
from alertmail.delivery.delivery import Delivery
from alertmail.model import Envelope
from alertmail.queue.spool import Queue
from tests.peers import free_port
from tests.test_delivery import FAST, alert, eventually, pickup_messages, pickup_transport, smtp_transport

DEFERRED_FOR = 600.0


class SteppedWall:
    """The real wall clock plus an offset the test steps."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.mark.parametrize("step", [3600.0, -3600.0])
def test_a_message_queued_after_a_step_goes_at_once_and_a_deferred_one_keeps_its_wait(tmp_path, step):
    wall = SteppedWall()
    out = tmp_path / "out"
    transports = {
        "pickup": pickup_transport(tmp_path, out),
        "smtp": smtp_transport(f"127.0.0.1:{free_port()}", tmp_path),  # refused: deferred
    }
    # The dispatcher sleeps until a message wakes it: no scan looks at the clock in between.
    settings = replace(FAST, retry=[DEFERRED_FOR], expire=86400.0, scan_interval=3600.0, concurrency=4)

    async def scenario() -> tuple[float, float]:
        queue = Queue(tmp_path / "queue", clock=wall)
        await queue.start()
        delivery = Delivery(queue, transports, settings, state_dir=tmp_path, hostname="agent.test", default_route=["pickup"])
        delivery._clock = WallClock(wall=wall)  # the queue's times are read and checked through it
        await delivery.start()
        try:
            deferred = await queue.put(alert("deferred"), Envelope("a@test.example", ("ops@test.example",)), route=["smtp"])
            entry = queue.get(deferred)
            assert entry is not None
            await eventually(lambda: entry.attempts == 1)
            waits_before = entry.next_try - wall()
            wall.offset += step
            await queue.put(alert("after the step"), Envelope("a@test.example", ("ops@test.example",)), route=["pickup"])
            await eventually(lambda: pickup_messages(out), timeout=5.0)
            return waits_before, entry.next_try - wall()
        finally:
            await delivery.stop()
            await transports["smtp"].close()  # pickup keeps nothing open
            await queue.close()

    waits_before, waits_after = asyncio.run(scenario())
    [mail] = pickup_messages(out)
    assert mail["Subject"] == "after the step"
    assert DEFERRED_FOR - 10 < waits_before <= DEFERRED_FOR
    # The deferred message was moved by the step, once: its wait kept its length.
    assert waits_before - 10 < waits_after <= waits_before, (waits_before, waits_after)
