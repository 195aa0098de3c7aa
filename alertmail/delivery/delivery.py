"""Delivery: a worker pool takes due messages from the queue through their route.

A route is an ordered chain of transports. For each recipient not yet delivered the
transports are tried in order: a temporary failure on one lets the next try the same
recipient in the same attempt; a permanent failure ends the recipient. Recipients that
every transport refused temporarily are retried on the schedule. Each recipient's state
is made durable before the next step, so a delivered recipient is never sent to again.

Giving up (a permanent failure, or the expiry time reached) sends a DSN to the envelope
sender through the queue and writes the message to badmail.

The route is resolved at each attempt, as Postfix's queue manager resolves the transport:
a message records the config key it follows (``[mail].route``, ``also_route``,
``[relay].route``) and takes the route that key names in the config in force, so a
reload or restart with another route moves what is queued. A message whose route names
a transport the config does not have is held: no attempt is counted, its state says why
and since when (``queue list`` shows it), it is tried again at each reload or start, and
at ``expire`` it goes to badmail, with a DSN, saying why it never left.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
import os
import time
from collections.abc import AsyncGenerator, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from alertmail.clock import WallClock, describe
from alertmail.config.schema import Checker, Section, Settings, setting, value_of
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status, TransportContext
from alertmail.protocols import Transport
from alertmail.queue.entry import Entry, relayed
from alertmail.queue.spool import Queue, QueueCorrupt, QueueWriteError
from alertmail.units import format_duration, parse_duration

if TYPE_CHECKING:
    from alertmail.config.schema import SettingsT

log = logging.getLogger("alertmail.delivery.delivery")

# A zero interval ("0") would retry a dead server in a busy loop.
MIN_RETRY = 0.1


class MailRoutes(Protocol):
    """What the delivery reads of ``[mail]`` (``MailSettings``)."""

    @property
    def sender(self) -> str: ...
    @property
    def route(self) -> list[str]: ...
    @property
    def also_route(self) -> list[str]: ...


class StateDir(Protocol):
    """What the delivery reads of ``[agent]`` (``AgentSettings``)."""

    @property
    def state_dir(self) -> Path: ...


class DeliveryConfig(Protocol):
    """What the delivery stage reads of a checked config: ``alertmail.config.load.Config`` is one.

    The stage sits below the loader in the import rules, so it names the shape it needs.
    """

    @property
    def path(self) -> Path: ...
    @property
    def raw(self) -> Mapping[str, Any]: ...
    @property
    def agent(self) -> StateDir: ...
    @property
    def mail(self) -> MailRoutes: ...
    @property
    def transports(self) -> Mapping[str, Any]: ...  # name -> its settings object (a dict for a dict-declared plugin)
    @property
    def sections(self) -> Mapping[str, Any]: ...
    @property
    def warnings(self) -> list[str]: ...
    @property
    def state_dir(self) -> Path: ...
    @property
    def hostname(self) -> str: ...
    def section(self, section: Section[SettingsT]) -> SettingsT: ...
    def service_options(self, service: Any) -> Any: ...
    def service_enabled(self, service: Any) -> bool: ...


OutboxConfig = DeliveryConfig  # the config an Outbox is built from, public in alertmail.intake


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSettings(Settings):
    """``[queue]``: the retry schedule and the delivery workers."""

    retry: list[float] = setting(
        "durations", [900.0, 1800.0, 3600.0, 14400.0], minimum=MIN_RETRY, help="waits between attempts; the last repeats"
    )
    delay_notice: float = setting("duration", 43200.0, help='tell the sender a message is delayed after this long; "0" = off')
    expire: float = setting("duration", 172800.0, minimum=1.0, help="give up (DSN and badmail) after this long")
    concurrency: int = setting("int", 8, minimum=1, maximum=1000, help="messages delivered at the same time")
    route_retry: dict[str, Any] = setting(
        "any", {}, help='retry schedules per route, keyed by the route\'s first transport: { mx = ["5m", "1h"] }'
    )
    send_timeout: float = setting("duration", 600.0, minimum=0.001, help="longest one transport may take for one message")
    scan_interval: float = setting("duration", 5.0, minimum=0.01, help="how often requests from the command line are picked up")


STOP_TIMEOUT = 30.0  # how long stop() lets attempts in flight finish


def route_intervals(route_retry: Mapping[str, Any]) -> dict[str, tuple[float, ...]]:
    """``[queue] route_retry`` parsed: first transport -> its waits; ValueError names the bad entry."""
    routes: dict[str, tuple[float, ...]] = {}
    for name, values in route_retry.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f'queue.route_retry.{name}: expected a list of durations like ["5m", "1h"]')
        routes[str(name)] = tuple(parse_duration(v) for v in values)
    return routes


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again, when to tell the sender, when to give up: made from ``QueueSettings``."""

    intervals: tuple[float, ...]
    delay_notice: float  # 0 = off
    expire: float
    send_timeout: float
    scan_interval: float
    route_intervals: Mapping[str, tuple[float, ...]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: QueueSettings) -> RetryPolicy:
        """The policy of checked ``[queue]`` settings; ``route_retry`` values are parsed here."""
        return cls(
            intervals=tuple(settings.retry),
            delay_notice=settings.delay_notice,
            expire=settings.expire,
            route_intervals=route_intervals(settings.route_retry),
            send_timeout=settings.send_timeout,
            scan_interval=settings.scan_interval,
        )

    def next_delay(self, attempts: int, route: Sequence[str]) -> float:
        """The wait after the ``attempts``-th failed attempt (1-based); the last interval repeats."""
        intervals = self.route_intervals.get(route[0], self.intervals) if route else self.intervals
        return max(intervals[min(max(attempts, 1), len(intervals)) - 1], MIN_RETRY)


def _check_queue(settings: QueueSettings, check: Checker, config: DeliveryConfig) -> None:
    """What keys alone cannot say: ``route_retry`` is read as the delivery reads it at start."""
    _check_queued(config, settings)
    routes = settings.route_retry
    if not isinstance(routes, dict):
        check.error("queue.route_retry", f'expected a table like {{ mx = ["5m", "1h"] }}, got {routes!r}')
        return
    for name, values in routes.items():
        try:
            route_intervals({name: values})
        except ValueError as exc:
            check.error(f"queue.route_retry.{name}", str(exc).removeprefix(f"queue.route_retry.{name}: "))


SECTION: Section[QueueSettings] = Section("queue", QueueSettings, check=_check_queue)


def build_transports(tables: Mapping[str, Any], plugins: Any, context: TransportContext) -> dict[str, Transport]:
    """One transport instance per ``[transports.NAME]`` (route members included), each given its
    settings object (a dict of its own for a plugin that declares its options as a dict)."""
    out: dict[str, Transport] = {}
    for name, settings in tables.items():
        cls = plugins.transports[name]
        out[name] = cls(dict(settings) if isinstance(settings, Mapping) else settings, context)
    return out


async def close_transports(
    transports: Iterable[Transport],
    *,
    failed: Callable[[Transport, Exception], None],
    each: float = 10.0,
    within: float | None = None,
) -> None:
    """Close each transport that keeps something open (sessions, tasks): ``each`` seconds at most
    apiece, all of them within ``within`` when given. One that fails to close is reported to
    ``failed``, and the others still close."""
    deadline = None if within is None else time.monotonic() + within
    for transport in transports:
        close = getattr(transport, "close", None)
        if close is None:
            continue
        timeout = each if deadline is None else max(min(each, deadline - time.monotonic()), 0.1)
        try:
            await asyncio.wait_for(close(), timeout)
        except Exception as exc:
            failed(transport, exc)


async def send_via(transport: Transport | None, name: str, data: bytes, envelope: Envelope, timeout: float) -> DeliveryResult:
    """One transport's result for every recipient of ``envelope``; its failures become temporary results."""
    if transport is None:
        failure = RecipientStatus(Status.TEMPORARY, 451, f"no transport named {name!r} is configured", "4.3.5")
        return DeliveryResult.all(envelope.recipients, failure)
    try:
        # asyncio.timeout, not wait_for: no extra task per message (Python 3.11)
        async with asyncio.timeout(timeout):
            result = await transport.send(data, envelope)
    except TimeoutError:
        failure = RecipientStatus(Status.TEMPORARY, 451, f"{name}: no result within {format_duration(timeout)}", "4.4.7")
        return DeliveryResult.all(envelope.recipients, failure)
    except Exception as exc:  # a broken transport must not lose the message: retry later
        log.exception("transport %s failed", name)
        failure = RecipientStatus(Status.TEMPORARY, 451, f"{name}: {type(exc).__name__}: {exc}", "4.3.0")
        return DeliveryResult.all(envelope.recipients, failure)
    got = result.recipients
    if all(r in got for r in envelope.recipients):
        return DeliveryResult({r: got[r] for r in envelope.recipients})
    missing = RecipientStatus(Status.TEMPORARY, 451, f"{name} gave no result for this recipient", "4.3.0")
    return DeliveryResult({r: got.get(r, missing) for r in envelope.recipients})


@dataclass(frozen=True, slots=True)
class Step:
    """One transport's turn in a route: whom it was given, what it answered, how long it took."""

    transport: str
    envelope: Envelope
    result: DeliveryResult
    seconds: float


async def through_route(
    transports: Mapping[str, Transport], route: Sequence[str], data: bytes, envelope: Envelope, timeout: float
) -> AsyncGenerator[Step, None]:
    """The route's chain: each transport in turn is given the recipients the ones before it left
    with a temporary failure, until none is left. A step is yielded before the next transport
    is tried, so the caller can make what it delivered durable first."""
    remaining = envelope.recipients
    for name in route:
        if not remaining:
            return
        given = Envelope(envelope.sender, tuple(remaining))
        started = time.monotonic()
        result = await send_via(transports.get(name), name, data, given, timeout)
        yield Step(name, given, result, time.monotonic() - started)
        remaining = tuple(result.temporary)


async def send_through_route(
    transports: Mapping[str, Transport], route: Sequence[str], data: bytes, envelope: Envelope, *, timeout: float
) -> dict[str, tuple[str, RecipientStatus]]:
    """Send once through ``route`` without the queue: recipient -> (transport, last result)."""
    results: dict[str, tuple[str, RecipientStatus]] = {}
    async for step in through_route(transports, route, data, envelope, timeout):
        for rcpt, status in step.result.recipients.items():
            results[rcpt] = (step.transport, status)
    return results


def resolve_route(entry: Entry, routes: Mapping[str, Sequence[str]], transports: Collection[str]) -> tuple[list[str], str]:
    """The route ``entry`` takes under a config whose routes are ``routes`` (by key, "mail.route"
    among them) and whose transports are ``transports``; and where that route comes from."""
    key = entry.route_key
    if key and routes.get(key):
        return list(routes[key]), key
    if not entry.route:
        return list(routes["mail.route"]), "mail.route"
    if not key and any(name not in transports for name in entry.route):
        # Queued before messages recorded their route's key: the route in force for its kind.
        legacy = "relay.route" if relayed(entry.origin) else "mail.route" if entry.origin == "agent" else ""
        if legacy and routes.get(legacy):
            return list(routes[legacy]), legacy
    return list(entry.route), f"{key} as queued; the config has no {key} now" if key else "as queued"


def unroutable(entry: Entry, routes: Mapping[str, Sequence[str]], transports: Collection[str]) -> str:
    """Why ``entry`` cannot be routed under that config ("" when it can)."""
    route, source = resolve_route(entry, routes, transports)
    missing = next((name for name in route if name not in transports), None)
    if missing is None:
        return ""
    return f"its route ({source}: {' -> '.join(route)}) names transport {missing!r}, which the config does not have"


def _check_queued(config: DeliveryConfig, settings: QueueSettings) -> None:
    """Queued messages this config cannot route: ``check`` says so (a warning), and ``run`` logs it."""
    from alertmail.queue.spool import Queue

    state_dir = config.agent.state_dir
    if not isinstance(state_dir, Path) or not (state_dir / "queue").is_dir():
        return
    queue = Queue(state_dir / "queue")
    try:
        queue.load()
    except (OSError, ValueError):
        return
    routes, names = configured_routes(config), set(config.transports)
    stuck = [(entry, why) for entry in queue.entries() if (why := unroutable(entry, routes, names))]
    expire = settings.expire
    for entry, why in stuck[:5]:
        config.warnings.append(
            f"queue: message {entry.id} (from {entry.origin}) cannot be routed with this config: {why}; "
            f"it is held, and goes to badmail at expire, {format_duration(max(entry.created + expire - time.time(), 0))} "
            "from now; add that transport or change the route"
        )
    if len(stuck) > 5:
        config.warnings.append(f"queue: {len(stuck) - 5} more message(s) cannot be routed; see `alertmail queue list`")


def _routes(routes: Mapping[str, Sequence[str]] | None, default_route: list[str]) -> dict[str, list[str]]:
    return {"mail.route": list(default_route), **{k: list(v) for k, v in (routes or {}).items() if v}}


def configured_routes(cfg: DeliveryConfig) -> dict[str, list[str]]:
    """The routes ``cfg`` names, by config key: what queued messages follow."""
    routes = {"mail.route": list(cfg.mail.route)}
    if cfg.mail.also_route:
        routes["mail.also_route"] = list(cfg.mail.also_route)
    if "relay" in cfg.raw:  # [relay] written out: its route (or the default)
        route = value_of(cfg.sections.get("relay"), "route")  # its settings object, or a dict-declared relay's table
        if route:
            routes["relay.route"] = list(route)
    return routes


async def _finish(task: asyncio.Task[None], timeout: float) -> None:
    """Wait up to ``timeout`` for ``task`` to end on its own, then cancel it and wait once more, briefly.

    Never waits longer than ``timeout`` + 1 s: a task that ignores its cancel is left behind.
    """
    if not task.done():
        await asyncio.wait([task], timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if task.done() and not task.cancelled() and task.exception() is not None:
        log.error("%s ended with an error", task.get_name(), exc_info=task.exception())


class Delivery:
    """The worker pool: delivers due messages, retries, gives up with a DSN and badmail."""

    def __init__(
        self,
        queue: Queue,
        transports: dict[str, Transport],
        settings: QueueSettings,
        *,
        state_dir: Path,
        hostname: str,
        default_route: Sequence[str],
        routes: Mapping[str, Sequence[str]] | None = None,
        mail_domain: str | None = None,
    ) -> None:
        from alertmail.queue.badmail import Badmail

        self.queue = queue
        self.transports = transports
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.state_dir = Path(state_dir)
        self.hostname = hostname
        self.mail_domain = mail_domain  # the DSN's MAILER-DAEMON@ and Message-ID domain (the From's, aligned with DKIM)
        self.default_route = list(default_route)
        # The routes the config names, by key ("mail.route", "relay.route"): what a queued message follows.
        self.routes = _routes(routes, self.default_route)
        self.badmail = Badmail(self.state_dir / "badmail")
        self._control_stamp: int | None = None  # mtime of queue/control when last read
        # Called after each transport's try: (entry, transport name, envelope, result, seconds, size).
        self.observers: list[Callable[[Entry, str, Envelope, DeliveryResult, float, int], None]] = []
        self._due: list[tuple[float, str]] = []  # heap of (next_try, id)
        self._in_flight: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._stopping = False
        # Messages whose route names a transport the config does not have: a configuration
        # problem, not a delivery failure. They wait, uncounted, until a reload supplies it
        # (or a route without it), or go to badmail at expire.
        self.held: dict[str, str] = {}  # id -> the missing transport
        # Asked for by `alertmail queue retry`: a manual retry is not an attempt and moves no backoff on.
        self._manual: set[str] = set()
        self._scan_now = False  # the command line left a request and said so (SIGUSR1)
        # Retry times are wall-clock times (they are saved with each message); a step of the
        # wall clock moves those of the queued messages with it, so a wait keeps its length.
        # Every time set reads the clock through ``_now``, which applies a step first: a step
        # moves only the times set before it.
        self._clock = WallClock()
        self._connect(transports)

    async def start(self) -> None:
        """Resume every queued message and start taking new ones."""
        now = self._clock.now()
        for entry in self.queue.entries():
            if entry.held:  # held under the config of an earlier run: see whether this one routes it
                entry.next_try = now
            heapq.heappush(self._due, (entry.next_try, entry.id))
        self.queue.add_listener(self._queued)
        self._dispatcher = asyncio.create_task(self._dispatch(), name="delivery")

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop taking messages; let attempts in flight finish within ``timeout``, then return.

        An attempt cut short stays queued and is tried again after the restart (at-least-once).
        The dispatcher is told to stop by a flag, not only by a cancel: a cancel that arrives
        as its wait ends is swallowed by ``asyncio.wait_for`` on Python 3.11, and the
        dispatcher then ran on while stop() waited for it forever.
        """
        deadline = time.monotonic() + max(timeout, 0.0)
        self._stopping = True
        self._wake.set()
        dispatcher, self._dispatcher = self._dispatcher, None
        if dispatcher is not None:
            await _finish(dispatcher, max(deadline - time.monotonic(), 0.0))
        tasks = list(self._in_flight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=max(deadline - time.monotonic(), 0.0))
            if pending:
                log.warning("stopping: %d delivery attempt(s) cut short; they are retried after the restart", len(pending))
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1.0)

    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    def apply(
        self,
        settings: QueueSettings,
        transports: dict[str, Transport],
        *,
        default_route: Sequence[str],
        changed: set[str],
        routes: Mapping[str, Sequence[str]] | None = None,
        mail_domain: str | None = None,
    ) -> int:
        """Take a reloaded config: its ``[queue]`` settings, transports and routes. Messages held
        for a missing transport, waiting for one that changed, or whose route the config changed,
        are tried at once. Returns how many were."""
        before = {entry.id: self.route_for(entry)[0] for entry in self.queue.entries()}
        route_changed = list(default_route) != self.default_route
        self.transports = transports
        self._connect(transports)
        self.settings = settings
        self.policy = RetryPolicy.from_settings(settings)
        self.mail_domain = mail_domain
        self.default_route = list(default_route)
        self.routes = (
            _routes(routes, self.default_route) if routes is not None else {**self.routes, "mail.route": self.default_route}
        )
        now = self._now()
        again = 0
        for entry in self.queue.entries():
            route = self.route_for(entry)[0]
            held = self.held.pop(entry.id, None)
            retry = changed & set(route) or route != before.get(entry.id) or (route_changed and not entry.route)
            if held is not None or entry.held or (entry.id not in self._in_flight and retry):
                entry.next_try = now
                heapq.heappush(self._due, (now, entry.id))
                again += 1
        self._wake.set()
        return again

    # -- a transport whose peer answers again ------------------------------------

    def _connect(self, transports: Mapping[str, Transport]) -> None:
        """A transport that can tell when its peer answers again (alertmanager) has a ``retry_waiting``
        attribute: it is given a callable that tries the messages waiting for it at once."""
        for name, transport in transports.items():
            if hasattr(transport, "retry_waiting"):
                transport.retry_waiting = functools.partial(self.retry_waiting_on, name)

    def retry_waiting_on(self, name: str) -> int:
        """Messages whose route has transport ``name`` and that wait for their next try are due now."""
        now = self._now()
        again = 0
        for entry in self.queue.entries():
            if entry.id in self._in_flight or entry.id in self.held or entry.next_try <= now:
                continue
            if name in (entry.route or self.default_route):
                entry.next_try = now
                heapq.heappush(self._due, (now, entry.id))
                again += 1
        if again:
            log.info("%s answers again: %d message(s) waiting for it are tried now", name, again)
            self._wake.set()
        return again

    def _queued(self, entry: Entry) -> None:
        # A step of the wall clock since the last check moves the times set before it, not this
        # message's: after a step forward it would wait as long as the step. A new message is due at
        # once, even if it was stamped before a step back.
        now = self._now(skip=entry.id)
        if entry.attempts == 0 and entry.next_try == entry.created and entry.next_try > now:
            entry.next_try = now
        heapq.heappush(self._due, (entry.next_try, entry.id))
        self._wake.set()

    # -- the dispatcher ------------------------------------------------------

    async def _dispatch(self) -> None:
        next_scan = 0.0  # on the monotonic clock, as the scans' period does not care for the wall clock
        while not self._stopping:
            now = self._now()
            if time.monotonic() >= next_scan or self._scan_now:
                self._scan_now = False
                await self._take_requests(now)
                next_scan = time.monotonic() + self.policy.scan_interval
            while not self._stopping and self._due and len(self._in_flight) < self.concurrency and self._due[0][0] <= now:
                when, msg_id = heapq.heappop(self._due)
                entry = self.queue.get(msg_id)
                if entry is None or msg_id in self._in_flight or entry.next_try != when:
                    continue  # gone, busy, or rescheduled (a newer heap item stands for it)
                task = asyncio.create_task(self._attempt(entry), name=f"deliver-{msg_id}")
                self._in_flight[msg_id] = task
                task.add_done_callback(functools.partial(self._finished, msg_id))
            wait = next_scan - time.monotonic()
            if self._due and len(self._in_flight) < self.concurrency:
                wait = min(wait, self._due[0][0] - now)
            self._wake.clear()
            if self._stopping:
                return
            try:
                async with asyncio.timeout(max(wait, 0.0)):  # not wait_for: no task per wake-up
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _now(self, skip: str | None = None) -> float:
        """The wall-clock time, to set a next try by; a step since the last read is applied first to
        every next try already set (but ``skip``'s, and those of attempts in flight)."""
        step = self._clock.check()
        if step:
            self._shift(step, skip)
        return self._clock.now()

    def _shift(self, step: float, skip: str | None = None) -> None:
        """The wall clock was stepped by ``step`` seconds: every queued message's next try moves with it.

        A message deferred for 15 minutes is tried 15 minutes later by the monotonic clock,
        not 10 minutes late after the clock went back 10 minutes (nor at once after it went
        forward an hour). Expiry stays counted from the time the message was queued.
        """
        log.info("queue: next tries moved by %s with the wall clock", describe(step))
        due = []
        for entry in self.queue.entries():
            if entry.id in self._in_flight or entry.id == skip:
                continue  # its attempt (or its arrival) sets its next try after the step
            entry.next_try += step
            due.append((entry.next_try, entry.id))
        heapq.heapify(due)
        self._due = due

    def take_requests_now(self) -> None:
        """Look for command-line requests at once, not at the next scan (SIGUSR1 from ``alertmail queue``)."""
        self._scan_now = True
        self._control_stamp = None
        self._wake.set()

    def _finished(self, msg_id: str, _task: object = None) -> None:
        self._in_flight.pop(msg_id, None)
        self._wake.set()

    async def _take_requests(self, now: float) -> None:
        """Carry out what ``alertmail queue retry/delete`` and ``badmail resend`` asked for."""
        # One stat of the folder tells whether anything was asked: no thread, no listing, when idle.
        try:
            stamp = os.stat(self.queue.folder / "control").st_mtime_ns
        except FileNotFoundError:
            return
        if stamp == self._control_stamp:
            return
        # A change in the last second may hide a later one with the same coarse timestamp: look again next time.
        self._control_stamp = stamp if time.time_ns() - stamp > 1_000_000_000 else None
        for action, msg_id in await asyncio.to_thread(self.queue.take_requests):
            try:
                if action == "resend":
                    new_id = await self.badmail.resend(msg_id, self.queue)
                    log.info("badmail %s queued again as %s", msg_id, new_id)
                    continue
                touched = await asyncio.to_thread(self.queue.apply_request, action, msg_id, now)
            except (OSError, ValueError) as exc:
                log.error("request %s %s failed: %s", action, msg_id, exc)
                continue
            if action == "retry":
                for target in touched:
                    self._manual.add(target)
                    heapq.heappush(self._due, (now, target))
            log.info("%s requested for %s: %d message(s)", action, msg_id, len(touched))

    # -- one attempt -----------------------------------------------------------

    async def _attempt(self, entry: Entry) -> None:
        try:
            await self.attempt(entry)
        except QueueWriteError as exc:
            # The state could not be saved: try again later rather than lose track.
            log.error("message %s: %s; retrying in a minute", entry.id, exc)
            entry.next_try = self._now() + 60
            heapq.heappush(self._due, (entry.next_try, entry.id))
        except Exception:
            log.exception("message %s: delivery attempt failed; retrying in a minute", entry.id)
            entry.next_try = self._now() + 60
            heapq.heappush(self._due, (entry.next_try, entry.id))

    async def attempt(self, entry: Entry) -> None:
        """Try every pending recipient of ``entry`` through its route once, then settle it."""
        try:
            data = await self.queue.read(entry.id)
        except FileNotFoundError:
            return  # deleted meanwhile
        except QueueCorrupt as exc:
            await self.queue.quarantine(entry.id, str(exc))  # never delivered; its bytes are kept
            return
        route, source = self.route_for(entry)
        if entry.held and all(name in self.transports for name in route):
            log.info("message %s no longer held: its route %s is %s", entry.id, source, " -> ".join(route))
            entry.held, entry.held_since = "", 0.0
        envelope = Envelope(entry.sender, tuple(entry.pending))
        async with contextlib.aclosing(through_route(self.transports, route, data, envelope, self.policy.send_timeout)) as steps:
            tried = 0
            async for step in steps:
                name, result, tried = step.transport, step.result, tried + 1
                if name not in self.transports:
                    await self._hold(entry, data, route, source, name)
                    return
                now = time.time()
                for observe in self.observers:
                    try:
                        observe(entry, name, step.envelope, result, step.seconds, len(data))
                    except Exception:
                        log.exception("a delivery observer failed")
                for rcpt in step.envelope.recipients:
                    entry.recipients[rcpt].record(result.recipients[rcpt], name, now)
                if result.delivered and result.temporary and tried < len(route):
                    await self.queue.update(entry)  # durable before the next transport tries the rest
                for rcpt in result.delivered:
                    log.info("message %s delivered to <%s> via %s", entry.id, rcpt, name)
        now = self._now()
        if entry.id in self._manual:
            self._manual.discard(entry.id)
        else:
            entry.attempts += 1
        entry.last_try = now
        errors = [s.reply for s in entry.recipients.values() if s.status != "delivered" and s.reply]
        entry.last_error = errors[-1] if errors else ""
        await self.settle(entry, data, now)

    def route_for(self, entry: Entry) -> tuple[list[str], str]:
        """The route ``entry`` takes now, in the config in force, and the key it comes from."""
        return resolve_route(entry, self.routes, self.transports)

    def held_by_transport(self) -> dict[str, int]:
        """How many messages are held, by the transport their route names and the config lacks."""
        counts: dict[str, int] = {}
        for transport in self.held.values():
            counts[transport] = counts.get(transport, 0) + 1
        return counts

    async def _hold(self, entry: Entry, data: bytes, route: list[str], source: str, transport: str) -> None:
        """Keep ``entry`` until a reload (or restart) routes it, or until it expires; no attempt is
        counted, no backoff grows. Its state says why and since when, for ``queue list``."""
        now = self._now()
        self._manual.discard(entry.id)
        reason = f"its route ({source}: {' -> '.join(route)}) names transport {transport!r}, which the config does not have"
        if entry.held != reason:
            log.error(
                "message %s held: %s; add [transports.%s] or change the route, and reload: it goes at once; "
                "else it goes to badmail at expire (%s after it was queued)",
                entry.id,
                reason,
                transport,
                format_duration(self.policy.expire),
            )
        if not entry.held:
            entry.held_since = now
        entry.held = reason
        self.held[entry.id] = transport
        if now >= entry.created + self.policy.expire:
            self.held.pop(entry.id, None)
            for rcpt in entry.pending:
                state = entry.recipients[rcpt]
                state.code, state.enhanced, state.message = 451, "4.3.5", f"held, never sent: {reason}"
                state.transport, state.time = transport, now
            entry.last_error = f"held: {reason}"
            await self.settle(entry, data, now)
            return
        entry.next_try = entry.created + self.policy.expire  # or sooner: a reload tries it again
        await self.queue.update(entry)  # durable: what earlier transports delivered, and why it waits
        heapq.heappush(self._due, (entry.next_try, entry.id))

    async def settle(self, entry: Entry, data: bytes, now: float) -> None:
        """After an attempt: expire, report failures, schedule the next try or remove."""
        expired = entry.pending and now >= entry.created + self.policy.expire
        if expired:
            for rcpt in entry.pending:
                entry.recipients[rcpt].status = "failed"
        newly_failed = [r for r in entry.failed if not entry.recipients[r].reported]
        if newly_failed:
            reason = "expired" if expired else "failed"
            await self._give_up(entry, data, newly_failed, reason, now)
        if not entry.pending:
            await self.queue.remove(entry.id)
            return
        if self.policy.delay_notice and not entry.delay_notified and now >= entry.created + self.policy.delay_notice:
            await self._notify_delay(entry, data, now)
            entry.delay_notified = True
        delay = self.policy.next_delay(entry.attempts, entry.route or self.default_route)
        entry.next_try = min(now + delay, entry.created + self.policy.expire)
        await self.queue.update(entry)
        heapq.heappush(self._due, (entry.next_try, entry.id))
        log.info(
            "message %s: %d recipient(s) deferred (%s); next try in %s",
            entry.id,
            len(entry.pending),
            entry.last_error or "no reply",
            format_duration(entry.next_try - now),
        )

    async def _give_up(self, entry: Entry, data: bytes, recipients: list[str], reason: str, now: float) -> None:
        from alertmail.queue.dsn import build_dsn, no_report_reason

        log.warning(
            "message %s: giving up on %s (%s: %s)",
            entry.id,
            ", ".join(f"<{r}>" for r in recipients),
            reason,
            entry.recipients[recipients[-1]].reply or "no reply",
        )
        dsn_note = no_report_reason(entry, data)
        if dsn_note is None:
            report = build_dsn(
                entry,
                data,
                [(r, entry.recipients[r]) for r in recipients],
                action="failed",
                hostname=self.hostname,
                now=now,
                domain=self.mail_domain,
            )
            dsn_note = await self._queue_report(entry, report)
        for rcpt in recipients:
            entry.recipients[rcpt].reported = True
        title = {
            "expired": f"Expired: not delivered within {format_duration(self.policy.expire)}",
            "failed": "Failed: permanent failure",
        }[reason]
        if entry.held and reason == "expired":
            from alertmail.queue.badmail import stamp

            title = f"Expired: held since {stamp(entry.held_since)}, never sent: {entry.held}"
        await asyncio.to_thread(self.badmail.write, entry, data, reason=title, dsn=dsn_note, now=now)

    async def _notify_delay(self, entry: Entry, data: bytes, now: float) -> None:
        from alertmail.queue.dsn import build_dsn, no_report_reason

        if no_report_reason(entry, data) is not None:
            return
        report = build_dsn(
            entry,
            data,
            [(r, entry.recipients[r]) for r in entry.pending],
            action="delayed",
            hostname=self.hostname,
            domain=self.mail_domain,
            now=now,
            will_retry_until=entry.created + self.policy.expire,
        )
        note = await self._queue_report(entry, report)
        log.info("message %s: delay notice to <%s> %s", entry.id, entry.sender, note)

    async def _queue_report(self, entry: Entry, report: Any) -> str:
        import email.policy

        try:
            report_id = await self.queue.put(
                report.as_bytes(policy=email.policy.SMTP), Envelope("", (entry.sender,)), origin="dsn"
            )
        except (QueueWriteError, ValueError) as exc:
            log.error("message %s: cannot queue the DSN to <%s>: %s", entry.id, entry.sender, exc)
            return f"not sent: {exc}"
        return f"queued as {report_id} to <{entry.sender}>"
