"""Delivery: a worker pool takes due messages from the queue through their route.

A route is an ordered chain of transports. For each recipient not yet delivered the
transports are tried in order: a temporary failure on one lets the next try the same
recipient in the same attempt; a permanent failure ends the recipient. Recipients that
every transport refused temporarily are retried on the schedule. Each recipient's state
is made durable before the next step, so a delivered recipient is never sent to again.

Giving up (a permanent failure, or the expiry time reached) sends a DSN to the envelope
sender through the queue and writes the message to badmail.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alertmail.config.schema import Option, Section
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status, Transport, TransportContext
from alertmail.queue.entry import Entry
from alertmail.queue.spool import Queue, QueueCorrupt, QueueWriteError
from alertmail.units import format_duration, parse_duration

log = logging.getLogger("alertmail.delivery.delivery")

# A zero interval ("0") would retry a dead server in a busy loop.
MIN_RETRY = 0.1

QUEUE_OPTIONS: dict[str, Option] = {
    "retry": Option(
        "durations", [900.0, 1800.0, 3600.0, 14400.0], minimum=MIN_RETRY, help="waits between attempts; the last repeats"
    ),
    "delay_notice": Option("duration", 43200.0, help='tell the sender a message is delayed after this long; "0" = off'),
    "expire": Option("duration", 172800.0, minimum=1.0, help="give up (DSN and badmail) after this long"),
    "concurrency": Option("int", 8, minimum=1, maximum=1000, help="messages delivered at the same time"),
    "route_retry": Option(
        "any", {}, help='retry schedules per route, keyed by the route\'s first transport: { mx = ["5m", "1h"] }'
    ),
    "send_timeout": Option("duration", 600.0, minimum=0.001, help="longest one transport may take for one message"),
    "scan_interval": Option("duration", 5.0, minimum=0.01, help="how often requests from the command line are picked up"),
}


STOP_TIMEOUT = 30.0  # how long stop() lets attempts in flight finish


@dataclass(frozen=True)
class RetryPolicy:
    """When to try again, when to tell the sender, when to give up."""

    intervals: tuple[float, ...] = (900.0, 1800.0, 3600.0, 14400.0)
    delay_notice: float = 43200.0  # 0 = off
    expire: float = 172800.0
    route_intervals: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    send_timeout: float = 600.0
    scan_interval: float = 5.0

    @classmethod
    def from_config(cls, section: Mapping[str, Any]) -> RetryPolicy:
        """From a checked ``[queue]`` table; ``route_retry`` values are parsed here."""
        routes: dict[str, tuple[float, ...]] = {}
        for name, values in (section.get("route_retry") or {}).items():
            if not isinstance(values, list) or not values:
                raise ValueError(f'queue.route_retry.{name}: expected a list of durations like ["5m", "1h"]')
            routes[str(name)] = tuple(parse_duration(v) for v in values)
        defaults = cls()
        return cls(
            intervals=tuple(section.get("retry") or defaults.intervals),
            delay_notice=float(section.get("delay_notice", defaults.delay_notice) or 0.0),
            expire=float(section.get("expire") or defaults.expire),
            route_intervals=routes,
            send_timeout=float(section.get("send_timeout") or defaults.send_timeout),
            scan_interval=float(section.get("scan_interval") or defaults.scan_interval),
        )

    def next_delay(self, attempts: int, route: Sequence[str]) -> float:
        """The wait after the ``attempts``-th failed attempt (1-based); the last interval repeats."""
        intervals = self.route_intervals.get(route[0], self.intervals) if route else self.intervals
        return max(intervals[min(max(attempts, 1), len(intervals)) - 1], MIN_RETRY)


def _check_queue(table: Mapping[str, Any], check: Any, config: Any) -> None:
    """What keys alone cannot say: ``route_retry`` is read as the delivery reads it at start."""
    routes = table.get("route_retry")
    if routes is None:
        return
    if not isinstance(routes, dict):
        check.error("queue.route_retry", f'expected a table like {{ mx = ["5m", "1h"] }}, got {routes!r}')
        return
    for name, values in routes.items():
        try:
            RetryPolicy.from_config({"route_retry": {name: values}})
        except ValueError as exc:
            check.error(f"queue.route_retry.{name}", str(exc).removeprefix(f"queue.route_retry.{name}: "))


SECTION = Section("queue", QUEUE_OPTIONS, check=_check_queue)


def build_transports(tables: Mapping[str, Mapping[str, Any]], plugins: Any, context: TransportContext) -> dict[str, Transport]:
    """One transport instance per checked ``[transports.NAME]`` table (route members included)."""
    out: dict[str, Transport] = {}
    for name, options in tables.items():
        cls = plugins.transports[name]
        out[name] = cls(dict(options), context)
    return out


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


async def send_through_route(
    transports: Mapping[str, Transport], route: Sequence[str], data: bytes, envelope: Envelope, *, timeout: float = 600.0
) -> dict[str, tuple[str, RecipientStatus]]:
    """Send once through ``route`` without the queue: recipient -> (transport, last result)."""
    results: dict[str, tuple[str, RecipientStatus]] = {}
    remaining = list(envelope.recipients)
    for name in route:
        if not remaining:
            break
        result = await send_via(transports.get(name), name, data, Envelope(envelope.sender, tuple(remaining)), timeout)
        for rcpt, status in result.recipients.items():
            results[rcpt] = (name, status)
        remaining = result.temporary
    return results


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
        *,
        policy: RetryPolicy,
        state_dir: Path,
        hostname: str,
        default_route: list[str],
        concurrency: int = 8,
    ) -> None:
        from alertmail.queue.badmail import Badmail

        self.queue = queue
        self.transports = transports
        self.policy = policy
        self.state_dir = Path(state_dir)
        self.hostname = hostname
        self.default_route = list(default_route)
        self.concurrency = max(1, concurrency)
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
        # problem, not a delivery failure. They wait, uncounted, until a reload supplies it.
        self.held: dict[str, str] = {}  # id -> the missing transport
        # Asked for by `alertmail queue retry`: a manual retry is not an attempt and moves no backoff on.
        self._manual: set[str] = set()
        self._scan_now = False  # the command line left a request and said so (SIGUSR1)

    async def start(self) -> None:
        """Resume every queued message and start taking new ones."""
        for entry in self.queue.entries():
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

    def reconfigure(
        self,
        transports: dict[str, Transport],
        *,
        policy: RetryPolicy,
        default_route: list[str],
        concurrency: int,
        changed: set[str],
        route_changed: bool = False,
    ) -> int:
        """Take a reloaded config: messages held for a missing transport, or waiting for one that
        changed, are tried at once. Returns how many were."""
        self.transports = transports
        self.policy = policy
        self.default_route = list(default_route)
        self.concurrency = max(1, concurrency)
        now = time.time()
        again = 0
        for entry in self.queue.entries():
            route = entry.route or self.default_route
            held = self.held.pop(entry.id, None)
            retry = changed & set(route) or (route_changed and not entry.route)
            if held is not None or (entry.id not in self._in_flight and retry):
                entry.next_try = now
                heapq.heappush(self._due, (now, entry.id))
                again += 1
        self._wake.set()
        return again

    def _queued(self, entry: Entry) -> None:
        heapq.heappush(self._due, (entry.next_try, entry.id))
        self._wake.set()

    # -- the dispatcher ------------------------------------------------------

    async def _dispatch(self) -> None:
        next_scan = 0.0
        while not self._stopping:
            now = time.time()
            if now >= next_scan or self._scan_now:
                self._scan_now = False
                await self._take_requests(now)
                next_scan = now + self.policy.scan_interval
            while not self._stopping and self._due and len(self._in_flight) < self.concurrency and self._due[0][0] <= now:
                when, msg_id = heapq.heappop(self._due)
                entry = self.queue.get(msg_id)
                if entry is None or msg_id in self._in_flight or entry.next_try != when:
                    continue  # gone, busy, or rescheduled (a newer heap item stands for it)
                task = asyncio.create_task(self._attempt(entry), name=f"deliver-{msg_id}")
                self._in_flight[msg_id] = task
                task.add_done_callback(functools.partial(self._finished, msg_id))
            wait = next_scan - now
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
            entry.next_try = time.time() + 60
            heapq.heappush(self._due, (entry.next_try, entry.id))
        except Exception:
            log.exception("message %s: delivery attempt failed; retrying in a minute", entry.id)
            entry.next_try = time.time() + 60
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
        route = entry.route or self.default_route
        remaining = entry.pending
        for index, name in enumerate(route):
            if not remaining:
                break
            if name not in self.transports:
                await self._hold(entry, name, delivered=index > 0)
                return
            envelope = Envelope(entry.sender, tuple(remaining))
            started = time.monotonic()
            result = await send_via(self.transports.get(name), name, data, envelope, self.policy.send_timeout)
            now = time.time()
            for observe in self.observers:
                try:
                    observe(entry, name, envelope, result, time.monotonic() - started, len(data))
                except Exception:
                    log.exception("a delivery observer failed")
            for rcpt in remaining:
                entry.recipients[rcpt].record(result.recipients[rcpt], name, now)
            remaining = result.temporary
            if result.delivered and remaining and index + 1 < len(route):
                await self.queue.update(entry)  # durable before the next transport tries the rest
            for rcpt in result.delivered:
                log.info("message %s delivered to <%s> via %s", entry.id, rcpt, name)
        now = time.time()
        if entry.id in self._manual:
            self._manual.discard(entry.id)
        else:
            entry.attempts += 1
        entry.last_try = now
        errors = [s.reply for s in entry.recipients.values() if s.status != "delivered" and s.reply]
        entry.last_error = errors[-1] if errors else ""
        await self.settle(entry, data, now)

    async def _hold(self, entry: Entry, transport: str, *, delivered: bool) -> None:
        """Keep ``entry`` until a reload configures ``transport``; no attempt is counted, no backoff grows."""
        if delivered:
            await self.queue.update(entry)  # what earlier transports of the route delivered stays delivered
        if self.held.get(entry.id) != transport:
            log.error(
                "message %s held: its route names transport %r, which the config does not have; "
                "add [transports.%s] (or fix the route) and reload: it goes at once",
                entry.id,
                transport,
                transport,
            )
        self.held[entry.id] = transport

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
        from alertmail.queue.dsn import build_dsn, is_delivery_report

        log.warning(
            "message %s: giving up on %s (%s: %s)",
            entry.id,
            ", ".join(f"<{r}>" for r in recipients),
            reason,
            entry.recipients[recipients[-1]].reply or "no reply",
        )
        if is_delivery_report(data, entry.sender):
            dsn_note = "not sent: the message is itself a delivery report or has an empty sender"
        else:
            report = build_dsn(
                entry, data, [(r, entry.recipients[r]) for r in recipients], action="failed", hostname=self.hostname, now=now
            )
            dsn_note = await self._queue_report(entry, report)
        for rcpt in recipients:
            entry.recipients[rcpt].reported = True
        title = {
            "expired": f"Expired: not delivered within {format_duration(self.policy.expire)}",
            "failed": "Failed: permanent failure",
        }[reason]
        await asyncio.to_thread(self.badmail.write, entry, data, reason=title, dsn=dsn_note, now=now)

    async def _notify_delay(self, entry: Entry, data: bytes, now: float) -> None:
        from alertmail.queue.dsn import build_dsn, is_delivery_report

        if is_delivery_report(data, entry.sender):
            return
        report = build_dsn(
            entry,
            data,
            [(r, entry.recipients[r]) for r in entry.pending],
            action="delayed",
            hostname=self.hostname,
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
