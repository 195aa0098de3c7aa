"""Delivery over an ordered list of endpoints, keeping open sessions for the next message.

Each endpoint in turn gets the recipients that have no final answer yet. Open
sessions are kept for reuse: RSET proves one is alive before the next message
(unless it was in use a moment ago), and an idle session is closed with QUIT after
``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Sequence

from alertmail import RecipientStatus
from alertmail.plugins.transports.smtpclient import Endpoint, SessionError, SessionSettings, failure_status
from alertmail.plugins.transports.smtpsession import PROBE_TIMEOUT, Session, open_session, transact

# A session idle for less than this is used without an RSET probe: in a burst the
# extra round trip costs a fifth of the throughput, and a session found dead at MAIL
# is retried once on a fresh one anyway (nothing was sent yet).
PROBE_AFTER = 2.0
# After a failed session, an endpoint goes to the back of the line for this long.
DOWN_FOR = 60.0


class SessionPool:
    """Delivers over endpoints in order, keeping open sessions for the next message."""

    def __init__(self, settings: SessionSettings, *, idle_timeout: float, log: logging.Logger) -> None:
        self.settings = settings
        self.idle_timeout = idle_timeout
        self.log = log
        self._idle: dict[Endpoint, list[Session]] = {}
        self._closing: set[asyncio.Task] = set()
        self._down: dict[Endpoint, float] = {}
        self.sessions_opened = 0

    async def deliver(
        self, endpoints: AsyncGenerator[Endpoint, None], sender: str, recipients: Sequence[str], data: bytes
    ) -> dict[str, RecipientStatus]:
        """Per-recipient statuses after trying endpoints in order until none is left to retry.

        An endpoint that failed within the last ``DOWN_FOR`` seconds is tried after the
        others, so a dead first server does not cost a connect timeout per message.
        A recipient that no endpoint could take keeps the last failure seen for it;
        one that never got as far as an endpoint is missing from the result.
        """
        results: dict[str, RecipientStatus] = {}
        pending = list(recipients)
        deferred: list[Endpoint] = []
        now = time.monotonic()
        if self._down:
            self._down = {e: until for e, until in self._down.items() if until > now}
        async with contextlib.aclosing(endpoints):
            async for endpoint in endpoints:
                if self._down.get(endpoint, 0.0) > now:
                    deferred.append(endpoint)
                    continue
                pending = await self._attempt(endpoint, sender, pending, data, results)
                if not pending:
                    return results
        for endpoint in deferred:
            pending = await self._attempt(endpoint, sender, pending, data, results)
            if not pending:
                break
        return results

    async def _attempt(
        self, endpoint: Endpoint, sender: str, recipients: list[str], data: bytes, results: dict[str, RecipientStatus]
    ) -> list[str]:
        """One endpoint's go at ``recipients``; records statuses, returns those to try elsewhere."""
        for fresh in (False, True):
            try:
                session = await self._session(endpoint, fresh=fresh)
            except SessionError as exc:
                self._down[endpoint] = time.monotonic() + DOWN_FOR
                self.log.info("%s: %s; trying the next server if any", endpoint, exc.status.message)
                results.update(dict.fromkeys(recipients, exc.status))
                return recipients
            try:
                outcome = await transact(session, sender, recipients, data, self.settings.timeouts)
            except Exception as exc:  # a defect here must keep the mail queued, not lose it
                self.log.exception("unexpected error talking to %s", session.remote)
                session.client.close()
                results.update({r: failure_status(exc, session.remote) for r in recipients})
                return []
            except BaseException:
                session.client.close()
                raise
            results.update(outcome.statuses)
            self._release(session)
            if not outcome.retry:
                self._down.pop(endpoint, None)
                return []
            if not session.reused or outcome.data_started:
                break
            # A reused session can die between our RSET and MAIL: one fresh try, same server.
            recipients = outcome.retry
        self._down[endpoint] = time.monotonic() + DOWN_FOR
        self.log.info("%s: session failed (%s); trying the next server if any", session.remote, results[outcome.retry[0]].message)
        return outcome.retry

    async def _session(self, endpoint: Endpoint, *, fresh: bool = False) -> Session:
        idle = self._idle.get(endpoint, [])
        while idle and not fresh:
            session = idle.pop()  # its idle timer stays armed: _expire leaves a session in use alone
            if not session.alive:
                session.client.close()
                continue
            try:
                if time.monotonic() - session.idle_since >= PROBE_AFTER:
                    await session.client.rset(timeout=PROBE_TIMEOUT)
                self.log.debug("reusing the session with %s", session.remote)
                session.reused = True
                return session
            except Exception as exc:
                self.log.debug("idle session with %s is gone (%s); opening a new one", session.remote, exc)
                session.client.close()
        session = await open_session(endpoint, self.settings, self.log)
        self.sessions_opened += 1
        return session

    def _release(self, session: Session) -> None:
        if not session.alive:
            session.client.close()
            return
        if self.idle_timeout <= 0:
            self._quit_later(session)
            return
        session.idle_since = time.monotonic()
        self._idle.setdefault(session.endpoint, []).append(session)
        if session.timer is None:
            # One timer per session, not one per message: at expiry it looks at when the session went idle.
            session.timer = asyncio.get_running_loop().call_later(self.idle_timeout, self._expire, session)

    def _expire(self, session: Session) -> None:
        session.timer = None
        idle = self._idle.get(session.endpoint, [])
        if session in idle:
            left = session.idle_since + self.idle_timeout - time.monotonic()
            if left > 0:
                session.timer = asyncio.get_running_loop().call_later(left, self._expire, session)
                return
            idle.remove(session)
            self._quit_later(session)
        if not idle:
            self._idle.pop(session.endpoint, None)

    def _quit_later(self, session: Session) -> None:
        task = asyncio.get_running_loop().create_task(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """QUIT every idle session and wait for those already closing."""
        sessions = [s for idle in self._idle.values() for s in idle]
        self._idle.clear()
        for session in sessions:
            if session.timer:
                session.timer.cancel()
        await asyncio.gather(*(s.quit() for s in sessions), *self._closing, return_exceptions=True)
