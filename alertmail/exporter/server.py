"""A small HTTP server for ``/metrics`` on the agent's event loop.

Scrapes are read on the loop, so they see the agent's state between two steps, never
halfway through one; no thread is added to the agent. ``Accept`` chooses the Prometheus
text format or OpenMetrics; each connection answers one request and closes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from alertmail.exporter.exposition import encode, negotiate
from alertmail.units import parse_address

log = logging.getLogger("alertmail.exporter")

READ_TIMEOUT = 10.0
MAX_HEAD = 16384
# The status page loads nothing (its charts are data: URIs) and runs no script; no framing.
PAGE_HEADERS = (
    "Content-Security-Policy: default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\nCache-Control: no-store\r\n"
)


class MetricsServer:
    """Serves ``collector`` on ``listen`` (host:port) at ``/metrics``."""

    def __init__(self, listen: str, collector: Any) -> None:
        self.host, self.port = parse_address(listen)
        self.collector = collector
        self._server: asyncio.Server | None = None
        # The status page at "/" (alertmail.control): async, returns its HTML; None serves a plain pointer to /metrics.
        self.page: Callable[[], Awaitable[bytes | None]] | None = None

    def observe(self, samples: Any) -> None:
        self.collector.observe(samples)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_HEAD)
        bound = self._server.sockets[0].getsockname()
        self.port = bound[1]
        log.info(
            "serving metrics on http://%s/metrics",
            f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}",
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def render(self, accept: str) -> tuple[bytes, str]:
        """The exposition in the format ``accept`` asks for, and its content type."""
        content_type = negotiate(accept)
        return encode(self.collector.collect(), content_type), content_type

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            status, body, content_type = await self._page(head) or self._answer(head)
            extra = PAGE_HEADERS if content_type.startswith("text/html") else ""
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}"
                "Connection: close\r\n\r\n".encode()
                + (body if not head.startswith(b"HEAD ") else b"")
            )
            await asyncio.wait_for(writer.drain(), READ_TIMEOUT)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("serving a metrics request failed")
        finally:
            writer.close()

    async def _page(self, head: bytes) -> tuple[str, bytes, str] | None:
        """The status page for GET or HEAD of "/", when there is one."""
        if self.page is None or not head.startswith((b"GET / ", b"HEAD / ", b"GET /?", b"HEAD /?")):
            return None
        body = await self.page()
        return ("200 OK", body, "text/html; charset=utf-8") if body is not None else None

    def _answer(self, head: bytes) -> tuple[str, bytes, str]:
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
            body, content_type = self.render(headers.get("accept", ""))
            return "200 OK", body, content_type
        if path == "/":
            return "200 OK", b"alertmail exporter: /metrics\n", text
        return "404 Not Found", b"not found; try /metrics\n", text
