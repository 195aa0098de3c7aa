"""The relay's listening sockets and live sessions: start, addresses, a graceful stop.

Imported only when the relay starts (aiosmtpd is not loaded by an idle agent).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import logging
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from alertmail.intake import Intake
from alertmail.plugins.relay.handler import RelayHandler
from alertmail.plugins.relay.policy import RelayPolicy
from alertmail.plugins.relay.server import RelaySMTP
from alertmail.plugins.relay.w3c import W3CLog

log = logging.getLogger("alertmail.relay")
# OpenSSL's cipher string for TLS 1.2 (set_ciphers does not touch the TLS 1.3 suites).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
# Connections waiting to be accepted, per listening socket.
BACKLOG = 512


@dataclass
class RelayServer:
    """The listening sockets and the live sessions."""

    policy: RelayPolicy
    queue: Intake
    w3c: W3CLog
    tls: ssl.SSLContext | None = None
    connections: set[RelaySMTP] = field(default_factory=set)
    stopping: bool = False
    _servers: list[asyncio.Server] = field(default_factory=list)
    # sessions per client, and the times of recent failed AUTH per client (as Postfix's anvil); a client
    # is an IPv4 address or an IPv6 network (RelayPolicy.client_key)
    _per_client: collections.Counter[str] = field(default_factory=collections.Counter)
    _auth_failures: dict[str, collections.deque[float]] = field(default_factory=dict)
    _allowed_sessions: int = 0  # sessions of `allow` clients, in connections
    auth_log: AuthWarnings = field(init=False)
    # sessions, sessions_refused, accepted, refused: what /metrics shows of the relay
    counts: collections.Counter[str] = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        self.auth_log = AuthWarnings(self.policy.max_auth_warnings, self.policy.rate_window)

    def admit(self, session: RelaySMTP) -> str | None:
        """Count a new session in; the reason it is refused when a cap is reached (then it is not counted)."""
        policy = self.policy
        if len(self.connections) >= policy.max_connections:
            self.counts["sessions_refused"] += 1
            return "too many connections"
        if not session.client_allowed:
            if len(self.connections) - self._allowed_sessions >= policy.outside_connections:
                self.counts["sessions_refused"] += 1
                return "too many connections"
            if self._per_client[session.client_key] >= policy.max_connections_per_client:
                self.counts["sessions_refused"] += 1
                return f"too many connections from {session.client_key}"
        self.counts["sessions"] += 1
        self.connections.add(session)
        self._per_client[session.client_key] += 1
        if session.client_allowed:
            self._allowed_sessions += 1
        return None

    def release(self, session: RelaySMTP) -> None:
        if session in self.connections:
            self.connections.discard(session)
            if session.client_allowed:
                self._allowed_sessions -= 1
            self._per_client[session.client_key] -= 1
            if self._per_client[session.client_key] <= 0:
                del self._per_client[session.client_key]

    def _recent_failures(self, key: str, now: float) -> collections.deque[float] | None:
        failures = self._auth_failures.get(key)
        if failures is not None:
            while failures and failures[0] <= now - self.policy.rate_window:
                failures.popleft()
            if not failures:
                del self._auth_failures[key]
                return None
        return failures

    def auth_blocked(self, key: str) -> bool:
        """True while client ``key`` has failed AUTH max_auth_failures times within rate_window."""
        failures = self._recent_failures(key, time.monotonic())
        return failures is not None and len(failures) >= self.policy.max_auth_failures

    def auth_failed(self, key: str) -> bool:
        """Count a failed AUTH from client ``key``; True when it has now reached the limit."""
        now = time.monotonic()
        failures = self._recent_failures(key, now)
        if failures is None:
            if len(self._auth_failures) >= 100_000:  # bounded memory under a spread-out attack
                self._auth_failures.pop(next(iter(self._auth_failures)))
            failures = self._auth_failures[key] = collections.deque()
        failures.append(now)
        return len(failures) >= self.policy.max_auth_failures

    def _session(self) -> RelaySMTP:
        return RelaySMTP(
            RelayHandler(self.policy, self.queue, self),
            self,
            hostname=self.policy.hostname,  # no getfqdn() per connection
            ident="ESMTP",
            data_size_limit=self.policy.max_size,
            enable_SMTPUTF8=False,  # delivery does not promise SMTPUTF8 end to end
            tls_context=self.tls,
            require_starttls=self.policy.require_tls,
            auth_require_tls=True,
            auth_exclude_mechanism=() if self.policy.users else ("PLAIN", "LOGIN"),
            timeout=self.policy.timeout,
            loop=asyncio.get_running_loop(),
        )

    async def start(self, listen: Iterable[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        for host, port in listen:
            server = await loop.create_server(self._session, host, port, reuse_address=True, backlog=BACKLOG)
            self._servers.append(server)
            log.info("relay: listening on %s", ", ".join(_format(s.getsockname()) for s in server.sockets))

    async def start_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on sockets already bound and listening (a receiving process inherits them)."""
        loop = asyncio.get_running_loop()
        for sock in sockets:
            self._servers.append(await loop.create_server(self._session, sock=sock, backlog=BACKLOG))

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [s.getsockname()[:2] for server in self._servers for s in server.sockets]

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting; let transactions in flight finish (up to ``timeout``); close the rest."""
        self.stopping = True
        for server in self._servers:
            server.close()
        deadline = time.monotonic() + timeout
        while any(c.in_transaction() for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.connections):
            if session.transport is not None:
                if not session.in_transaction():
                    cast(asyncio.WriteTransport, session.transport).write(
                        f"421 4.3.2 {self.policy.hostname} service shutting down\r\n".encode()
                    )
                session.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


class AuthWarnings:
    """The warnings about failed AUTH: at most ``limit`` lines per ``window``, the rest counted.

    A guesser (or many) would otherwise write a line per guess without end. Past the
    limit, failures are only counted; once the window is over, one line gives their
    number, the number of clients and the clients with the most.
    """

    def __init__(self, limit: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._started = clock()
        self._written = 0
        self._skipped: collections.Counter[str] = collections.Counter()
        self._skipped_total = 0
        self._timer: asyncio.TimerHandle | None = None

    def warn(self, client: str, message: str, *args: object) -> None:
        """Log ``message % args`` about ``client``, or count it when the window's lines are spent."""
        now = self.clock()
        if now - self._started >= self.window:
            self.flush(now)
        if self._written < self.limit:
            self._written += 1
            log.warning(message, *args)
            return
        self._skipped_total += 1
        if client in self._skipped or len(self._skipped) < 10_000:  # bounded under a spread-out attack
            self._skipped[client] += 1
        if self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return  # no loop (a unit): the next warning or flush() writes the count
            self._timer = loop.call_later(max(0.0, self._started + self.window - now), self._due)

    def _due(self) -> None:
        self._timer = None
        self.flush(self.clock())

    def flush(self, now: float | None = None) -> None:
        """Write the count of what went unlogged, and start a new window."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._skipped_total:
            top = ", ".join(f"{client} {count}" for client, count in self._skipped.most_common(3))
            log.warning(
                "relay: %d more failed AUTH not logged one by one in %.0fs, from %d client(s) (most: %s)",
                self._skipped_total,
                self.window,
                len(self._skipped),
                top,
            )
        self._skipped.clear()
        self._skipped_total = 0
        self._written = 0
        self._started = self.clock() if now is None else now


def bind(listen: Iterable[tuple[str, int]]) -> list[socket.socket]:
    """Listening sockets for ``listen`` (each name's every address), inheritable by the receiving processes.

    A port still held by receiving processes of a relay that was just killed is tried
    again for a few seconds: they close it as soon as they notice.
    """
    sockets: list[socket.socket] = []
    try:
        for host, port in listen:
            for family, kind, proto, _, address in socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            ):
                sock = socket.socket(family, kind, proto)
                sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                for attempt in range(50):
                    try:
                        sock.bind(address)
                        break
                    except OSError as exc:
                        if exc.errno != errno.EADDRINUSE or attempt == 49:
                            raise
                        time.sleep(0.1)
                sock.listen(BACKLOG)
                sock.setblocking(False)
                sock.set_inheritable(True)
                log.info("relay: listening on %s", _format(sock.getsockname()))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _format(sockname: tuple[Any, ...]) -> str:
    host, port = sockname[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context for STARTTLS: TLS 1.2 or later, AEAD suites only, no client certificates asked.

    TLS 1.2 offers ECDHE with AES-GCM or ChaCha20-Poly1305 (no CBC suites, whose MAC-then-encrypt
    invited padding oracles); TLS 1.3 suites are all AEAD and are left as OpenSSL offers them.
    """
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.load_cert_chain(cert, key)
    return context
