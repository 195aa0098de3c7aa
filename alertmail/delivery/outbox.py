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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from alertmail.model import ServiceContext, TransportContext
from alertmail.protocols import Service, Transport

if TYPE_CHECKING:
    from alertmail.delivery.delivery import DeliveryConfig

log = logging.getLogger("alertmail.delivery.outbox")


class Plugins(Protocol):
    """What the outbox takes of the loaded plugins (``alertmail.loader.Plugins``)."""

    @property
    def transports(self) -> Mapping[str, type[Transport]]: ...
    @property
    def services(self) -> Sequence[type[Service]]: ...


STATE_FOLDERS = ("pickup", "queue", "badmail", "logs")
SERVICE_STOP_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0  # how long delivery attempts in flight may take to finish, without a stop bound


def _close_failed(transport: Transport, exc: Exception) -> None:
    log.debug("closing transport %s failed", transport.name, exc_info=exc)


def signing(cfg: DeliveryConfig) -> dict[str, Any]:
    """The Queue's DKIM arguments for ``[mail.dkim]``: the agent's own mail and DSNs are signed;
    a service asks for its mail to be signed when it puts it (``Intake.put(..., dkim=True)``)."""
    from alertmail.delivery.dkim import SECTION as DKIM
    from alertmail.delivery.dkim import Signer

    signer = Signer.from_options(cfg.section(DKIM))
    if signer is None:
        return {}
    return {"sign": signer, "sign_origins": {"agent", "dsn"}}


class Outbox:
    """Queue + transports + delivery for ``cfg.state_dir``; ``open()`` starts them, ``close()`` stops them."""

    def __init__(self, cfg: DeliveryConfig, plugins: Plugins) -> None:
        self.cfg = cfg
        self.plugins = plugins
        self.state_dir = Path(cfg.state_dir)
        self.services: list[Any] = []
        self.transports: dict[str, Transport] = {}
        self._retired: list[Transport] = []  # transports replaced by a reload, closed once attempts had time to end
        self._closing_tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        from alertmail.delivery.delivery import SECTION as QUEUE
        from alertmail.delivery.delivery import Delivery, build_transports, configured_routes
        from alertmail.queue.spool import Queue
        from alertmail.units import mail_domain

        cfg = self.cfg
        for sub in STATE_FOLDERS:
            (self.state_dir / sub).mkdir(parents=True, exist_ok=True)
        self.queue = Queue(self.state_dir / "queue", **signing(cfg))
        self.queue.routes = configured_routes(cfg)
        await self.queue.start()
        context = TransportContext(state_dir=self.state_dir, hostname=cfg.hostname, config_path=cfg.path)
        self.transports = build_transports(cfg.transports, self.plugins, context)
        self.delivery = Delivery(
            self.queue,
            self.transports,
            cfg.section(QUEUE),
            state_dir=self.state_dir,
            hostname=cfg.hostname,
            mail_domain=mail_domain(cfg.mail.sender, cfg.hostname),
            default_route=cfg.mail.route,
            routes=self.queue.routes,
        )
        await self.delivery.start()

    def build_transports(self, cfg: DeliveryConfig) -> dict[str, Transport]:
        """The transports ``cfg`` asks for: unchanged tables keep their running instance (and its sessions)."""
        from alertmail.delivery.delivery import build_transports

        context = TransportContext(state_dir=self.state_dir, hostname=cfg.hostname, config_path=cfg.path)
        kept = {n: t for n, t in self.transports.items() if self.cfg.transports.get(n) == cfg.transports.get(n)}
        fresh = build_transports({n: t for n, t in cfg.transports.items() if n not in kept}, self.plugins, context)
        return {name: kept.get(name) or fresh[name] for name in cfg.transports}

    async def reconfigure(self, cfg: DeliveryConfig, transports: dict[str, Transport]) -> None:
        """Apply a reloaded config: transports, [queue] settings and route, services whose table changed.

        ``transports`` comes from ``build_transports`` (built before anything is applied, so a
        transport that cannot be built refuses the reload whole).
        """
        from alertmail.delivery.delivery import SECTION as QUEUE
        from alertmail.delivery.delivery import configured_routes
        from alertmail.delivery.dkim import DkimKeyError
        from alertmail.units import mail_domain

        try:  # [mail.dkim]: a new key or selector signs from now on (load_config checked the keys just before)
            sign = signing(cfg)
            self.queue.sign, self.queue.sign_origins = sign.get("sign"), frozenset(sign.get("sign_origins", ()))
        except DkimKeyError as exc:
            log.error("dkim: %s; signing goes on with the keys read before", exc)
        old, self.cfg = self.cfg, cfg
        changed = {n for n in set(transports) | set(self.transports) if transports.get(n) is not self.transports.get(n)}
        retired = [t for n, t in self.transports.items() if transports.get(n) is not t]
        self.transports = transports
        self.queue.routes = configured_routes(cfg)
        again = self.delivery.apply(
            cfg.section(QUEUE),
            transports,
            default_route=cfg.mail.route,
            changed=changed,
            routes=self.queue.routes,
            mail_domain=mail_domain(cfg.mail.sender, cfg.hostname),
        )
        if changed or again:
            log.info("transports changed: %s; %d waiting message(s) tried again now", ", ".join(sorted(changed)) or "none", again)
        # Attempts in flight keep their reference and finish; the old instances close later, or at close().
        self._retired += retired
        for transport in retired:
            asyncio.get_running_loop().call_later(STOP_TIMEOUT, self._close_retired, transport)
        for cls in self.plugins.services:
            if old.sections.get(cls.section) == cfg.sections.get(cls.section):
                continue
            await self._restart_service(cls, old)

    async def _restart_service(self, cls: type[Service], old: Any) -> None:
        """Stop a service and start it on its new table; if it cannot start, on its old one again."""
        name, section = cls.name, cls.section
        service: Any
        for service in [s for s in self.services if type(s) is cls]:
            self.services.remove(service)
            await asyncio.wait_for(service.stop(), SERVICE_STOP_TIMEOUT)
        try:
            await self.start_services([cls])
        except Exception as exc:
            log.error("service %s cannot start with its new [%s] (%s); it runs on the previous table", name, section, exc)
            new, self.cfg = self.cfg, old
            try:
                await self.start_services([cls])
            finally:
                self.cfg = new
            return
        log.info("service %s restarted with its new [%s]", name, section)

    def _close_retired(self, transport: Transport) -> None:
        from alertmail.delivery.delivery import close_transports

        if transport in self._retired:
            self._retired.remove(transport)
            task = asyncio.ensure_future(close_transports([transport], failed=_close_failed))
            self._closing_tasks.add(task)
            task.add_done_callback(self._closing_tasks.discard)

    async def start_services(self, classes: Iterable[type[Service]], *, only_enabled: bool = True) -> list[Any]:
        """Build and start each service class whose config table says ``enabled`` (or all of them)."""
        started = []
        for cls in classes:
            if only_enabled and not self.cfg.service_enabled(cls):
                continue
            options = self.cfg.service_options(cls)
            service = cls()
            await service.start(
                ServiceContext(
                    # ServiceContext names the loader's Config, the one class that has this shape.
                    config=self.cfg,  # type: ignore[arg-type]
                    options=options,
                    queue=self.queue,
                    state_dir=self.state_dir,
                    hostname=self.cfg.hostname,
                    delivery=self.delivery,
                )
            )
            self.services.append(service)
            started.append(service)
            log.info("service %s started", cls.name)
        return started

    async def stop_services(self, timeout: float = SERVICE_STOP_TIMEOUT) -> None:
        """Stop the services, newest first, all within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.services:
            service = self.services.pop()
            try:
                await asyncio.wait_for(service.stop(), max(deadline - time.monotonic(), 0.1))
            except Exception:
                log.exception("service %s did not stop cleanly", service.name)

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
        from alertmail.delivery.delivery import close_transports

        deadline = None if timeout is None else time.monotonic() + timeout

        def left(default: float) -> float:
            return default if deadline is None else max(min(default, deadline - time.monotonic()), 0.1)

        await self.stop_services(left(SERVICE_STOP_TIMEOUT))
        await self.stop_delivery(left(STOP_TIMEOUT))
        retired, self._retired = self._retired, []  # a close timer still pending finds nothing left to close
        within = None if deadline is None else max(deadline - time.monotonic(), 0.1)
        await close_transports([*retired, *self.transports.values()], failed=_close_failed, within=within)
        if hasattr(self, "queue"):
            await self.queue.close()
