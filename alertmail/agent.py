"""The running agent: probes on a schedule, rules, notifier, queue, delivery, services.

    probes --samples--> rules --events--> notifier --mail--> queue --> delivery

A probe that raises or overruns its interval is not skipped in silence: it turns
into the samples ``agent.probe_failed{probe}`` / ``agent.probe_overrun{probe}``,
which built-in rules watch like any other metric, so it ends up in a mail.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alertmail.clock import WallClock, describe, reschedule
from alertmail.config.load import Config
from alertmail.exitcodes import ExitCode
from alertmail.exporter import SECTION as EXPORTER
from alertmail.fsutil import write_atomic
from alertmail.memory import release_free_memory
from alertmail.model import Sample
from alertmail.notify import heartbeat
from alertmail.probes.history import MAX_SAVED_POINTS, History
from alertmail.rules.engine import RuleEngine
from alertmail.rules.model import AlertEvent, Rule, State
from alertmail.sdnotify import ServiceManager
from alertmail.units import format_duration

if TYPE_CHECKING:
    from alertmail.notify.runtime_silences import SilenceSet

log = logging.getLogger("alertmail.agent")


class _CancelledJob(logging.Filter):
    """Drops apscheduler's "Error running job" record for a job run that was cancelled.

    apscheduler's asyncio executor cancels the runs in flight at ``shutdown()``, which only the
    agent's stop calls, and logs each cancel as a failed job, with a traceback: whether the run
    had begun or was cancelled before its first step, where no handler in the job can take it.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, asyncio.CancelledError)


_CANCELLED_JOB = _CancelledJob()


def quiet_cancelled_jobs() -> None:
    """Install the filter on apscheduler's executor log (once per process)."""
    executor_log = logging.getLogger("apscheduler.executors.default")
    if _CANCELLED_JOB not in executor_log.filters:
        executor_log.addFilter(_CANCELLED_JOB)


# `alertmail run` exits within this many seconds of SIGTERM or SIGINT, whatever the queue and
# transports are doing (README "Stopping", docs/queue.md). The orderly stop aims to be done
# STOP_MARGIN earlier; a watchdog ends the process at STOP_BOUND - STOP_MARGIN / 2.
STOP_BOUND = 10.0
STOP_MARGIN = 2.0

# How often the tick drops the chart history of series that stopped reporting: each sweep walks every series.
HISTORY_SWEEP = 60.0
# How often the chart history is written to state_dir (and at stop): a crash loses at most this much of the charts.
HISTORY_SAVE = 60.0


# A rule that matched no series for this many probe intervals is reported (once): likely a misspelt metric.
SILENT_AFTER = 10

# [agent] keys a reload cannot apply: the queue's folder and its lock, the plugins loaded, how logs are written.
RESTART_KEYS = ("state_dir", "plugin_dirs", "disable_plugins", "log_format", "event_loop")


def self_rules(cfg: Config) -> list[Rule]:
    """Rules on the agent's own health, mailed to [mail].to."""
    to = tuple(cfg.mail.to)
    if not to:
        return []
    # A single failed or slow run is logged; a mail needs it to persist, and the
    # recovery waits for a quiet spell, so a hiccup does not become two mails.
    return [
        Rule(
            name="agent-probe-failed",
            metric="agent.probe_failed",
            above=0.5,
            for_=30.0,
            keep_firing_for=300.0,
            severity="warning",
            to=to,
            flapping=False,
            description="a probe raised an error or returned bad data; see the agent's log",
        ),
        Rule(
            name="agent-probe-overrun",
            metric="agent.probe_overrun",
            above=0.5,
            for_=60.0,
            keep_firing_for=300.0,
            severity="warning",
            to=to,
            flapping=False,
            description="a probe keeps taking longer than its timeout; its interval may be too short",
        ),
        Rule(
            name="agent-queue-held",
            metric="agent.queue_held",
            above=0.5,
            severity="critical",
            to=to,
            flapping=False,
            description=(
                "queued mail cannot leave: its route names this transport, which the config no longer has; "
                "`alertmail queue list` shows it; add the transport or change the route and reload, "
                "or it goes to badmail at [queue].expire"
            ),
        ),
    ]


class Agent:
    def __init__(self, cfg: Config, plugins: Any) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.state_dir = Path(cfg.state_dir)
        self.rules = [*cfg.rules, *self_rules(cfg)]
        # The loop keeps only weak references to tasks: one nobody holds may vanish mid-run.
        self._observing: set[asyncio.Task[Any]] = set()
        self.engine = RuleEngine(self.rules)
        self.history = History()
        self._history_swept = 0.0  # when the tick last dropped idle series from the history
        self._history_file = self.state_dir / "history.json"
        self._history_saved = time.monotonic()  # when the history was last written (monotonic clock)
        self._history_saving: asyncio.Task[None] | None = None
        # Rules that have not yet matched a sample; warned about once, after SILENT_AFTER intervals.
        self._silent_rules = {rule.name for rule in cfg.rules}
        self._started = time.time()
        self.probes: dict[str, Any] = {}
        self.missed: dict[str, int] = {}
        self._groups: dict[str, list[str]] = {}  # scheduler job id -> probes sharing that interval
        self._stop = asyncio.Event()
        self._state_file = self.state_dir / "rules-state.json"
        self.manager = ServiceManager()  # systemd's notify socket, when there is one
        self._reloading = asyncio.Lock()  # two SIGHUPs in a row apply one after the other
        self._status = ""
        self._held: dict[str, int] = {}  # agent.queue_held{transport} last observed
        self.exporter: Any = None  # serves /metrics when [exporter] listen is set
        self.clock = WallClock()  # wall-clock times, checked against the monotonic clock for steps
        self._ticking: asyncio.Task[None] | None = None
        # For `alertmail status` (alertmail/control.py): each probe's last run, the last reload's outcome.
        self.probe_runs: dict[str, dict[str, Any]] = {}
        self.last_reload: dict[str, Any] | None = None
        self.control: Any = None

    # -- probes ------------------------------------------------------------
    def _configure_probes(self) -> dict[str, tuple[Any, float, float]]:
        """name -> (probe, interval, timeout) for every enabled probe that takes its options."""
        from alertmail.probes.runner import configure_probe, probe_settings

        out = {}
        for name, probe in self.plugins.probes.items():
            settings = probe_settings(self.cfg, name, probe)
            if not settings.enabled:
                continue
            try:
                problems = configure_probe(name, probe, settings.options)
            except Exception:
                log.exception("probe %s failed to take its options; it does not run", name)
                continue
            if problems:  # load_config checked these already; a plugin may still change its mind
                log.error("probe %s does not run: %s", name, "; ".join(problems))
                continue
            out[name] = (probe, settings.interval, settings.timeout)
        return out

    async def run_probe(self, name: str, probe: Any, timeout: float) -> None:
        from alertmail.probes.runner import run_probe

        stepped = self.clock.stepped
        try:
            result = await run_probe(probe, timeout)
        except asyncio.CancelledError:
            if self._stop.is_set():
                return  # the agent is stopping; the run is simply dropped
            raise
        now = self.now()
        if self.clock.stepped != stepped:
            result.samples = _restamped(result.samples, self.clock.stepped - stepped, now)
        health = [
            Sample("agent.probe_failed", 1.0 if result.error and not result.timed_out else 0.0, {"probe": name}, now),
            Sample("agent.probe_overrun", 1.0 if result.timed_out else 0.0, {"probe": name}, now),
            Sample("agent.probe_seconds", result.duration, {"probe": name}, now),
        ]
        if result.error:
            log.error("probe %s: %s", name, result.error)
        run = self.probe_runs.setdefault(name, {"runs": 0, "failures": 0})
        run.update(last=now, duration=result.duration, runs=run["runs"] + 1, error=result.error or "")
        run["failures"] += 1 if result.error else 0
        await self.observe([*result.samples, *health], now)

    async def observe(self, samples: list[Sample], now: float) -> None:
        watched = []
        for sample in samples:
            hits = [rule.name for rule in self.rules if rule.matches(sample)]
            if hits:
                watched.append(sample)
                self._silent_rules.difference_update(hits)
        self.history.add(watched)
        if self.exporter is not None:
            self.exporter.observe(samples)
        events = self.engine.observe(samples, now)
        if events:
            self._hand_over(events, now)

    async def tick(self, now: float | None = None) -> None:
        """Time-driven work: reminders, absent series, waits that end; now and then, history of series gone quiet."""
        now = self.now() if now is None else now
        self._hand_over(self.engine.tick(now), now)
        if now - self._history_swept >= HISTORY_SWEEP:
            # Probes report series that end (a process exits, a disk is unmounted); without this they stay forever.
            self.history.forget_idle(now)
            self._history_swept = now
            release_free_memory()  # what start-up, a reload or the first mail left behind
        if time.monotonic() - self._history_saved >= HISTORY_SAVE and (
            self._history_saving is None or self._history_saving.done()
        ):
            self._history_saved = time.monotonic()
            # Copied here, between samples; encoded and written off the event loop.
            series = self.history.copy(MAX_SAVED_POINTS)
            self._history_saving = asyncio.create_task(asyncio.to_thread(self._save_history, series))
            if any(rule.absent for rule in self.rules) and hasattr(self, "_mail_queue"):
                # When each series was last seen, saved (once the notifier is settled) so a crash cannot make
                # a series that stops while the agent is down go unreported.
                self._mail_queue.put_nowait(([], now, self.engine.snapshot(), self.clock.stepped))
        self._report_status(now)
        self._warn_silent_rules(now)
        await self._observe_held(now)

    async def _observe_held(self, now: float) -> None:
        """``agent.queue_held{transport}``: queued messages held for a transport the config lacks (on change)."""
        delivery = getattr(getattr(self, "outbox", None), "delivery", None)
        held = delivery.held_by_transport() if delivery is not None else {}
        if held != self._held:
            gone = {t: 0 for t in self._held if t not in held}
            self._held = held
            samples = [Sample("agent.queue_held", float(n), {"transport": t}, now) for t, n in {**gone, **held}.items()]
            await self.observe(samples, now)

    def now(self) -> float:
        """The wall-clock time; a step of the wall clock since the last call is applied first (``on_clock_step``)."""
        step = self.clock.check()
        if step:
            self.on_clock_step(step)
        return self.clock.now()

    def on_clock_step(self, step: float) -> None:
        """The wall clock was stepped by ``step`` seconds: every time the agent keeps moves with it, so
        ``for``, windows, ``absent``, reminders, group waits and digests keep counting on the monotonic clock."""
        log.warning("wall clock stepped by %s; alert timers keep counting on the monotonic clock", describe(step))
        self.engine.shift(step)
        self.history.shift(step)
        if hasattr(self, "notifier"):
            self.notifier.shift(step)
        self._started += step
        self._history_swept += step
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None and scheduler.running:
            reschedule(scheduler, step)

    async def _tick_loop(self) -> None:
        """``tick`` every ``[agent].resolution`` on the event loop's monotonic clock: a step of the wall
        clock neither stalls nor hurries it, and each tick checks the wall clock for steps."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            resolution = self.cfg.agent.resolution
            due = max(due + resolution, loop.time())  # a stalled loop does not make up for lost ticks
            await asyncio.sleep(due - loop.time())
            try:
                await self.tick()
            except Exception:
                log.exception("the time-driven checks failed; they run again in %s", format_duration(resolution))

    def _warn_silent_rules(self, now: float) -> None:
        """Once per rule: one that has matched no series for 10 probe intervals is likely misspelt."""
        if not self._silent_rules or now - self._started < SILENT_AFTER * self.cfg.agent.interval:
            return
        for name in sorted(self._silent_rules):
            log.warning(
                "rule %s has matched no series for %s; check its metric and labels (alertmail probe shows what the probes emit)",
                name,
                format_duration(now - self._started),
            )
        self._silent_rules.clear()

    def status_line(self, now: float | None = None) -> str:
        """One line for the service manager: alerts firing, the queue's depth."""
        firing = sum(1 for s in self.engine.states(now) if s.state in (State.FIRING, State.FLAPPING))
        queue = getattr(self, "queue", None)
        waiting = len(queue) if queue is not None else 0
        return f"{firing} alert(s) firing, {len(self.rules)} rules; {waiting} message(s) in the queue"

    def _report_status(self, now: float | None = None) -> None:
        if self.manager.enabled and (status := self.status_line(now)) != self._status:
            self._status = status
            self.manager.status(status)

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop itself: a loop that hangs stops pinging and gets restarted."""
        while True:
            self.manager.watchdog()
            await asyncio.sleep(interval)

    def _hand_over(self, events: list, now: float) -> None:
        """Pass events to the mailer task; probes and ticks never wait for a mail to be rendered.

        The rule states that go with the events travel along and are saved only once
        the mails are queued, so a crash in between repeats a mail rather than losing it.
        """
        snapshot = self.engine.snapshot() if events else None
        self._mail_queue.put_nowait((events, now, snapshot, self.clock.stepped))

    async def _mailer(self) -> None:
        """The one task that talks to the notifier, in the order events happened.

        Rule states are saved only while the notifier is settled (every event so far
        is queued or held on disk); a crash then repeats a mail, never loses one.
        """
        latest = None
        while True:
            events, now, snapshot, stepped = await self._mail_queue.get()
            if self.clock.stepped != stepped:  # the wall clock was stepped since: times as the notifier now counts them
                moved = self.clock.stepped - stepped
                events, now = [event.shifted(moved) for event in events], now + moved
            latest = snapshot or latest
            try:
                if events:
                    await self.notifier.notify(events, now)
                else:
                    await self.notifier.flush(now)
                if latest is not None and self.notifier.settled:
                    self._save_state(latest)
                    latest = None
            except Exception:
                log.exception("mailing %d event(s) failed", len(events))
            finally:
                self._mail_queue.task_done()

    # -- state across restarts ---------------------------------------------
    def _watched(self, metric: str, labels: Any) -> bool:
        return any(rule.matches(Sample(metric, 0.0, labels, 0.0)) for rule in self.rules)

    def _load_history(self) -> None:
        count = self.history.load(self._history_file, time.time(), keep=self._watched)
        if count:
            log.info("chart history: %d points of %d series taken back from %s", count, len(self.history), self._history_file)
            self._prime_windows()

    def _prime_windows(self) -> None:
        """`over` windows of a new engine start from the chart history, not empty: no wait for coverage
        after a restart or a reload."""
        self.engine.prime(
            Sample(metric, value, labels, t) for metric, labels, points in self.history.copy() for t, value in points
        )

    def _save_history(self, series: list | None = None) -> None:
        try:
            self.history.save(self._history_file, series)
        except OSError as exc:
            log.error("cannot save the chart history to %s: %s", self._history_file, exc)

    async def _save_history_at_stop(self, budget: float) -> None:
        """The last save, after a periodic one still writing (else that older copy could land last)."""
        if self._history_saving is not None and not self._history_saving.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._history_saving), budget)
            except TimeoutError:
                log.error("chart history: the periodic save did not finish; the next start has the one before")
                return
        self._save_history()

    def _restore_state(self) -> None:
        try:
            snapshot = json.loads(self._state_file.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            log.error("%s is unreadable (%s); rule states start from ok", self._state_file, exc)
            return
        try:
            self.engine.restore(snapshot)
        except Exception as exc:
            log.error("cannot restore rule states from %s (%s); they start from ok", self._state_file, exc)

    def _save_state(self, snapshot: dict | None = None) -> None:
        try:
            write_atomic(self._state_file, json.dumps(snapshot or self.engine.snapshot()).encode())
        except OSError as exc:
            log.error("cannot save rule states to %s: %s", self._state_file, exc)

    # -- life cycle --------------------------------------------------------
    async def start(self) -> None:
        from alertmail.delivery.outbox import Outbox
        from alertmail.notify.notifier import SECTION as NOTIFY
        from alertmail.notify.notifier import Notifier

        cfg = self.cfg
        self.outbox = Outbox(cfg, self.plugins)
        await self.outbox.open()
        self.queue = self.outbox.queue
        self._restore_state()
        self._load_history()
        self.notifier = Notifier(
            notify=cfg.section(NOTIFY),
            mail=cfg.mail,
            hostname=cfg.hostname,
            timezone=cfg.agent.timezone,
            queue=self.queue,
            state_dir=self.state_dir,
            hook=self.plugins.hook,
            history=self.history.get,
            context_for=self._mail_context,
            silences=silences_in_force(cfg),
            rules=self.rules,
            render_options=render_options(cfg, self.plugins),
        )
        self._mail_queue: asyncio.Queue = asyncio.Queue()
        self._mailer_task = asyncio.create_task(self._mailer(), name="mailer")
        await self.outbox.start_services(self.plugins.services)
        self._start_scheduler()
        if cfg.section(EXPORTER).listen:
            from alertmail.exporter import start_exporter

            self.exporter = await start_exporter(self)
        await self._start_control()
        for warning in cfg.warnings:
            log.warning("%s", warning)
        log.info(
            "watching %s with %d probes and %d rules; mail goes %s",
            cfg.hostname,
            len(self.probes),
            len(cfg.rules),
            " -> ".join(cfg.mail.route),
        )

    def _mail_context(self, events: Sequence[AlertEvent]) -> dict[str, Any]:
        """Top processes and disk growth for the mail; runs with the rendering, off the event loop."""
        from alertmail.render.context import collect_context, probe_details

        context = collect_context(events, self.history.get)
        details = probe_details(events, self.plugins.probes)
        if details:
            context["details"] = details
        return context

    def _start_scheduler(self) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        quiet_cancelled_jobs()
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._schedule_probes()
        self._ticking = asyncio.create_task(self._tick_loop(), name="tick")
        heartbeat.schedule(self.scheduler, self, self.cfg.section(heartbeat.SECTION))
        self.scheduler.add_listener(self._job_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        self.scheduler.start()

    def _schedule_probes(self) -> None:
        """One job per interval: probes that share an interval wake the agent once, not once each.

        Every probe still runs on its own interval, with its own timeout, in its own
        worker; a run of the group lasts at most its longest timeout, which is at most
        the interval, so one slow probe cannot hold back the next run of the others.
        """
        for job in self.scheduler.get_jobs():
            if job.id.startswith("probes:"):
                job.remove()
        self.probes = self._configure_probes()
        groups: dict[float, list[str]] = {}
        for name, (_, interval, _) in self.probes.items():
            groups.setdefault(interval, []).append(name)
        self._groups = {f"probes:{interval:g}s": names for interval, names in groups.items()}
        for job_id, names in self._groups.items():
            interval = self.probes[names[0]][1]
            self.scheduler.add_job(
                self.run_probes,
                "interval",
                args=(names,),
                id=job_id,
                name=", ".join(names),
                seconds=interval,
                jitter=min(interval * 0.1, 5.0),
                coalesce=True,
                max_instances=1,
                misfire_grace_time=max(1, int(interval)),
                next_run_time=_soon(interval),
            )

    async def run_probes(self, names: list[str]) -> None:
        runs = []
        for name in names:
            if name in self.probes:
                probe, _, timeout = self.probes[name]
                runs.append(self.run_probe(name, probe, timeout))
        # A run in flight at the stop is cancelled by the scheduler's shutdown and its samples
        # dropped; quiet_cancelled_jobs keeps apscheduler from logging that as a failed job.
        await asyncio.gather(*runs)

    def request_reload(self) -> None:
        """SIGHUP: reload in a task of the event loop (transports and services start and stop asynchronously)."""
        task = asyncio.ensure_future(self.reload())
        self._observing.add(task)
        task.add_done_callback(self._observing.discard)

    async def reload(self) -> bool:
        """Re-read the config and apply all of it, or none: a config with any problem, or one that
        changes a key only a restart can change, is refused whole and the running one stays."""
        self.manager.reloading()
        async with self._reloading:
            problems = _ErrorsLogged()
            log.addHandler(problems)
            ok = False
            try:
                ok = await self._reload()
                return ok
            finally:
                log.removeHandler(problems)
                self.last_reload = {"at": _iso(time.time()), "ok": ok, "problems": problems.lines[:20]}
                self._status = self.status_line()
                self.manager.ready(self._status)

    async def _reload(self) -> bool:
        from alertmail.config.load import load_config
        from alertmail.config.schema import ConfigError
        from alertmail.notify.notifier import SECTION as NOTIFY

        try:
            cfg = load_config(self.cfg.path, self.plugins)
        except ConfigError as exc:
            for line in exc.lines():
                log.error("%s", line)
            log.error("reload refused: %d problem(s) in %s; the running configuration stays", exc.count, exc.path)
            return False
        fixed = [f"agent.{key}" for key in RESTART_KEYS if getattr(cfg.agent, key) != getattr(self.cfg.agent, key)]
        if fixed:
            log.error(
                "reload refused: %s can change only at a restart; the running configuration stays "
                "(restart, or put %s back as it was and reload)",
                ", ".join(fixed),
                "it" if len(fixed) == 1 else "them",
            )
            return False
        try:
            transports = self.outbox.build_transports(cfg)
        except Exception as exc:  # e.g. a password_env variable that is not set
            log.error("reload refused: a transport cannot be built (%s); the running configuration stays", exc)
            return False
        exporter_changed = cfg.section(EXPORTER) != self.cfg.section(EXPORTER)
        snapshot = self.engine.snapshot()
        self.cfg = cfg
        self.rules = [*cfg.rules, *self_rules(cfg)]
        self.engine = RuleEngine(self.rules)
        self.engine.restore(snapshot)
        self._prime_windows()
        self.notifier.apply(
            cfg.section(NOTIFY),
            cfg.mail,
            hostname=cfg.hostname,
            timezone=cfg.agent.timezone,
            silences=silences_in_force(cfg),
            rules=self.rules,
            render_options=render_options(cfg, self.plugins),
        )
        logging.getLogger().setLevel(getattr(logging, cfg.agent.log_level.upper(), logging.INFO))
        heartbeat.schedule(self.scheduler, self, cfg.section(heartbeat.SECTION))
        self._schedule_probes()
        await self.outbox.reconfigure(cfg, transports)
        if exporter_changed:
            await self._restart_exporter()
        for warning in cfg.warnings:
            log.warning("%s", warning)
        self._silent_rules = {rule.name for rule in cfg.rules} - self.engine.seen_rules()
        self._started = time.time()
        log.info("configuration reloaded: %d rules, %d probes", len(cfg.rules), len(self.probes))
        return True

    def _take_requests_now(self) -> None:
        outbox = getattr(self, "outbox", None)
        if outbox is not None and hasattr(outbox, "delivery"):
            outbox.delivery.take_requests_now()

    async def _restart_exporter(self) -> None:
        """After a reload, serve /metrics as ``[exporter]`` says now: stopped, started, or at its new address."""
        if self.exporter is not None:
            await self.exporter.stop()
            self.exporter = None
        listen = self.cfg.section(EXPORTER).listen
        if listen:
            from alertmail.exporter import start_exporter

            try:
                self.exporter = await start_exporter(self)
            except OSError as exc:  # the address is taken: the agent goes on without /metrics
                log.error("exporter: cannot listen on %s: %s", listen, exc)

    async def _start_control(self) -> None:
        """The control socket `alertmail status` asks; the agent runs on without it if it cannot be made."""
        from alertmail.control import ControlServer

        control = ControlServer(self)
        try:
            await control.start()
        except OSError as exc:
            log.error("control socket %s cannot be made (%s); alertmail status will not reach this agent", control.path, exc)
            return
        self.control = control

    def _job_skipped(self, event: Any) -> None:
        """A skipped run is never silent: an overlap is an overrun sample, a missed run a logged counter."""
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES

        names = self._groups.get(str(event.job_id))
        if not names:
            return
        now = self.now()
        if event.code == EVENT_JOB_MAX_INSTANCES:
            log.warning("probes %s: run skipped, the previous run is still going (overrun)", ", ".join(names))
            samples = [Sample("agent.probe_overrun", 1.0, {"probe": name}, now) for name in names]
        else:
            log.warning("probes %s: run missed its time (the agent was stalled); they run at the next slot", ", ".join(names))
            samples = []
            for name in names:
                self.missed[name] = self.missed.get(name, 0) + 1
                samples.append(Sample("agent.probe_missed", float(self.missed[name]), {"probe": name}, now))
        task = asyncio.ensure_future(self.observe(samples, now))
        self._observing.add(task)
        task.add_done_callback(self._observing.discard)

    async def stop(self, bound: float = STOP_BOUND - STOP_MARGIN) -> None:
        """Stop within ``bound`` seconds, losing nothing accepted.

        Order: probes and ticks; services (no new mail); delivery (attempts in flight
        finish or are cut short and retried after the restart); then what the notifier
        still holds is queued, durable, for the next start to deliver; then the queue
        is closed. Nothing is delivered during the stop: a mail flushed at shutdown
        waits in the queue rather than racing the transports' close.
        """
        deadline = time.monotonic() + bound

        def left(reserve: float, most: float | None = None) -> float:
            """The budget of a step: what remains after keeping ``reserve`` for the steps after it."""
            budget = deadline - time.monotonic() - reserve
            return max(min(budget, most) if most is not None else budget, 0.1)

        scheduler = getattr(self, "scheduler", None)
        if self._ticking is not None:
            self._ticking.cancel()
        if scheduler is not None:
            scheduler.shutdown(wait=False)
            await self._save_history_at_stop(left(6.0, most=1.0))
        if self.exporter is not None:
            await self.exporter.stop()
        if self.control is not None:
            await self.control.stop()
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            await outbox.stop_services(left(5.0, most=2.0))
            await outbox.stop_delivery(left(3.0))
        if hasattr(self, "notifier"):
            await self._queue_what_is_held(left(1.0))
        if outbox is not None:
            await outbox.close(left(0.0))

    async def _queue_what_is_held(self, budget: float) -> None:
        """Hand the last events to the notifier and queue every mail it holds, within ``budget``.

        Rule states are saved only when everything made it into the queue; otherwise
        the next start raises the same alerts again (a mail repeated, never lost).
        """
        deadline = time.monotonic() + budget
        try:
            await asyncio.wait_for(self._mail_queue.join(), max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            log.error("mails still being rendered when the stop bound came; they are raised again at the next start")
            self._mailer_task.cancel()
            return
        self._mailer_task.cancel()
        try:
            await asyncio.wait_for(self.notifier.flush(force=True), max(deadline - time.monotonic(), 0.1))
        except TimeoutError:
            log.error("held mails not queued within the stop bound; they are raised again at the next start")
            return
        if self.notifier.settled:
            self._save_state()

    def request_stop(self, signum: int = signal.SIGTERM) -> None:
        """First signal: stop within STOP_BOUND. Second one: exit at once (accepted mail is on disk already)."""
        if self._stop.is_set():
            log.warning(
                "%s again: exiting now; queued mail stays queued, held alerts are raised again at the next start",
                signal.Signals(signum).name,
            )
            _exit_now(128 + signum)
        self._stop.set()
        # A thread, not the event loop: it fires even when the loop is stuck in a blocking call.
        watchdog = threading.Timer(STOP_BOUND - STOP_MARGIN / 2, self._stop_overdue)
        watchdog.daemon = True
        watchdog.start()

    def _stop_overdue(self) -> None:
        log.error("still stopping after %g s; exiting now (queued mail stays queued)", STOP_BOUND - STOP_MARGIN / 2)
        _exit_now(ExitCode.TEMPFAIL)

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        # `alertmail queue retry` and `badmail resend` leave a request, then wake delivery with SIGUSR1.
        loop.add_signal_handler(signal.SIGUSR1, self._take_requests_now)
        await self.start()
        self._status = self.status_line()
        self.manager.ready(self._status)
        pinging = asyncio.create_task(self._watchdog(self.manager.watchdog_interval)) if self.manager.watchdog_interval else None
        try:
            await self._stop.wait()
            log.info("stopping")
            self.manager.stopping("stopping: queueing what is held, closing the queue")
        finally:
            await self.stop()
            if pinging is not None:
                pinging.cancel()
            self.manager.close()


class _ErrorsLogged(logging.Handler):
    """Collects the error lines logged during a reload: its outcome for `alertmail status`."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _iso(timestamp: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


def _exit_now(code: int) -> None:
    """Leave the process at once: every accepted message is durable at any instant, by design."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:
            pass
    os._exit(code)


def loop_factory(cfg: Config, plugins: Any) -> Any:
    """The event loop ``alertmail run`` uses, by ``[agent].event_loop`` (``loops.loop_factory``).

    ``auto`` takes uvloop when it is installed and a service (the relay) is enabled.
    Without a service the agent stays on asyncio, which keeps the idle agent smaller.
    A service enabled later by a reload keeps the loop the agent started with.
    """
    from alertmail.loops import LoopUnavailable
    from alertmail.loops import loop_factory as choose

    # A light service (the sendmail maildrop: a FIFO and a folder) does not make the agent busy.
    busy = any(cfg.service_enabled(s) and not getattr(s, "light", False) for s in plugins.services)
    try:
        return choose(cfg.agent.event_loop, busy=busy)
    except LoopUnavailable:
        log.warning('agent.event_loop = "uvloop" but uvloop is not installed: running on asyncio')
        return None


def render_options(cfg: Config, plugins: Any) -> dict[str, Any]:
    """RenderContext fields from the config and the probes' metric descriptions."""
    units, label_names = {}, {}
    for probe in plugins.probes.values():
        for info in getattr(probe, "metrics", None) or ():
            units[info.name] = info.unit
            label_names[info.name] = tuple(info.labels)
    fields: dict[str, Any] = {"units": units, "charts": cfg.mail.charts, "label_names": label_names}
    path = getattr(cfg, "path", None)
    if path:  # the silence command in each mail names this config: `-c /etc/alertmail/config.toml`
        fields["config_path"] = str(Path(path).resolve())
    if cfg.mail.templates:
        fields["templates_dir"] = cfg.mail.templates
    return fields


def silences_in_force(cfg: Config) -> SilenceSet:
    """``[[silences]]`` of ``cfg`` (in ``[agent].timezone`` unless they name their own) and ``state_dir/silences.toml``."""
    from alertmail.notify.runtime_silences import in_force
    from alertmail.notify.silences import SECTION as SILENCES

    return in_force(cfg.tables(SILENCES), timezone=cfg.agent.timezone, state_dir=cfg.state_dir)


def _restamped(samples: list[Sample], step: float, now: float) -> list[Sample]:
    """Samples of a run the wall clock was stepped during: those stamped before the step move by it
    (those stamped after it are nearer to ``now`` as they are)."""
    return [
        Sample(s.metric, s.value, s.labels, s.timestamp + step) if abs(s.timestamp + step - now) < abs(s.timestamp - now) else s
        for s in samples
    ]


def _soon(interval: float):
    """First run within a few seconds, spread so probes do not all start at once."""
    import datetime as dt

    return dt.datetime.now(dt.UTC) + dt.timedelta(seconds=random.uniform(0.1, min(2.0, interval)))
