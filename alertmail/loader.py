"""Finding and loading plugins: the bundled set, entry points, and single files.

The bundled plugins are registered through the very same ``pm.register`` call a
third-party plugin goes through; nothing here imports them by name at import time.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from alertmail import hookspecs, protocols
from alertmail.errors import AlertmailError

log = logging.getLogger("alertmail.plugins")

ENTRY_POINT_GROUP = "alertmail"

# Which entry-point plugins load, as datasette's DATASETTE_LOAD_PLUGINS and llm's
# LLM_LOAD_PLUGINS: unset, every one; set, only those named (comma-separated entry-point
# or distribution names); empty, none. The bundled plugins and plugin_dirs files always load.
LOAD_PLUGINS_ENV = "ALERTMAIL_LOAD_PLUGINS"

# Module paths, as in datasette's DEFAULT_PLUGINS.
BUNDLED_PLUGINS: tuple[str, ...] = (
    "alertmail.plugins.probes.system",
    "alertmail.plugins.probes.netchecks",
    "alertmail.plugins.probes.process",
    "alertmail.plugins.probes.external",
    "alertmail.plugins.probes.host",
    "alertmail.plugins.transports.pickup",
    "alertmail.plugins.transports.smtp",
    "alertmail.plugins.transports.mx",
    "alertmail.plugins.transports.alertmanager",
    "alertmail.plugins.transports.exec",
    "alertmail.plugins.transports.webhook",
    "alertmail.plugins.relay",
    "alertmail.plugins.maildrop",
)


@dataclass
class PluginInfo:
    """One loaded (or failed) plugin, as `alertmail plugins` shows it."""

    name: str
    source: str  # "bundled", "entry point" or "file"
    version: str | None = None
    location: str = ""
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    probes: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    services: list[str] = field(default_factory=list)


class PluginError(AlertmailError):
    """A plugin broke the plugin contract (e.g. a misspelt hook name)."""


@dataclass
class Plugins:
    """The loaded plugins and everything they registered."""

    pm: pluggy.PluginManager
    infos: dict[str, PluginInfo]
    probes: dict[str, protocols.ProbeProtocol] = field(default_factory=dict)
    transports: dict[str, type[protocols.Transport]] = field(default_factory=dict)
    services: list[type[protocols.Service]] = field(default_factory=list)

    @property
    def errors(self) -> list[PluginInfo]:
        return [i for i in self.infos.values() if i.error]

    @property
    def hook(self) -> Any:
        return self.pm.hook


def _version_of(module: ModuleType) -> str | None:
    version = getattr(module, "__version__", None)
    return str(version) if version else None


def _import_file(path: Path) -> ModuleType:
    name = f"alertmail_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def entry_points_allowed() -> set[str] | None:
    """The entry-point plugins ``ALERTMAIL_LOAD_PLUGINS`` lets load (normalised names); None: all."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {_normalise(name) for name in value.split(",") if name.strip()}


def _candidates(plugin_dirs: Iterable[Path]) -> Iterable[tuple[str, str, Callable[[], Any], str | None, str]]:
    """Yield (name, source, load, version, location) for every plugin to try."""
    from alertmail.version import __version__

    for path in BUNDLED_PLUGINS:
        short = path.rsplit(".", 1)[-1]
        yield short, "bundled", functools.partial(importlib.import_module, path), __version__, path

    from importlib.metadata import entry_points

    allowed = entry_points_allowed()
    for ep in entry_points(group=ENTRY_POINT_GROUP) if allowed != set() else ():
        dist = ep.dist
        if allowed is not None and not {_normalise(ep.name), _normalise(dist.name if dist else "")} & allowed:
            log.debug("entry-point plugin %s not loaded: %s does not name it", ep.name, LOAD_PLUGINS_ENV)
            continue
        yield ep.name, "entry point", ep.load, (dist.version if dist else None), ep.value

    for folder in plugin_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for file in sorted(folder.glob("*.py")):
            if file.name.startswith("_"):
                continue
            yield file.stem, "file", functools.partial(_import_file, file), None, str(file)


def load_plugins(plugin_dirs: Iterable[Path | str] = (), *, blocked: Iterable[str] = ()) -> Plugins:
    """Load every plugin; a plugin that fails is recorded with its error, not fatal."""
    pm = pluggy.PluginManager("alertmail")
    pm.add_hookspecs(hookspecs)
    blocked = set(blocked)
    infos: dict[str, PluginInfo] = {}
    for name, source, load, version, location in _candidates(Path(d) for d in plugin_dirs):
        if name in blocked:
            pm.set_blocked(name)
            continue
        if name in infos:
            name = f"{name} ({source})"
        info = PluginInfo(name=name, source=source, version=version, location=location)
        infos[name] = info
        try:
            module = load()
            if version is None:
                info.version = _version_of(module)
            pm.register(module, name=name)
        except Exception as exc:  # a broken plugin must not stop the others
            info.error = f"{type(exc).__name__}: {exc}"
            log.error("plugin %s (%s, %s) failed to load: %s", name, source, location, info.error)
            continue
        info.hooks = sorted(h.name for h in pm.get_hookcallers(module) or ())
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    plugins = Plugins(pm=pm, infos=infos)
    _collect(plugins)
    return plugins


def _collect(plugins: Plugins) -> None:
    """Run the collector hooks plugin by plugin, so each registration is attributed."""
    pm = plugins.pm

    def each(hook_name: str, add: Callable[[PluginInfo, Any], None]) -> None:
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            info = plugins.infos[impl.plugin_name]
            try:
                impl.function(register=lambda obj, info=info: add(info, obj))
            except Exception as exc:
                info.error = f"{hook_name}: {type(exc).__name__}: {exc}"
                log.error("plugin %s failed in %s: %s", info.name, hook_name, exc)

    def conforming(info: PluginInfo, kind: str, obj: Any) -> None:
        wrong = protocols.problem(kind, obj)
        if wrong is not None:
            raise PluginError(f"plugin {info.name}: {wrong}")

    def add_probe(info: PluginInfo, probe: protocols.ProbeProtocol) -> None:
        conforming(info, "probe", probe)
        name = probe.name
        if name in plugins.probes:
            log.warning("plugin %s: probe %r already registered; the later one wins", info.name, name)
        plugins.probes[name] = probe
        info.probes.append(name)

    def add_transport(info: PluginInfo, transport: type[protocols.Transport]) -> None:
        conforming(info, "transport", transport)
        plugins.transports[transport.name] = transport
        info.transports.append(transport.name)

    def add_service(info: PluginInfo, service: type[protocols.Service]) -> None:
        conforming(info, "service", service)
        plugins.services.append(service)
        info.services.append(service.name)

    each("register_probes", add_probe)
    each("register_transports", add_transport)
    each("register_services", add_service)
