"""The outgoing side of one state_dir: the queue, the transports and delivery, plus services.

Both ``alertmail run`` (the agent) and ``alertmail relay`` (the relay alone) start
mail handling through here, so they open, feed and close the queue the same way.
Stop order: services (no new mail; transactions in flight finish and are queued),
then delivery (attempts in flight finish), then transports, then the queue. The agent
stops services and delivery first, queues what its notifier still holds, then closes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alertmail.model import ServiceContext, TransportContext

log = logging.getLogger("alertmail.delivery.outbox")

STATE_FOLDERS = ("pickup", "queue", "badmail", "logs")
SERVICE_STOP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0  # how long delivery attempts in flight may take to finish, without a stop bound


class Outbox:
    """Queue + transports + delivery for ``cfg.state_dir``; ``open()`` starts them, ``close()`` stops them."""

    def __init__(self, cfg: Any, plugins: Any) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.state_dir = Path(cfg.state_dir)
        self.services: list[Any] = []

    async def open(self) -> None:
        from alertmail.delivery.delivery import Delivery, RetryPolicy, build_transports
        from alertmail.queue.spool import Queue

        cfg = self.cfg
        for sub in STATE_FOLDERS:
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        options = cfg.sections.get("queue", {})
        self.queue = Queue(self.state_dir / "queue")
        await self.queue.start()
        context = TransportContext(state_dir=self.state_dir, hostname=cfg.hostname, config_path=cfg.path)
        self.transports = build_transports(cfg, self.plugins, context)
        self.delivery = Delivery(
            self.queue,
            self.transports,
            policy=RetryPolicy.from_config(options),
            state_dir=self.state_dir,
            hostname=cfg.hostname,
            default_route=cfg.mail["route"],
            concurrency=options.get("concurrency") or 8,
        )
        await self.delivery.start()

    async def start_services(self, classes: Iterable[type], *, only_enabled: bool = True) -> list[Any]:
        """Build and start each service class whose config table says ``enabled`` (or all of them)."""
        started = []
        for cls in classes:
            options = self.cfg.sections.get(getattr(cls, "section", ""), {})
            if only_enabled and not options.get("enabled"):
                continue
            service = cls()
            await service.start(
                ServiceContext(
                    config=self.cfg,
                    options=options,
                    queue=self.queue,
                    state_dir=self.state_dir,
                    hostname=self.cfg.hostname,
                    delivery=self.delivery,
                )
            )
            self.services.append(service)
            started.append(service)
            log.info("service %s started", getattr(cls, "name", cls.__name__))
        return started

    async def stop_services(self, timeout: float = SERVICE_STOP_TIMEOUT) -> None:
        """Stop the services, newest first, all within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.services:
            service = self.services.pop()
            try:
                await asyncio.wait_for(service.stop(), max(deadline - time.monotonic(), 0.1))
            except Exception:
                log.exception("service %s did not stop cleanly", getattr(service, "name", service))

    async def stop_delivery(self, timeout: float = STOP_TIMEOUT) -> None:
        """No new delivery attempts; those in flight finish within ``timeout`` or are retried after the restart."""
        if hasattr(self, "delivery"):
            await self.delivery.stop(timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Stop services, then delivery, transports and the queue; whatever was opened.

        With ``timeout`` every step shares that budget (the agent's stop bound); without it
        each step has its own default. The queue is closed last, whatever the budget left:
        a commit round under way always finishes, so nothing accepted is lost.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left(default: float) -> float:
            return default if deadline is None else max(min(default, deadline - time.monotonic()), 0.1)

        await self.stop_services(left(SERVICE_STOP_TIMEOUT))
        await self.stop_delivery(left(STOP_TIMEOUT))
        for transport in getattr(self, "transports", {}).values():
            close = getattr(transport, "close", None)
            if close is not None:
                try:
                    await asyncio.wait_for(close(), left(10.0))
                except Exception:
                    log.debug("closing transport %s failed", getattr(transport, "name", "?"), exc_info=True)
        if hasattr(self, "queue"):
            await self.queue.close()
