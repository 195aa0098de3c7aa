"""The Prometheus exporter: the agent's samples, rule states and own figures on ``/metrics``.

Off unless ``[exporter] listen`` is set. This module holds only the section and the
wiring, so the agent without an exporter imports nothing more; the figures are
gathered by ``collector``, written out by ``exposition`` and served by ``server``.
"""

from __future__ import annotations

from typing import Any

from alertmail.config.schema import Checker, Option, Section
from alertmail.units import parse_address

EXPORTER_OPTIONS: dict[str, Option] = {
    "listen": Option(
        "str",
        None,
        help='address to serve /metrics on, e.g. "127.0.0.1:9464"; off when not set (no authentication: bind with care)',
    ),
    "stale_after": Option(
        "duration",
        None,
        help="drop a series from /metrics when no sample came for this long; default: 3 probe intervals, at least 1m",
    ),
}


def _check(table: dict[str, Any], check: Checker, config: Any) -> None:
    listen = table.get("listen")
    if isinstance(listen, str):
        try:
            parse_address(listen)
        except ValueError as exc:
            check.error("exporter.listen", f'{exc}; write it as "127.0.0.1:9464" or "[::1]:9464"')


SECTION = Section("exporter", EXPORTER_OPTIONS, check=_check)


async def start_exporter(agent: Any) -> Any:
    """Start serving the agent's figures when ``[exporter] listen`` is set; the running exporter, or None."""
    options = agent.cfg.sections.get("exporter") or {}
    if not options.get("listen"):
        return None
    from alertmail.exporter.collector import AgentCollector
    from alertmail.exporter.server import MetricsServer

    intervals = [interval for _, interval, _ in agent.probes.values()]
    stale_after = options.get("stale_after") or max(60.0, 3 * max(intervals, default=20.0))
    infos = {info.name: info for probe in agent.plugins.probes.values() for info in (getattr(probe, "metrics", None) or ())}
    collector = AgentCollector(
        infos,
        states=lambda: agent.engine.states(),  # noqa: PLW0108  a reload replaces the engine
        queue=agent.queue,
        counts=getattr(agent.notifier, "counts", None),
        services=lambda: agent.outbox.services,
        stale_after=stale_after,
    )
    agent.outbox.delivery.observers.append(collector.delivered)
    server = MetricsServer(options["listen"], collector)

    async def page() -> bytes | None:  # the control socket's facts, as a page (alertmail.control)
        control = getattr(agent, "control", None)
        return await control.page() if control is not None else None

    server.page = page
    await server.start()
    return server
