"""One SMTP client for the smtp and mx transports: sessions, a reuse pool, reply mapping.

A delivery walks an ordered list of endpoints (the configured servers, or the MX
hosts' addresses). On each it runs one SMTP transaction and maps every reply to a
per-recipient ``RecipientStatus``:

- 2xx after DATA: DELIVERED; 4xx: TEMPORARY; 5xx: PERMANENT.
- A refusal at MAIL FROM or DATA applies to every recipient of the transaction,
  one at RCPT to that recipient only; with no recipient accepted, DATA is not sent.
- A session failure (connection refused or timed out, TLS failure, a greeting that
  is not 220, a 421, a dropped connection) is TEMPORARY and moves the recipients
  that have no final answer yet to the next endpoint.

Open sessions are kept for reuse: RSET proves one is alive before the next message
(unless it was in use a moment ago), and an idle session is closed with QUIT after
``idle_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from alertmail import AlertmailError, Option, RecipientStatus, Status

if TYPE_CHECKING:
    import aiosmtplib

# RFC 5321 §4.5.3.2 gives a timeout per command; aiosmtplib takes one per call, and
# one for the whole DATA phase, so three knobs cover it (see TIMEOUT_OPTIONS).
TIMEOUT_OPTIONS: dict[str, Option] = {
    "connect_timeout": Option("duration", 30.0, help="TCP connect to one address"),
    "command_timeout": Option(
        "duration", 300.0, help="greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET (RFC 5321: 5 min)"
    ),
    "data_timeout": Option(
        "duration", 600.0, help="DATA up to the reply to the final dot (RFC 5321: 10 min for the dot)"
    ),
    "idle_timeout": Option("duration", 30.0, help="keep an idle session open this long for the next message; 0 = close"),
}
# Postfix's smtp_rset_timeout: a live server answers RSET at once.
PROBE_TIMEOUT = 20.0
# A session idle for less than this is used without an RSET probe: in a burst the
# extra round trip costs a fifth of the throughput, and a session found dead at MAIL
# is retried once on a fresh one anyway (nothing was sent yet).
PROBE_AFTER = 2.0
# After a failed session, an endpoint goes to the back of the line for this long.
DOWN_FOR = 60.0
QUIT_TIMEOUT = 5.0

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each network step."""

    connect: float = 30.0
    command: float = 300.0
    data: float = 600.0

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> Timeouts:
        return cls(
            connect=options.get("connect_timeout") or 30.0,
            command=options.get("command_timeout") or 300.0,
            data=options.get("data_timeout") or 600.0,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect: ``host`` names the server (TLS name, logs); ``address`` is the IP
    to use, or None to resolve ``host`` with the system resolver."""

    host: str
    port: int
    address: str | None = None

    def __str__(self) -> str:
        if self.address and self.address != self.host:
            return f"{self.host}[{self.address}]:{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class SessionSettings:
    """How sessions are opened; one per transport instance."""

    helo: str
    timeouts: Timeouts
    tls: str = "starttls"  # "starttls" | "implicit" | "none" | "opportunistic"
    tls_verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    # Called at each new session, so a rotated password file is read without a restart;
    # the secret itself is never stored here (nor in any repr or log).
    password: Callable[[], str | None] | None = field(default=None, repr=False)
    _context: ssl.SSLContext | None = field(default=None, repr=False)

    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context, built once: verifying unless told not to."""
        if self._context is None:
            verify = self.tls_verify and self.tls != "opportunistic"
            context = ssl.create_default_context(cafile=self.ca_file if verify else None)
            if not verify:
                # Opportunistic TLS between MTAs checks nothing (RFC 7435): it beats plain text.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._context = context
        return self._context


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def helo_name(name: str, key: str) -> str:
    """``name`` checked for the EHLO line (ASCII, no spaces or controls); ValueError naming ``key``."""
    name = name.strip()
    if not name or not name.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f"{key}: {name!r} cannot be sent in EHLO; use a plain host name like \"web01.example.com\"")
    return name


class SessionError(AlertmailError):
    """A session could not be opened or was lost; ``status`` says how, for every recipient."""

    def __init__(self, status: RecipientStatus) -> None:
        super().__init__(status.message)
        self.status = status


def reply_status(code: int, text: str, remote: str) -> RecipientStatus:
    """The RecipientStatus for an SMTP reply, with its RFC 3463 code (or one from its class)."""
    text = _LINE_BREAKS.sub(" ", text or "").strip()
    klass = code // 100
    enhanced = f"{klass}.0.0" if klass in (2, 4, 5) else "4.0.0"
    match = _ENHANCED.match(text)
    if match and int(match.group(1)) == klass:
        enhanced = ".".join(match.group(1, 2, 3))
        text = text[match.end() :]
    status = Status.DELIVERED if klass == 2 else Status.PERMANENT if klass == 5 else Status.TEMPORARY
    return RecipientStatus(status, code, text, enhanced, remote)


def failure_status(exc: BaseException, remote: str) -> RecipientStatus:
    """The TEMPORARY status for a failed or lost session, which may carry no SMTP reply at all.

    Even a 5xx greeting is temporary here: another server, or the same one later, may
    take the mail; only replies inside a transaction are final.
    """
    import aiosmtplib

    if isinstance(exc, SessionError):
        return exc.status
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code:
        status = reply_status(exc.code, exc.message, remote)
        enhanced = "4" + status.enhanced[1:] if status.enhanced[:1] == "5" else status.enhanced
        return RecipientStatus(Status.TEMPORARY, status.code, status.message, enhanced, remote)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return RecipientStatus(Status.TEMPORARY, 0, f"TLS failure with {remote}: {cause}", "4.7.5", remote)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return RecipientStatus(Status.TEMPORARY, 0, f"timed out talking to {remote}", "4.4.2", remote)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return RecipientStatus(Status.TEMPORARY, 0, f"lost connection with {remote}", "4.4.2", remote)
    if isinstance(exc, OSError | aiosmtplib.SMTPConnectError):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return RecipientStatus(Status.TEMPORARY, 0, f"cannot connect to {remote}: {reason}", "4.4.1", remote)
    return RecipientStatus(Status.TEMPORARY, 0, f"{remote}: {exc}", "4.0.0", remote)


async def _addresses(endpoint: Endpoint, timeout: float) -> list[str]:
    if endpoint.address:
        return [endpoint.address]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM), timeout)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _connect_socket(address: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Session:
    """One open SMTP connection to one endpoint."""

    client: aiosmtplib.SMTP
    endpoint: Endpoint
    remote: str
    timer: asyncio.TimerHandle | None = None
    reused: bool = False
    idle_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.client.is_connected

    async def quit(self) -> None:
        """QUIT politely, briefly; then drop the connection whatever happened."""
        try:
            if self.client.is_connected:
                await self.client.quit(timeout=QUIT_TIMEOUT)
        except Exception:
            pass
        finally:
            self.client.close()


async def open_session(endpoint: Endpoint, settings: SessionSettings, log: logging.Logger) -> Session:
    """Connect, read the greeting, EHLO, TLS and AUTH as configured; SessionError on failure."""
    import aiosmtplib

    timeouts = settings.timeouts
    remote = str(endpoint)
    try:
        addresses = await _addresses(endpoint, timeouts.connect)
    except (OSError, TimeoutError) as exc:
        raise SessionError(
            RecipientStatus(Status.TEMPORARY, 0, f"cannot resolve {endpoint.host}: {exc}", "4.4.3", remote)
        ) from exc
    sock, last_error, connected = None, None, None
    for address in addresses:
        try:
            sock = await _connect_socket(address, endpoint.port, timeouts.connect)
            connected = address
            remote = str(Endpoint(endpoint.host, endpoint.port, address))
            break
        except (OSError, TimeoutError) as exc:
            last_error = exc
            log.debug("connect to %s:%s failed: %s", address, endpoint.port, exc)
    if sock is None:
        raise SessionError(failure_status(last_error or OSError("no address"), remote))

    implicit = settings.tls == "implicit"
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        sock=sock,
        local_hostname=settings.helo,
        timeout=timeouts.command,
        use_tls=implicit,
        start_tls=False,
        tls_context=settings.tls_context() if implicit else None,
    )
    try:
        # The connect timeout bounded the TCP handshake; the greeting has its own (RFC 5321: 5 min).
        await client.connect(timeout=timeouts.command)
        await _hello(client, timeouts.command)
        if settings.tls == "starttls":
            if not client.supports_extension("starttls"):
                raise SessionError(
                    RecipientStatus(Status.TEMPORARY, 0, f"{remote} does not offer STARTTLS (tls = \"starttls\")", "4.7.0", remote)
                )
            await client.starttls(tls_context=settings.tls_context(), timeout=timeouts.command)
            await _hello(client, timeouts.command)
        elif settings.tls == "opportunistic" and client.supports_extension("starttls"):
            try:
                await client.starttls(tls_context=settings.tls_context(), timeout=timeouts.command)
                await _hello(client, timeouts.command)
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                if not client.is_connected:
                    # The handshake broke the connection: plain text on a new one beats no delivery.
                    log.info("STARTTLS with %s failed (%s); retrying without TLS", remote, exc)
                    client.close()
                    plain = SessionSettings(settings.helo, timeouts, tls="none")
                    return await open_session(Endpoint(endpoint.host, endpoint.port, connected), plain, log)
                log.info("%s refused STARTTLS (%s); continuing without TLS", remote, exc)
        if settings.username:
            try:
                password = settings.password() if settings.password else None
            except (LookupError, OSError) as exc:
                raise SessionError(
                    RecipientStatus(Status.TEMPORARY, 0, f"cannot read the password: {exc}", "4.7.8", remote)
                ) from None
            try:
                await client.login(settings.username, password or "", timeout=timeouts.command)
            except aiosmtplib.SMTPAuthenticationError as exc:
                # As Postfix's smtp_sasl_auth_soft_bounce: a refused login is a setup problem, not the mail's.
                raise SessionError(
                    RecipientStatus(Status.TEMPORARY, exc.code, f"authentication as {settings.username} failed: {_flat(exc.message)}", "4.7.8", remote)
                ) from None
    except SessionError:
        client.close()
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        client.close()
        raise SessionError(failure_status(exc, remote)) from exc
    except BaseException:
        client.close()
        raise
    log.debug("session open with %s (tls=%s)", remote, "yes" if client.get_transport_info("sslcontext") else "no")
    return Session(client, endpoint, remote)


def _flat(text: str) -> str:
    return _LINE_BREAKS.sub(" ", text or "").strip()


async def _hello(client: aiosmtplib.SMTP, timeout: float) -> None:
    """EHLO, or HELO from a server that does not know EHLO."""
    import aiosmtplib

    try:
        await client.ehlo(timeout=timeout)
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code not in (500, 502) or not client.is_connected:
            raise
        await client.helo(timeout=timeout)


@dataclass
class Transaction:
    """The outcome of one MAIL/RCPT/DATA exchange on one session."""

    statuses: dict[str, RecipientStatus] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)  # no final answer: try the next endpoint
    data_started: bool = False  # past this point a lost session may still have delivered


async def transact(session: Session, sender: str, recipients: Sequence[str], data: bytes, timeouts: Timeouts) -> Transaction:
    """One mail transaction; never raises for a delivery problem."""
    import aiosmtplib

    client, remote = session.client, session.remote
    done = Transaction()
    accepted: list[str] = []

    def lost(exc: BaseException) -> Transaction:
        status = failure_status(exc, remote)
        for rcpt in recipients:
            if rcpt not in done.statuses or rcpt in accepted:
                done.statuses[rcpt] = status
                done.retry.append(rcpt)
        client.close()
        return done

    def broken(exc: aiosmtplib.SMTPResponseException) -> bool:
        # 421 means "closing the channel": the next endpoint may do better.
        return exc.code == 421 or not client.is_connected

    options, encoding = [], "ascii"
    if client.supports_extension("size"):
        options.append(f"SIZE={len(data)}")
    if client.supports_extension("8bitmime") and not data.isascii():
        options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        if not client.supports_extension("smtputf8"):
            status = RecipientStatus(Status.PERMANENT, 0, f"{remote} does not support SMTPUTF8, needed for these addresses", "5.6.7", remote)
            return Transaction({r: status for r in recipients})
        options.append("SMTPUTF8")
        encoding = "utf-8"
    try:
        try:
            await client.mail(sender, options=options, encoding=encoding, timeout=timeouts.command)
        except ValueError:
            status = RecipientStatus(Status.PERMANENT, 0, f"bad sender address {sender!r}", "5.1.7", remote)
            return Transaction({r: status for r in recipients})
        except aiosmtplib.SMTPResponseException as exc:
            if broken(exc):
                return lost(exc)
            status = reply_status(exc.code, exc.message, remote)
            await _reset(client)
            return Transaction({r: status for r in recipients})
        for rcpt in recipients:
            try:
                await client.rcpt(rcpt, encoding=encoding, timeout=timeouts.command)
                accepted.append(rcpt)
            except ValueError:
                done.statuses[rcpt] = RecipientStatus(Status.PERMANENT, 0, f"bad recipient address {rcpt!r}", "5.1.3", remote)
            except aiosmtplib.SMTPResponseException as exc:
                if broken(exc):
                    return lost(exc)
                done.statuses[rcpt] = reply_status(exc.code, exc.message, remote)
        if not accepted:
            await _reset(client)
            return done
        done.data_started = True
        try:
            reply = await client.data(data, timeout=timeouts.data)
        except aiosmtplib.SMTPResponseException as exc:
            if broken(exc):
                return lost(exc)
            status = reply_status(exc.code, exc.message, remote)
            await _reset(client)
        else:
            status = reply_status(reply.code, reply.message, remote)
        for rcpt in accepted:
            done.statuses[rcpt] = status
        return done
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return lost(exc)


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused transaction; a server that fails it is closed, not reused."""
    try:
        await client.rset(timeout=PROBE_TIMEOUT)
    except Exception:
        client.close()


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
                results.update({r: exc.status for r in recipients})
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
            session = idle.pop()
            if session.timer:
                session.timer.cancel()
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
        loop = asyncio.get_running_loop()
        session.timer = loop.call_later(self.idle_timeout, self._expire, session)

    def _expire(self, session: Session) -> None:
        idle = self._idle.get(session.endpoint, [])
        if session in idle:
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
