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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from alertmail.exporter.exposition import encode, negotiate
from alertmail.units import parse_address

log = logging.getLogger("alertmail.exporter")

MAX_HEAD = 16384
MAX_CONNECTIONS = 32
IDLE_TIMEOUT = 5.0
CACHE_FOR = 1.0
# Refused connections are logged at most this often, with their count.
REFUSED_LOG_EVERY = 60.0
# The status page loads nothing (its charts are data: URIs) and runs no script; no framing.
PAGE_HEADERS = (
    "Content-Security-Policy: default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-store\r\n"
)


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
        # The status page at "/" (alertmail.control): its HTML, or None for a plain pointer to /metrics.
        self.status_page: Callable[[], Awaitable[bytes | None]] | None = None

    def observe(self, samples: Any) -> None:
        self.collector.observe(samples)

    async def start(self) -> None:
        # The backlog is also how many connections asyncio accepts in one go, before any is
        # looked at: kept at the cap, a flood costs at most twice the cap in descriptors.
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD, backlog=self.max_connections)
        bound = self._server.sockets[0].getsockname()
        self.port = bound[1]
        log.info(
            "serving metrics on http://%s/metrics",
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
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
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_timeout)
            self._waiting.pop(writer, None)
            status, body, content_type = await self._answer(head)
            extra = PAGE_HEADERS if content_type.startswith("text/html") else ""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode()
                + (body if not head.startswith(b"HEAD ") else b"")
            )
            await asyncio.wait_for(writer.drain(), self.idle_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("serving a metrics request failed")
        finally:
            self._forget(writer)
            writer.close()

    async def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        lines = head.decode("latin-1").split("\r\n")
        method, _, rest = lines[0].partition(" ")
        path = rest.partition(" ")[0].partition("?")[0]
        headers = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if sep:
                headers[key.strip().lower()] = value.strip()
        text = "text/plain; charset=utf-8"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", b"only GET\n", text
        if path == "/metrics":
            body, content_type = await self.page(headers.get("accept", ""))
            return "200 OK", body, content_type
        if path == "/":
            html = await self.status_page() if self.status_page is not None else None
            if html is not None:
                return "200 OK", html, "text/html; charset=utf-8"
            return "200 OK", b"alertmail exporter: /metrics\n", text
        return "404 Not Found", b"not found; try /metrics\n", text
