"""The Prometheus exporter: the agent's samples, rule states and own figures on ``/metrics``.

Off unless ``[exporter] listen`` is set. This module holds only the section and the
wiring, so the agent without an exporter imports nothing more; the figures are
gathered by ``collector``, written out by ``exposition`` and served by ``server``.
"""

from __future__ import annotations

from typing import Any

from alertmail.config.schema import Checker, Option, Section, listen_problem

EXPORTER_OPTIONS: dict[str, Option] = {
    "listen": Option(
        "str",
        None,
        nonempty=True,
        help='address to serve /metrics on, e.g. "127.0.0.1:9464"; off when not set (no authentication: bind with care)',
    ),
    "max_connections": Option(
        "int",
        32,
        help="most connections served at once; at the cap a new one pushes out the oldest idle one, or is closed",
    ),
    "idle_timeout": Option(
        "duration", 5.0, help="a connection that has not sent its request (or read the answer) within this is closed"
    ),
    "cache_for": Option(
        "duration",
        1.0,
        help="scrapes within this of one another share one page; 0: a new page for each scrape (those at once still share)",
    ),
    "stale_after": Option(
        "duration",
        None,
        minimum=1.0,
        help="drop a series from /metrics when no sample came for this long; default: 3 probe intervals, at least 1m",
    ),
}


def _check(table: dict[str, Any], check: Checker, config: Any) -> None:
    cap = table.get("max_connections")
    if isinstance(cap, int) and not 1 <= cap <= 10000:
        check.error("exporter.max_connections", f"{cap} is out of range; give 1 to 10000 (default 32)")
    idle = table.get("idle_timeout")
    if isinstance(idle, int | float) and not 0 < idle <= 3600:
        check.error("exporter.idle_timeout", f"{idle:g}s is out of range; give more than 0s and at most 1h (default 5s)")
    cache = table.get("cache_for")
    if isinstance(cache, int | float) and not 0 <= cache <= 3600:
        check.error("exporter.cache_for", f"{cache:g}s is out of range; give 0s to 1h (default 1s)")
    listen = table.get("listen")
    if isinstance(listen, str):
        try:
            problem = listen_problem(listen)
        except ValueError as exc:
            check.error("exporter.listen", f'{exc}; write it as "127.0.0.1:9464" or "[::1]:9464"')
        else:
            if problem:
                check.error("exporter.listen", problem)


SECTION: Section[Any] = Section("exporter", EXPORTER_OPTIONS, check=_check)


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
    server = MetricsServer(
        options["listen"],
        collector,
        max_connections=options["max_connections"],
        idle_timeout=options["idle_timeout"],
        cache_for=options["cache_for"],
    )

    async def page() -> bytes | None:  # the control socket's facts, as a page (alertmail.control)
        control = getattr(agent, "control", None)
        return await control.page() if control is not None else None

    server.status_page = page
    await server.start()
    return server
