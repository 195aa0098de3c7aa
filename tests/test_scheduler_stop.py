"""A probe run that the stop cancels before it began is dropped quietly, not logged as a failed job."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from apscheduler.events import EVENT_JOB_SUBMITTED
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from alertmail.agent import _CANCELLED_JOB, quiet_cancelled_jobs

EXECUTOR_LOG = "apscheduler.executors.default"


def stop_before_the_first_step() -> list[int]:
    """A real scheduler that is shut down (as the agent's stop does) right after it hands a
    run to the event loop, before the run's first step: the run is cancelled unstarted."""
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    async def scenario() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        submitted: list[object] = []
        scheduler.add_listener(submitted.append, EVENT_JOB_SUBMITTED)
        scheduler.start()
        await asyncio.sleep(0.05)
        # Both go through the event loop in this order: the due run is handed over (its task's
        # first step queued behind the shutdown), then the shutdown cancels it. That is the
        # agent's stop coming just as a probe interval falls due.
        scheduler.add_job(job, "interval", seconds=30, next_run_time=datetime.now(UTC))
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0.3)
        assert len(submitted) == 1, "the run was not handed to the executor"

    asyncio.run(scenario())
    return ran


def failed_job_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == EXECUTOR_LOG and r.levelno >= logging.ERROR]


def test_a_run_cancelled_before_it_began_is_not_logged_as_a_failed_job(caplog):
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOG)
    logging.getLogger(EXECUTOR_LOG).removeFilter(_CANCELLED_JOB)
    # apscheduler alone logs that cancel as an error with a traceback (the stop tests saw it).
    assert stop_before_the_first_step() == []
    [record] = failed_job_records(caplog)
    assert "Error running job" in record.getMessage() and isinstance(record.exc_info[1], asyncio.CancelledError)
    caplog.clear()

    quiet_cancelled_jobs()
    quiet_cancelled_jobs()  # once per process, however many agents start
    assert logging.getLogger(EXECUTOR_LOG).filters.count(_CANCELLED_JOB) == 1
    assert stop_before_the_first_step() == []
    assert failed_job_records(caplog) == []


def test_a_job_that_fails_is_still_logged(caplog):
    quiet_cancelled_jobs()
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOG)

    async def broken() -> None:
        raise RuntimeError("probe exploded")

    async def scenario() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(broken, "interval", seconds=30, next_run_time=datetime.now(UTC))
        scheduler.start()
        await asyncio.sleep(0.3)
        scheduler.shutdown(wait=False)

    asyncio.run(scenario())
    [record] = failed_job_records(caplog)
    assert isinstance(record.exc_info[1], RuntimeError)


def test_a_run_cancelled_while_it_goes_on_is_not_logged_as_a_failed_job(caplog):
    quiet_cancelled_jobs()
    caplog.set_level(logging.DEBUG, logger=EXECUTOR_LOG)
    began = []

    async def slow_probe() -> None:
        began.append(1)
        await asyncio.sleep(30)

    async def scenario() -> None:
        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(slow_probe, "interval", seconds=60, next_run_time=datetime.now(UTC))
        scheduler.start()
        while not began:
            await asyncio.sleep(0.01)
        scheduler.shutdown(wait=False)  # as the agent's stop does, the run still sleeping
        await asyncio.sleep(0.3)

    asyncio.run(scenario())
    assert began == [1]
    assert failed_job_records(caplog) == []
