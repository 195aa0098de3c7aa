"""A small HTTP server for ``/metrics`` on the agent's event loop.

The agent's state is read on the loop, so a scrape sees it between two steps, never
halfway through one; the page is then written out in a worker thread, so a large one
does not hold up the relay or the probes, and scrapes that come together (or within
``cache_for`` of one another) share one page. ``Accept`` chooses the Prometheus text
format or OpenMetrics; each connection answers one request and closes.

Connections cost the agent file descriptors it needs for probes, pickup and the relay:
at most ``max_connections`` are open at once, and one that has not sent its request
within ``idle_timeout`` is closed. At the cap, a new connection pushes out the oldest
one still waiting for its request (an idle client, not a scrape being answered); when
every open one is being answered, the new one is closed at once.

With ``[exporter] web_config`` (web.yml, ``alertmail.exporter.web``) the server speaks TLS,
asks every request for Basic credentials (``alertmail.exporter.auth``), adds the file's
headers to every answer, and takes the status page's actions: POST with a CSRF token
(``alertmail.exporter.actions``), then 303 back to ``/``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from alertmail.exporter.exposition import encode, negotiate
from alertmail.units import parse_address

log = logging.getLogger("alertmail.exporter")

MAX_HEAD = 16384
MAX_BODY = 16384  # bytes of a form posted from the status page
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 5.0
CACHE_FOR = 1.0
# Refused connections are logged at most this often, with their count.
REFUSED_LOG_EVERY = 60.0
# The status page loads nothing (its charts are data: URIs) and runs no script; no framing.
# Its forms post only to the page's own server.
PAGE_HEADERS = (
    (
        "Content-Security-Policy",
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),  # no-referrer would make the forms' Origin "null"
    ("Cache-Control", "no-store"),
)
REASONS = {
    200: "OK",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
}
TEXT = "text/plain; charset=utf-8"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    address: str  # the client's IP address
    scheme: str  # "http" or "https"
    body: bytes = b""

    def form(self) -> dict[str, str]:
        """The posted form's fields (the first value of each)."""
        fields = parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
        return {key: values[0] for key, values in fields.items()}


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = TEXT
    headers: list[tuple[str, str]] = field(default_factory=list)


class MetricsServer:
    """Serves ``collector`` on ``listen`` (host:port) at ``/metrics``."""

    def __init__(
        self,
        listen: str,
        collector: Any,
        *,
        max_connections: int = MAX_CONNECTIONS,
        idle_timeout: float = IDLE_TIMEOUT,
        cache_for: float = CACHE_FOR,
        web: Any = None,
    ) -> None:
        self.host, self.port = parse_address(listen)
        self.collector = collector
        self.max_connections = max(1, max_connections)
        self.idle_timeout = idle_timeout
        self.cache_for = cache_for
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # open, no request read yet; oldest first
        self._pages: dict[str, tuple[float, bytes]] = {}  # content type -> (when written, page)
        self._rendering: dict[str, asyncio.Task[bytes]] = {}
        self.refused = 0  # connections closed at the cap, since the start
        self._refused_logged = (0.0, 0)
        # The status page at "/" (alertmail.control) for the signed-in user (None without
        # basic_auth_users): its HTML, or None for a plain pointer to /metrics.
        self.status_page: Callable[[str | None], Awaitable[bytes | None]] | None = None
        # web.yml (alertmail.exporter.web.WebConfig): TLS, users, headers, rate limit.
        self.web = web
        self.auth: Any = None
        self.bucket: Any = None
        if web is not None and web.users:
            from alertmail.exporter.auth import BasicAuth

            self.auth = BasicAuth(web.user_hashes)
        if web is not None and web.rate_interval:
            from alertmail.exporter.auth import TokenBucket

            self.bucket = TokenBucket(web.rate_interval, web.rate_burst)
        self.extra_headers: list[tuple[str, str]] = list(web.headers) if web is not None else []
        # The page's actions (alertmail.exporter.actions.PageActions): only with basic_auth_users.
        self.actions: Any = None

    def observe(self, samples: Any) -> None:
        self.collector.observe(samples)

    async def start(self) -> None:
        # The backlog is also how many connections asyncio accepts in one go, before any is
        # looked at: kept at the cap, a flood costs at most twice the cap in descriptors.
        context = self.web.ssl_context if self.web is not None else None
        self._server = await asyncio.start_server(
            self._serve,
            self.host,
            self.port,
            limit=MAX_HEAD,
            backlog=self.max_connections,
            ssl=context,
            ssl_handshake_timeout=self.idle_timeout if context is not None else None,
        )
        bound = self._server.sockets[0].getsockname()
        self.port = bound[1]
        log.info(
            "serving metrics on %s://%s/metrics%s",
            "https" if context is not None else "http",
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
            f" (users: {len(self.web.users)}, from {self.web.path})" if self.web is not None and self.web.users else "",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._open):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    # -- the page -------------------------------------------------------------------
    async def page(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for, and its content type."""
        content_type = negotiate(accept)
        cached = self._pages.get(content_type)
        if cached is not None and time.monotonic() - cached[0] < self.cache_for:
            return cached[1], content_type
        task = self._rendering.get(content_type)
        if task is None:
            task = asyncio.ensure_future(self._render(content_type))
            self._rendering[content_type] = task
            task.add_done_callback(lambda _: self._rendering.pop(content_type, None))
        return await asyncio.shield(task), content_type

    async def _render(self, content_type: str) -> bytes:
        own, samples = self.collector.gather()  # on the loop: the state between two steps
        body = await asyncio.to_thread(lambda: encode(self.collector.families(own, samples), content_type))
        self._pages[content_type] = (time.monotonic(), body)
        return body

    # -- connections ------------------------------------------------------------------
    def _admit(self) -> bool:
        """Room for one more connection: at the cap, the oldest idle one is pushed out, or the new one refused."""
        if len(self._open) < self.max_connections:
            return True
        oldest = next(iter(self._waiting), None)
        if oldest is not None:
            self._forget(oldest)
            oldest.transport.abort()
        self.refused += 1
        now = time.monotonic()
        since, count = self._refused_logged
        if now - since >= REFUSED_LOG_EVERY:
            log.warning(
                "%d connection(s) closed at max_connections = %d since the last report",
                self.refused - count,
                self.max_connections,
            )
            self._refused_logged = (now, self.refused)
        return oldest is not None

    def _forget(self, writer: asyncio.StreamWriter) -> None:
        self._open.discard(writer)
        self._waiting.pop(writer, None)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit():
            writer.transport.abort()
            return
        self._open.add(writer)
        self._waiting[writer] = None
        try:
            tls = self.web.tls if self.web is not None else None
            if tls is not None and tls.client_allowed_sans:
                ssl_object = writer.get_extra_info("ssl_object")
                if ssl_object is None or not tls.allowed_peer(ssl_object.getpeercert()):
                    log.warning("exporter: a client certificate names none of client_allowed_sans; connection closed")
                    return
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
            self._waiting.pop(writer, None)
            request = self._request(head, writer)
            answer = await self._respond(request, reader)
            extra = [*(PAGE_HEADERS if answer.content_type.startswith("text/html") else ()), *answer.headers]
            own = {name.lower() for name, _ in self.extra_headers}
            extra = [(k, v) for k, v in extra if k.lower() not in own] + self.extra_headers
            lines = "".join(f"{k}: {v}\r\n" for k, v in extra)
            writer.write(
                f"HTTP/1.1 {answer.status} {REASONS.get(answer.status, '')}\r\nContent-Type: {answer.content_type}\r\n"
                f"Content-Length: {len(answer.body)}\r\n{lines}Connection: close\r\n\r\n".encode()
                + (answer.body if request.method != "HEAD" else b"")
            )
            await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("serving a metrics request failed")
        finally:
            self._forget(writer)
            writer.close()

    def _request(self, head: bytes, writer: asyncio.StreamWriter) -> Request:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        scheme = "https" if writer.get_extra_info("ssl_object") is not None else "http"
        return Request(method, path, headers, address, scheme)

    async def _respond(self, request: Request, reader: asyncio.StreamReader) -> Answer:
        if self.bucket is not None and not self.bucket.allow():
            return Answer(429, b"too many requests (web.yml rate_limit)\n")
        user = None
        if self.auth is not None:
            verdict = await self.auth.check(request.headers.get("authorization"), request.address)
            if verdict.status == 429:
                return Answer(
                    429,
                    b"too many wrong credentials from this address; try again later\n",
                    headers=[("Retry-After", str(verdict.retry_after))],
                )
            if verdict.user is None:
                if verdict.failed:
                    self._log_failure(request, verdict.held_back)
                return Answer(401, b"unauthorized\n", headers=[("WWW-Authenticate", 'Basic realm="alertmail", charset="UTF-8"')])
            user = verdict.user
        if request.method == "POST" and self.actions is not None and user is not None:
            problem = await self._read_body(request, reader)
            if problem is not None:
                return problem
            status, text, headers = await self.actions.handle(request, user)
            return Answer(status, text.encode(), headers=headers)
        return await self._answer(request, user)

    def _log_failure(self, request: Request, held_back: int) -> None:
        from alertmail.exporter.auth import FAILURES, credentials

        given = credentials(request.headers.get("authorization"))
        name = given[0] if given is not None else "?"
        log.warning("exporter: wrong credentials for user %r from %s", name[:64], request.address)
        if held_back:
            log.warning(
                "exporter: %d wrong logins from %s within a minute: answered 429 for %d s", FAILURES, request.address, held_back
            )

    async def _read_body(self, request: Request, reader: asyncio.StreamReader) -> Answer | None:
        """Read a posted form into ``request.body``; an answer when it cannot be taken."""
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return Answer(411, b"a form needs its Content-Length\n")
        if int(length) > MAX_BODY:
            return Answer(413, f"a form of at most {MAX_BODY} bytes\n".encode())
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return Answer(415, b"post the page's form (application/x-www-form-urlencoded)\n")
        request.body = await asyncio.wait_for(reader.readexactly(int(length)), self.idle_timeout)
        return None

    async def _answer(self, request: Request, user: str | None) -> Answer:
        if request.method not in ("GET", "HEAD"):
            allowed = "GET and POST" if self.actions is not None else "only GET"
            return Answer(405, f"{allowed}\n".encode(), headers=[("Allow", "GET, HEAD" + (", POST" if self.actions else ""))])
        if request.path == "/metrics":
            body, content_type = await self.page(request.headers.get("accept", ""))
            return Answer(200, body, content_type)
        if request.path == "/":
            html = await self.status_page(user) if self.status_page is not None else None
            if html is not None:
                return Answer(200, html, "text/html; charset=utf-8")
            return Answer(200, b"alertmail exporter: /metrics\n")
        return Answer(404, b"not found; try /metrics\n")
