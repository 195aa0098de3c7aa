"""The Prometheus exporter: the agent's samples, rule states and own figures on ``/metrics``.

Off unless ``[exporter] listen`` is set. This module holds only the section and the
wiring, so the agent without an exporter imports nothing more; the figures are
gathered by ``collector``, written out by ``exposition`` and served by ``server``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alertmail.config.schema import Checker, Section, Settings, listen_problem, setting

if TYPE_CHECKING:
    from alertmail.exporter.web import WebConfig


@dataclass(frozen=True, slots=True, kw_only=True)
class ExporterSettings(Settings):
    """``[exporter]``: /metrics and the status page."""

    listen: str | None = setting(
        "str",
        None,
        nonempty=True,
        help='address to serve /metrics on, e.g. "127.0.0.1:9464"; off when not set '
        "(no authentication unless web_config: bind with care)",
    )
    web_config: Path | None = setting(
        "path",
        None,
        help="a Prometheus exporter-toolkit web configuration file (web.yml): TLS, basic_auth_users (bcrypt); "
        "with users, the status page can add and expire silences and retry queued mail",
    )
    max_connections: int = setting(
        "int",
        32,
        help="most connections served at once; at the cap a new one pushes out the oldest idle one, or is closed",
    )
    idle_timeout: float = setting(
        "duration", 5.0, help="a connection that has not sent its request (or read the answer) within this is closed"
    )
    cache_for: float = setting(
        "duration",
        1.0,
        help="scrapes within this of one another share one page; 0: a new page for each scrape (those at once still share)",
    )
    stale_after: float | None = setting(
        "duration",
        None,
        minimum=1.0,
        help="drop a series from /metrics when no sample came for this long; default: 3 probe intervals, at least 1m",
    )
    # Not a key: web.yml as read with the config (check, run, reload), so a reload that finds
    # the file changed restarts the server.
    web: WebConfig | None = None


def _check(settings: ExporterSettings, check: Checker, config: object) -> ExporterSettings | None:
    cap = settings.max_connections
    if isinstance(cap, int) and not 1 <= cap <= 10000:
        check.error("exporter.max_connections", f"{cap} is out of range; give 1 to 10000 (default 32)")
    idle = settings.idle_timeout
    if isinstance(idle, int | float) and not 0 < idle <= 3600:
        check.error("exporter.idle_timeout", f"{idle:g}s is out of range; give more than 0s and at most 1h (default 5s)")
    cache = settings.cache_for
    if isinstance(cache, int | float) and not 0 <= cache <= 3600:
        check.error("exporter.cache_for", f"{cache:g}s is out of range; give 0s to 1h (default 1s)")
    listen = settings.listen
    if isinstance(listen, str):
        try:
            problem = listen_problem(listen)
        except ValueError as exc:
            check.error("exporter.listen", f'{exc}; write it as "127.0.0.1:9464" or "[::1]:9464"')
        else:
            if problem:
                check.error("exporter.listen", problem)
    if settings.web_config is None:
        return None
    return replace(settings, web=_read_web_config(check, settings.web_config))


def _read_web_config(check: Checker, path: Path) -> WebConfig | None:
    """web.yml, read with the config: its problems are the config's."""
    from alertmail.exporter.web import WebConfigError, read_web_config

    try:
        return read_web_config(path)
    except WebConfigError as exc:
        for key, message in exc.problems:
            check.error("exporter.web_config", f"{path}: {key}: {message}" if key else f"{path}: {message}")
        return None


SECTION: Section[ExporterSettings] = Section("exporter", ExporterSettings, check=_check)
log = logging.getLogger("alertmail.exporter")


async def start_exporter(agent: Any) -> Any:
    """Start serving the agent's figures when ``[exporter] listen`` is set; the running exporter, or None."""
    options = agent.cfg.section(SECTION)
    if not options.listen:
        return None
    from alertmail.exporter.collector import AgentCollector
    from alertmail.exporter.server import MetricsServer

    intervals = [interval for _, interval, _ in agent.probes.values()]
    stale_after = options.stale_after or max(60.0, 3 * max(intervals, default=20.0))
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
        options.listen,
        collector,
        max_connections=options.max_connections,
        idle_timeout=options.idle_timeout,
        cache_for=options.cache_for,
        web=options.web,
    )
    web = options.web
    actions = None
    if web is not None and web.users:
        from alertmail.exporter.actions import SECRET_FILE, PageActions, agent_secret

        try:
            actions = PageActions(agent, web.user_hashes, agent_secret(agent.state_dir))
        except OSError as exc:  # the page still shows, read-only: no form can be trusted without the secret
            log.error("exporter: cannot keep %s in %s (%s); the status page stays read-only", SECRET_FILE, agent.state_dir, exc)
        else:
            server.actions = actions

    async def page(user: str | None) -> bytes | None:  # the control socket's facts, as a page (alertmail.control)
        control = getattr(agent, "control", None)
        if control is None:
            return None
        controls = {"user": user, "token": actions.token(user)} if actions is not None and user is not None else None
        return await control.page(controls)

    server.status_page = page
    await server.start()
    return server
