"""Reading and validating the TOML configuration: the one module that composes the sections.

The whole file is checked before anything starts, and every mistake is reported at
once, each naming the file, the key path and the fix::

    config.toml: rules[2].above: expected a number, got "ninety"

Each component declares its own section next to its code; ``SECTIONS`` lists them in
the order they are checked. Tables named by plugins (``[transports.NAME]``,
``[probes.NAME]``, a service's ``[relay]``) are checked against the options the
plugin declares; a service may also declare ``check(options, checker, config)`` for
what its keys alone cannot say.
"""

from __future__ import annotations

import glob
import os
import socket
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alertmail.config.core import AGENT, MAIL, AgentSettings, MailSettings
from alertmail.config.schema import (
    Checker,
    ConfigError,
    Option,
    Section,
    SettingsT,
    did_you_mean,
    open_bracket,
    options_of,
    typed,
    value_of,
)
from alertmail.delivery.delivery import SECTION as QUEUE
from alertmail.delivery.dkim import SECTION as DKIM
from alertmail.exporter import SECTION as EXPORTER
from alertmail.notify.heartbeat import SECTION as HEARTBEAT
from alertmail.notify.notifier import SECTION as NOTIFY
from alertmail.notify.silences import SECTION as SILENCES
from alertmail.probes.runner import COMMON_KEYS, PROBE_OPTIONS, configure_probe
from alertmail.rules.config import SECTION as RULES

if TYPE_CHECKING:
    from alertmail.loader import Plugins

# In the order their problems are reported; rules last, as they read [mail]. A dotted name
# ("mail.dkim") is a table nested in another section, owned by its own component.
SECTIONS: tuple[Section, ...] = (AGENT, MAIL, DKIM, NOTIFY, HEARTBEAT, SILENCES, QUEUE, EXPORTER, RULES)
PLUGIN_SECTIONS = ("transports", "probes")
# include = ["conf.d/*.toml"]: more [[rules]] and [[silences]], one file per team or service.
INCLUDE = "include"


@dataclass
class Config:
    """A validated configuration."""

    path: Path
    agent: AgentSettings
    mail: MailSettings
    rules: list[Any] = field(default_factory=list)
    transports: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # not wrong, but likely not meant: check prints them, run logs them

    @property
    def state_dir(self) -> Path:
        return self.agent.state_dir

    @property
    def hostname(self) -> str:
        return self.agent.hostname or socket.gethostname()

    def section(self, section: Section[SettingsT]) -> SettingsT:
        """The settings of one section (its declared defaults when the file has no such table)."""
        value = self.sections.get(section.name)
        if value is None:
            value = section.typed({})
        return value

    def tables(self, section: Section[SettingsT]) -> list[SettingsT]:
        """The settings of an array section, one per table, included files' too (none when the file has none)."""
        return list(self.sections.get(section.name) or [])

    @property
    def plugin_dirs(self) -> list[Path]:
        return [p if p.is_absolute() else self.path.parent / p for p in map(Path, self.agent.plugin_dirs)]

    def service_options(self, service: Any) -> dict[str, Any]:
        """The checked table of a service class (by its ``section``); empty when the config has none."""
        return self.sections.get(service.section, {})

    def service_enabled(self, service: Any) -> bool:
        return bool(value_of(self.service_options(service), "enabled"))


def read_toml(path: Path) -> dict[str, Any]:
    """The parsed file, or ConfigError saying what is wrong with it (never another exception)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise ConfigError(path, ["file not found; create one with `alertmail init` or pass --config"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a folder; --config names the TOML file"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror or exc}"]) from None
    return parse_toml(path, data)


def state_dir_unchecked(path: Path) -> Path:
    """``[agent].state_dir`` of the file at ``path``, checked alone (its one default when unset):
    what reaches a running agent's folder when the rest of the file has since been broken."""
    raw = read_toml(path)
    document = raw.get(AGENT.name)
    given = {"state_dir": document["state_dir"]} if isinstance(document, dict) and "state_dir" in document else {}
    check = Checker(path.resolve().parent)
    table = check.table(AGENT.name, given, {"state_dir": AGENT.options["state_dir"]})
    if check.problems:
        raise ConfigError(path, [f'{problem}; set it to a folder, e.g. "var"' for problem in check.problems])
    return Path(table["state_dir"])


def parse_toml(path: Path, data: bytes) -> dict[str, Any]:
    """``data`` parsed as TOML; ConfigError for what is not UTF-8 TOML."""
    for bom, name in (
        (b"\xff\xfe\x00\x00", "UTF-32"),
        (b"\x00\x00\xfe\xff", "UTF-32"),
        (b"\xff\xfe", "UTF-16"),
        (b"\xfe\xff", "UTF-16"),
    ):
        if data.startswith(bom):
            raise ConfigError(path, [f"the file is encoded as {name}; TOML is UTF-8: save it as UTF-8"])
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]  # a UTF-8 byte order mark, as some editors write: harmless
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start]
        raise ConfigError(
            path, [f"not UTF-8: byte 0x{byte:02X} at line {line}, column {column}; TOML is UTF-8: save the file as UTF-8"]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except RecursionError:
        raise ConfigError(path, ["not valid TOML: arrays or tables nested too deep"]) from None


def _plugin_tables(
    check: Checker,
    raw: Mapping[str, Any],
    section: str,
    registry: Mapping[str, Any],
    kind: str,
    options_of: Callable[[Any], Mapping[str, Option]],
) -> Iterator[tuple[str, Any, dict[str, Any]]]:
    """(name, plugin object, checked table) for each [SECTION.NAME] table naming an installed plugin."""
    tables = raw.get(section, {})
    if not isinstance(tables, dict):
        check.error(section, f"expected tables like [{section}.NAME]")
        return
    for name, table in tables.items():
        obj = registry.get(name)
        if obj is None:
            check.error(f"{section}.{name}", f"no such {kind}; {did_you_mean(name, registry, listing='installed')}")
            continue
        yield name, obj, check.table(f"{section}.{name}", table, options_of(obj))


def _section_tables(check: Checker, raw: Mapping[str, Any], section: Section) -> Any:
    """The checked table of ``section`` (a list of them for an array of tables).

    A nested section ("mail.dkim") is read from inside its parent's table, and the
    parent is checked without the tables nested sections own.
    """
    if not section.array:
        parent, _, child = section.name.rpartition(".")
        table = raw.get(parent, {}).get(child, {}) if parent and isinstance(raw.get(parent), dict) else raw.get(section.name, {})
        nested = {s.name.rpartition(".")[2] for s in SECTIONS if s.name.rpartition(".")[0] == section.name}
        if nested and isinstance(table, dict):
            table = {k: v for k, v in table.items() if k not in nested}
        return section.typed(check.table(section.name, table, section.options))
    value = raw.get(section.name, [])
    if not isinstance(value, list):
        check.error(section.name, f"expected an array of tables: [[{section.name}]]")
        value = []
    return [section.typed(check.table(f"{section.name}[{i}]", item, section.options)) for i, item in enumerate(value)]


def _check_listen_overlap(check: Checker, cfg: Config, services: Mapping[str, Any]) -> None:
    """Two listeners on one port (the exporter and an enabled service, or one address twice
    across them): the second bind fails at run, so it is refused here."""
    import ipaddress

    from alertmail.units import parse_address

    listens: list[tuple[str, str]] = []
    exporter = cfg.section(EXPORTER).listen
    if isinstance(exporter, str):
        listens.append(("exporter.listen", exporter))
    for name in services:
        options = cfg.sections.get(name)
        value = value_of(options, "listen")
        if value_of(options, "enabled") and isinstance(value, list):
            listens += [(f"{name}.listen[{i}]", item) for i, item in enumerate(value) if isinstance(item, str)]
    taken: list[tuple[str, str, int]] = []  # (key path, host, port)
    for keypath, value in listens:
        try:
            host, port = parse_address(value)
        except ValueError:
            continue  # reported with its key
        try:
            wildcard = ipaddress.ip_address(host).is_unspecified
        except ValueError:
            wildcard = host == ""
        for other, other_host, other_port in taken:
            try:
                other_wildcard = ipaddress.ip_address(other_host).is_unspecified
            except ValueError:
                other_wildcard = other_host == ""
            if port == other_port and (host == other_host or wildcard or other_wildcard):
                check.error(keypath, f"{value!r} takes the port of {other}; two listeners cannot share one: choose another port")
                break
        taken.append((keypath, host, port))


def _check_probes(check: Checker, raw: Mapping[str, Any], cfg: Config, plugins: Plugins) -> None:
    """``[probes.NAME]`` tables: the common keys plus the probe's own options, then its ``configure``."""
    for name, probe, table in _plugin_tables(
        check,
        raw,
        "probes",
        plugins.probes,
        "probe",
        lambda probe: {**PROBE_OPTIONS, **options_of(getattr(probe, "options", None))},
    ):
        cfg.probes[name] = table
        # Options a schema cannot express (e.g. the process probe's watch list) are the probe's to check.
        try:
            own = {k: v for k, v in table.items() if k not in COMMON_KEYS}
            problems = configure_probe(name, probe, typed(getattr(probe, "options", None), own))
        except Exception as exc:  # a bug in a plugin's configure(), not in the config
            problems = [f"probes.{name}: the probe failed to take its options: {type(exc).__name__}: {exc}"]
        for problem in problems:
            keypath, _, message = problem.partition(": ")
            check.error(keypath, message)


def _check_transports(check: Checker, raw: Mapping[str, Any], cfg: Config, plugins: Plugins) -> None:
    """``[transports.NAME]`` tables against their classes' options, and every name in ``[mail].route``."""

    def transport_options(cls: Any) -> Mapping[str, Option]:
        return options_of(cls.options)

    clean: list[str] = []
    for name, cls, table in _plugin_tables(check, raw, "transports", plugins.transports, "transport", transport_options):
        before = len(check.problems)
        cfg.transports[name] = typed(cls.options, table)
        if len(check.problems) == before:
            clean.append(name)
    for key, names in (("route", cfg.mail.route), ("also_route", cfg.mail.also_route)):
        for i, name in enumerate(names if isinstance(names, list) else []):
            if name not in plugins.transports:
                check.error(
                    f"mail.{key}[{i}]",
                    f"no transport named {name!r}; {did_you_mean(name, plugins.transports, listing='installed')}",
                )
            elif name not in cfg.transports:
                before = len(check.problems)
                cls = plugins.transports[name]
                cfg.transports[name] = typed(cls.options, check.table(f"transports.{name}", {}, transport_options(cls)))
                if len(check.problems) == before:
                    clean.append(name)
    routes = cfg.section(QUEUE).route_retry
    for name in routes if isinstance(routes, dict) else ():
        if name not in plugins.transports:
            check.error(
                f"queue.route_retry.{name}",
                f"no transport named {name!r}, so no route starts with it and this schedule is never used; "
                f"{did_you_mean(name, plugins.transports, listing='installed')}",
            )
    # Built once here as the agent builds them at start, so what a constructor refuses is a config problem.
    for name in clean:
        _build_transport(check, cfg, name, plugins.transports[name])


def _build_transport(check: Checker, cfg: Config, name: str, cls: Any) -> None:
    from alertmail.model import TransportContext

    state_dir = cfg.agent.state_dir
    context = TransportContext(state_dir=Path(state_dir or "."), hostname=cfg.agent.hostname or "localhost", config_path=cfg.path)
    try:
        options = cfg.transports[name]
        cls(dict(options) if isinstance(options, dict) else options, context)
    except ValueError as exc:
        keypath, _, message = str(exc).partition(": ")
        if not keypath.startswith(f"transports.{name}") or not message:
            keypath, message = f"transports.{name}", str(exc)
        check.error(keypath, message)
    except Exception as exc:  # a bug in a plugin's constructor, not in the config; run would stop on it too
        check.error(f"transports.{name}", f"the transport failed to take its options: {type(exc).__name__}: {exc}")


def _check_folders(check: Checker, cfg: Config) -> None:
    """What the agent would trip over on disk: state_dir, plugin folders, the templates folder and its templates."""
    from alertmail.delivery.outbox import STATE_FOLDERS

    state_dir = cfg.agent.state_dir
    if isinstance(state_dir, Path):
        for folder in (state_dir, *(state_dir / sub for sub in STATE_FOLDERS)):
            if folder.exists() and not folder.is_dir():
                check.error("agent.state_dir", f"{folder} is not a folder; the agent keeps its queue, pickup and logs there")
                break
        else:
            problem = _folder_problem(state_dir)
            if problem:
                check.error("agent.state_dir", f"{problem}; the agent keeps its queue, pickup and logs there")
    directory = value_of(cfg.transports.get("pickup"), "directory")
    if isinstance(directory, Path):
        problem = _folder_problem(directory)
        if problem:
            check.error("transports.pickup.directory", f"{problem}; the pickup transport writes each mail there")
    for i, entry in enumerate(cfg.agent.plugin_dirs if isinstance(cfg.agent.plugin_dirs, list) else []):
        path = Path(entry) if Path(entry).is_absolute() else cfg.path.parent / entry
        if not path.is_dir():
            check.error(f"agent.plugin_dirs[{i}]", f"no such folder: {path}")
    templates = cfg.mail.templates
    if isinstance(templates, Path):
        if not templates.is_dir():
            check.error("mail.templates", f"no such folder: {templates}")
        else:
            for problem in template_problems(templates):
                check.error("mail.templates", problem)


def _folder_problem(folder: Path) -> str | None:
    """Why the agent could not make ``folder`` (if need be) and write in it, or None.

    Tried for real in the folder, or in the nearest one above it that exists, with a
    throwaway folder removed at once: permissions, read-only and pseudo filesystems
    (/proc) all answer as they will answer ``run``.
    """
    import tempfile

    target = folder
    while not target.exists():
        if target.parent == target:
            break
        target = target.parent
    if not target.is_dir():
        return f"{target} is not a folder, so {folder} cannot be made"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".alertmail-check-", dir=target))
    except OSError as exc:
        what = "write in" if target == folder else f"make {folder} in"
        return f"cannot {what} {target}: {exc.strerror or exc}"
    return None


def template_problems(folder: Path) -> list[str]:
    """The templates in ``folder`` compiled as the agent compiles them and rendered against sample mails."""
    from alertmail.render.mail import template_problems as problems

    return problems(folder)


def included_files(check: Checker, raw: Mapping[str, Any]) -> list[Path]:
    """The files ``include`` names, in order; a pattern may match none, a plain path must exist."""
    value = raw.get(INCLUDE, [])
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        check.error(INCLUDE, f'expected a list of file patterns like ["conf.d/*.toml"], got {value!r}')
        return []
    files: list[Path] = []
    for i, pattern in enumerate(value):
        if open_bracket(pattern):
            check.error(
                f"{INCLUDE}[{i}]", f'the pattern {pattern!r} opens a "[" it never closes, so it matches nothing; close it'
            )
            continue
        where = Path(pattern).expanduser()
        where = where if where.is_absolute() else check.base / where
        matches = sorted(Path(m) for m in glob.glob(str(where)))
        if not matches and not glob.has_magic(pattern):
            check.error(f"{INCLUDE}[{i}]", f"no such file {where}; fix the path or remove it")
        files += [m for m in matches if m.is_file() and m not in files]
    return files


def _rule_names(table: Mapping[str, Any]) -> list[str | None]:
    """The name of each [[rules]] table, None where it has none (reported by the rules' own check)."""
    rules = table.get(RULES.name)
    rules = rules if isinstance(rules, list) else []
    return [r.get("name") if isinstance(r, dict) and isinstance(r.get("name"), str) else None for r in rules]


# The samples the agent itself emits about its probes (the exporter describes them too): rules on them need no probe.
AGENT_METRICS = ("agent.probe_failed", "agent.probe_overrun", "agent.probe_seconds", "agent.probe_missed")


def _declared_metrics(plugins: Plugins, also: Iterable[str] = ()) -> dict[str, list[str]]:
    """metric -> the loaded probes that declare it ("agent" for the agent's own samples, "samples" for ``also``)."""
    declared: dict[str, list[str]] = {name: ["samples"] for name in also}
    for name in AGENT_METRICS:
        declared.setdefault(name, []).append("agent")
    for name, probe in plugins.probes.items():
        for info in getattr(probe, "metrics", None) or ():
            declared.setdefault(info.name, []).append(name)
    return declared


def _declarers(metric: str, declared: Mapping[str, list[str]]) -> list[str] | None:
    """The probes declaring ``metric``: by its name, or by a family ``prefix.*`` (the scrape probe's
    ``scrape.*``, whose names come from the scraped targets); None when none does."""
    if metric in declared:
        return declared[metric]
    for name, probes in declared.items():
        if name.endswith(".*") and metric.startswith(name[:-1]) and len(metric) > len(name) - 1:
            return probes
    return None


def _check_rule_metrics(
    check: Checker, raw: Mapping[str, Any], cfg: Config, plugins: Plugins, declared: Mapping[str, list[str]], where: str = ""
) -> None:
    """A rule on a metric no loaded probe declares would never fire: refused, with the closest declared
    name. Where a loaded probe declares no metrics the metric may still come from it: a warning.
    ``undeclared = true`` in a rule says the metric comes from elsewhere (replayed samples, such a probe)."""
    undeclaring = sorted(name for name, probe in plugins.probes.items() if not getattr(probe, "metrics", None))
    rules = raw.get(RULES.name)
    for i, item in enumerate(rules if isinstance(rules, list) else []):
        metric = item.get("metric") if isinstance(item, dict) else None
        if not isinstance(metric, str) or not metric.strip():
            continue  # the rule's own check reports it
        label = f"{where or cfg.path}: rules[{i}]"
        name = item.get("name")
        rule = f" {name!r}" if isinstance(name, str) else ""
        by_probes = _declarers(metric, declared)
        if by_probes is not None:
            if "samples" in by_probes:
                continue
            probes = [p for p in by_probes if p != "agent"]
            off = [p for p in probes if (cfg.probes.get(p) or {}).get("enabled", True) is False]
            unset = [p for p in probes if p not in cfg.probes and getattr(plugins.probes.get(p), "configured_only", False)]
            if probes and off == probes:
                tables = ", ".join(f"[probes.{p}]" for p in off)
                cfg.warnings.append(
                    f"{label}.metric: {metric!r} of rule{rule} comes only from {', '.join(off)}, disabled by"
                    f" enabled = false in {tables}; the rule cannot fire until that probe runs"
                )
            elif probes and unset == probes:
                tables = ", ".join(f"[probes.{p}]" for p in unset)
                cfg.warnings.append(
                    f"{label}.metric: {metric!r} of rule{rule} comes only from {', '.join(unset)}, which runs only when"
                    f" configured; add {tables} with what it should run or read, or the rule cannot fire"
                )
                off = unset
            _check_window(check, cfg, plugins, item, i, label, rule, [p for p in probes if p not in off])
            if item.get("undeclared") is True:
                by = ", ".join(by_probes)
                cfg.warnings.append(f"{label}.undeclared: {metric!r} of rule{rule} is declared by {by}; remove `undeclared`")
            continue
        if item.get("undeclared") is True:
            continue
        import difflib  # only for a rule in error: the agent that runs never loads it

        close = difflib.get_close_matches(metric, sorted(declared), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "`alertmail probe --list` shows every declared metric"
        if undeclaring:
            cfg.warnings.append(
                f"{label}.metric: no loaded probe declares {metric!r} of rule{rule} ({hint}); it may come from"
                f" {', '.join(undeclaring)}, which declare no metrics: if it does, add undeclared = true to the rule"
            )
            continue
        check.error(
            f"rules[{i}].metric",
            f"no loaded probe declares {metric!r}, so the rule{rule} would never fire; {hint}"
            " (for a metric that replayed samples or a probe declaring no metrics provide, add undeclared = true)",
        )


def _check_window(
    check: Checker, cfg: Config, plugins: Plugins, item: Mapping[str, Any], i: int, label: str, rule: str, probes: list[str]
) -> None:
    """An ``over`` window no longer than the probe's interval never holds two samples: the rule never decides."""
    from alertmail.probes.runner import probe_settings
    from alertmail.units import format_duration, parse_duration

    if not probes or "over" not in item:
        return
    try:
        over = parse_duration(item["over"])
    except ValueError:
        return  # reported with the rule's keys
    if not over:
        return
    interval = max(probe_settings(cfg, name, plugins.probes[name]).interval for name in probes)
    fix = f"make over at least {format_duration(2 * interval)}, twice the probe interval of {format_duration(interval)}"
    if over <= interval:
        check.error(
            f"rules[{i}].over",
            f"{format_duration(over)} is not longer than the probe interval ({format_duration(interval)}, {', '.join(probes)}):"
            f" the window holds two samples only by chance, so the rule{rule} seldom or never decides; {fix}",
        )
    elif over < 2 * interval:
        cfg.warnings.append(
            f"{label}.over: {format_duration(over)} holds two samples of {', '.join(probes)} only when they come on time"
            f" (interval {format_duration(interval)}); a late one leaves the rule{rule} undecided; {fix}"
        )


def _load_included(
    check: Checker, raw: Mapping[str, Any], cfg: Config, plugins: Plugins, declared: Mapping[str, list[str]]
) -> list[tuple[Path, str]]:
    """Add the rules and silences of every included file to ``cfg``; their problems, each with its file."""
    sections = [s for s in SECTIONS if s.includable]
    allowed = ", ".join(f"[[{s.name}]]" for s in sections)
    origin = dict.fromkeys(_rule_names(raw), cfg.path)
    elsewhere: list[tuple[Path, str]] = []
    for file in included_files(check, raw):
        try:
            table = read_toml(file)
        except ConfigError as exc:
            elsewhere += [(file, p) for p in exc.problems]
            continue
        fcheck = Checker(file.resolve().parent)
        for key in table:
            if key not in {s.name for s in sections}:
                fcheck.error(key, f"an included file holds only {allowed}; move [{key}] to {cfg.path}")
        for section in sections:
            if section.name not in table:
                continue
            if section.build is not None:
                value = section.build(table[section.name], fcheck, cfg)
            else:
                value = _section_tables(fcheck, table, section)
                if section.check is not None:
                    section.check(value, fcheck, cfg)
            cfg.sections[section.name] = [*cfg.sections.get(section.name, []), *value]
        _check_rule_metrics(fcheck, table, cfg, plugins, declared, where=str(file))
        for i, name in enumerate(_rule_names(table)):
            if name is not None and origin.setdefault(name, file) != file:
                fcheck.error(f"rules[{i}].name", f"{name!r} is also a rule in {origin[name]}; give each rule its own name")
        elsewhere += [(file, p) for p in fcheck.problems]
    return elsewhere


def load_config(path: Path | str, plugins: Plugins | None = None, *, also_declared: Iterable[str] = ()) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem.

    ``plugins`` (a ``loader.Plugins``) supplies the option schemas of transports and
    services; when it is None they are loaded from the config's own plugin_dirs.
    ``also_declared`` names metrics that count as declared besides the probes' (a replay's samples).
    """
    path = Path(path)
    raw = read_toml(path)
    check = Checker(path.resolve().parent)
    values = {s.name: _section_tables(check, raw, s) for s in SECTIONS if s.build is None}
    cfg = Config(path=path, agent=values["agent"], mail=values["mail"], raw=raw, sections=values)
    if plugins is None:
        from alertmail.loader import load_plugins

        plugins = load_plugins(cfg.plugin_dirs, blocked=cfg.agent.disable_plugins or ())

    services = {s.section: s for s in plugins.services}
    known = {s.name for s in SECTIONS if "." not in s.name} | set(PLUGIN_SECTIONS) | set(services) | {INCLUDE}
    for key in raw:
        if key not in known:
            check.error(key, f"unknown section; {did_you_mean(key, known, fmt='[{}]', listing='known sections')}")
    _check_transports(check, raw, cfg, plugins)
    _check_probes(check, raw, cfg, plugins)
    for name, service in services.items():
        table = check.table(name, raw.get(name, {}), options_of(service.options))
        cfg.sections[name] = typed(service.options, table)
    for name, service in services.items():
        # What keys alone cannot say (networks, files, one key against another) is the service's
        # to check, as for a Section: check(options, checker, config), after every table is read.
        service_check = getattr(service, "check", None)
        if service_check is not None:
            try:
                service_check(cfg.sections[name], check, cfg)
            except Exception as exc:  # a bug in a plugin's check(), not in the config
                check.error(name, f"the service failed to check its options: {type(exc).__name__}: {exc}")
    _check_listen_overlap(check, cfg, services)
    for section in SECTIONS:
        if section.build is not None:
            cfg.sections[section.name] = section.build(raw.get(section.name), check, cfg)
        elif section.check is not None:
            completed = section.check(cfg.sections[section.name], check, cfg)
            if completed is not None:  # the section with what its check read (the exporter's web.yml)
                cfg.sections[section.name] = completed
    declared = _declared_metrics(plugins, also_declared)
    elsewhere = _load_included(check, raw, cfg, plugins, declared)
    _check_rule_metrics(check, raw, cfg, plugins, declared)
    cfg.rules = cfg.sections.pop(RULES.name)
    _check_folders(check, cfg)
    if check.problems or elsewhere:
        raise ConfigError(path, check.problems, elsewhere)
    return cfg
