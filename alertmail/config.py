"""Reading and validating the TOML configuration.

The whole file is checked before anything starts, and every mistake is reported at
once, each naming the file, the key path and the fix::

    config.toml: rules[2].above: expected a number, got "ninety"
"""

from __future__ import annotations

import difflib
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alertmail.model import Option

DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
SIZE_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*$", re.IGNORECASE)
# Inline secrets are refused: they would end up in backups, diffs and logs.
SECRET_KEYS = {"password", "secret", "token", "api_key", "passphrase"}


def parse_duration(value: Any) -> float:
    """Seconds from 30, "30s", "5m", "2h", "1d", "1h30m"; "0" is zero."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like \"30s\", \"5m\", \"2h\", \"1d\"")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like \"30s\", \"5m\", \"2h\", \"1d\", got {value!r}")
    text = value.strip().lower()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"expected a duration like \"30s\", \"5m\", \"2h\", \"1d\", got {value!r}")
    return total


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for messages: 90 -> "1m30s".

    A negative span (a clock that stepped back, a stamp from the future) reads "0s".
    """
    seconds = max(0, int(round(seconds)))
    if seconds == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts)


def parse_size(value: Any) -> int:
    """Bytes from 10485760, "10MB", "512KiB"."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()])
    raise ValueError(f"expected a size like \"10MB\" or a number of bytes, got {value!r}")


def parse_address(value: Any, default_port: int | None = None) -> tuple[str, int]:
    """("host", port) from "host:port", "[10.0.0.1]:25", "[::1]:2525" or "host"."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected \"host:port\", got {value!r}")
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unbalanced bracket in {value!r}")
        host, rest = text[1:end], text[end + 1 :]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
        rest = ":" + port
    else:
        host, rest = text, ""
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit():
            raise ValueError(f"expected \"host:port\", got {value!r}")
        port = int(rest[1:])
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError(f"expected \"host:port\" with a port, got {value!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range 1-65535")
    return host, port


def did_you_mean(name: str, known: Iterable[str], *, fmt: str = "{!r}", listing: str = "known") -> str:
    """The fix for an unknown name: the closest known one, or the list of them."""
    known = sorted(known)
    hint = difflib.get_close_matches(name, known, n=1)
    if hint:
        return f"did you mean {fmt.format(hint[0])}?"
    return f"{listing}: {', '.join(known)}"


def _convert(option: Option, value: Any, base: Path) -> Any:
    """The checked value for an Option, or ValueError with a message saying what was expected."""
    kind = option.kind
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
    elif kind in ("float", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        value = float(value)
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif kind == "duration":
        value = parse_duration(value)
    elif kind == "size":
        value = parse_size(value)
    elif kind == "path":
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path, got {value!r}")
        path = Path(value).expanduser()
        value = path if path.is_absolute() else base / path
    elif kind == "address":
        parse_address(value)
    elif kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
    elif kind == "durations":
        if not isinstance(value, list) or not value:
            raise ValueError(f"expected a non-empty list of durations like [\"15m\", \"1h\"], got {value!r}")
        value = [parse_duration(v) for v in value]
    elif kind == "table":
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float) for v in value.values()):
            raise ValueError(f"expected a table of strings like {{ mount = \"/\" }}, got {value!r}")
        value = {str(k): str(v) for k, v in value.items()}
    elif kind == "any":
        pass
    else:
        raise AssertionError(f"unknown option kind {kind!r}")
    if option.choices:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item not in option.choices:
                raise ValueError(f"expected one of {', '.join(map(repr, option.choices))}, got {item!r}")
    return value


@dataclass
class ConfigError(Exception):
    """Every mistake found in one config file."""

    path: Path
    problems: list[str]

    def __str__(self) -> str:
        return "\n".join(f"{self.path}: {p}" for p in self.problems)


class Checker:
    """Collects problems while a config is validated, each with its key path."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []

    def error(self, keypath: str, message: str) -> None:
        self.problems.append(f"{keypath}: {message}" if keypath else message)

    def table(self, keypath: str, raw: Any, options: Mapping[str, Option], *, extra_ok: bool = False) -> dict[str, Any]:
        """Check one table against its options; return the converted values with defaults."""
        out: dict[str, Any] = {}
        if not isinstance(raw, dict):
            self.error(keypath, f"expected a table, got {raw!r}")
            raw = {}
        for key, value in raw.items():
            where = f"{keypath}.{key}" if keypath else key
            if key in SECRET_KEYS or key.endswith(("_password", "_secret", "_token")):
                self.error(where, f"secrets are never written inline; use {key}_env (an environment variable) or {key}_file (a file) instead")
                continue
            option = options.get(key)
            if option is None:
                if extra_ok:
                    out[key] = value
                    continue
                self.error(where, f"unknown key; {did_you_mean(key, options, listing='known keys')}")
                continue
            try:
                out[key] = _convert(option, value, self.base)
            except ValueError as exc:
                self.error(where, str(exc))
        for key, option in options.items():
            if key in out or key in raw:
                continue
            if option.required:
                self.error(f"{keypath}.{key}" if keypath else key, f"missing; {option.help or 'this key is required'}")
            else:
                default = option.default
                if default is not None and option.kind == "path":
                    default = _convert(option, default, self.base)
                elif isinstance(default, list | dict):
                    default = type(default)(default)
                out[key] = default
        return out


def resolve_secret(options: Mapping[str, Any], key: str) -> str | None:
    """The secret named by ``KEY_env`` or ``KEY_file`` in ``options``; None when neither is set."""
    env = options.get(f"{key}_env")
    if env:
        value = os.environ.get(env)
        if value is None:
            raise LookupError(f"{key}_env: environment variable {env} is not set")
        return value
    path = options.get(f"{key}_file")
    if path:
        return Path(path).read_text().strip()
    return None


# ---------------------------------------------------------------------------
# The core sections. Sections of plugins (transports, services) are checked
# against the options their classes declare.

AGENT_OPTIONS: dict[str, Option] = {
    "state_dir": Option("path", "var", help="folder for pickup/, queue/, badmail/, logs/"),
    "interval": Option("duration", 10.0, help="default probe interval"),
    "resolution": Option("duration", 5.0, help="how often time-driven checks run: reminders, group and digest "
                         "flushes, absent series, silence changes"),
    "plugin_dirs": Option("list", [], help="folders of single-file plugins"),
    "timezone": Option("str", "UTC", help="IANA timezone for times in mails"),
    "hostname": Option("str", None, help="host name shown in mails; default: this machine's"),
    "probe_timeout": Option("duration", None, help="longest a probe may run; default: its interval"),
    "disable_plugins": Option("list", [], help="plugin names not to load"),
    "log_level": Option("str", "info", choices=("debug", "info", "warning", "error")),
}

MAIL_OPTIONS: dict[str, Option] = {
    "from": Option("str", "alertmail@localhost", help="From address of alert mails"),
    "to": Option("list", [], help="default recipients"),
    "route": Option("list", ["pickup"], help="ordered chain of transports"),
    "subject_prefix": Option("str", "", help="text put before every subject"),
    "templates": Option("path", None, help="folder of templates overriding alert.txt.j2 / alert.html.j2"),
    "charts": Option("str", "subprocess", choices=("subprocess", "in-process", "off"),
                     help="where charts are drawn; subprocess keeps matplotlib out of the agent's memory"),
}

PROBE_OPTIONS: dict[str, Option] = {
    "enabled": Option("bool", True, help="run this probe"),
    "interval": Option("duration", None, help="how often to run it; default: the probe's own, else [agent].interval"),
    "timeout": Option("duration", None, help="longest one run may take; default: its interval"),
}

NOTIFY_OPTIONS: dict[str, Option] = {
    "group_wait": Option("duration", 30.0, help="alerts firing within this time for the same recipients go out as one mail"),
    "max_mails_per_hour": Option("int", 10, help="storm cap: most mails one recipient gets in any hour, digests included; 0 = no cap"),
    "digest_interval": Option("duration", 900.0, help="storm mode: events beyond the cap are folded into one digest mail this often"),
}

CORE_SECTIONS: dict[str, dict[str, Option]] = {"agent": AGENT_OPTIONS, "mail": MAIL_OPTIONS, "notify": NOTIFY_OPTIONS}
# Sections owned by other core modules register here: name -> (options, is_array).
EXTRA_SECTIONS: dict[str, tuple[dict[str, Option], bool]] = {}


def register_section(name: str, options: dict[str, Option], *, array: bool = False) -> None:
    EXTRA_SECTIONS[name] = (options, array)


@dataclass
class Config:
    """A validated configuration."""

    path: Path
    agent: dict[str, Any]
    mail: dict[str, Any]
    rules: list[Any] = field(default_factory=list)
    transports: dict[str, dict[str, Any]] = field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def state_dir(self) -> Path:
        return self.agent["state_dir"]

    @property
    def hostname(self) -> str:
        return self.agent.get("hostname") or socket.gethostname()

    @property
    def plugin_dirs(self) -> list[Path]:
        return [p if p.is_absolute() else self.path.parent / p for p in map(Path, self.agent["plugin_dirs"])]


_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\\\"]+@[A-Za-z0-9.-]+$|^[^@\s<>]+@\[[0-9A-Fa-f:.]+\]$")


def valid_address(address: str) -> bool:
    """A bare addr-spec (user@domain) with nothing that could break a header or an SMTP command."""
    return isinstance(address, str) and len(address) <= 254 and bool(_ADDRESS.fullmatch(address))


def _plugin_tables(check: Checker, raw: Mapping[str, Any], section: str, registry: Mapping[str, Any], kind: str,
                   options_of: Callable[[Any], Mapping[str, Option]]) -> Iterator[tuple[str, Any, dict[str, Any]]]:
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


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(path, ["file not found; create one with `alertmail init` or pass --config"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from None


def load_config(path: Path | str, plugins: Any = None) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem.

    ``plugins`` (a ``loader.Plugins``) supplies the option schemas of transports and
    services; when it is None they are loaded from the config's own plugin_dirs.
    """
    from alertmail import rules as rules_mod  # registers nothing; holds the rule schema
    from alertmail import heartbeat as heartbeat_mod, silences as silences_mod  # register [heartbeat], [[silences]]
    from alertmail import storm as storm_mod
    from alertmail import delivery as _delivery  # noqa: F401  registers [queue]

    path = Path(path)
    raw = read_toml(path)
    check = Checker(path.resolve().parent)
    agent = check.table("agent", raw.get("agent", {}), AGENT_OPTIONS)
    mail = check.table("mail", raw.get("mail", {}), MAIL_OPTIONS)
    notify = check.table("notify", raw.get("notify", {}), NOTIFY_OPTIONS)
    for i, address in enumerate([mail["from"], *mail["to"]]):
        if not valid_address(address):
            where = "mail.from" if i == 0 else f"mail.to[{i - 1}]"
            check.error(where, f"not a valid mail address: {address!r}; write it as user@example.com")
    if agent.get("resolution") is not None and not 0.1 <= agent["resolution"] <= 60:
        check.error("agent.resolution", "must lie between 100ms and 60s, e.g. \"5s\"")
    tz = agent.get("timezone")
    if tz:
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(tz)
        except Exception:
            check.error("agent.timezone", f"unknown IANA timezone {tz!r}; use a name like \"Europe/Berlin\" or \"UTC\"")

    cfg = Config(path=path, agent=agent, mail=mail, raw=raw, sections={"notify": notify})
    if plugins is None:
        from alertmail.loader import load_plugins

        plugins = load_plugins(cfg.plugin_dirs, blocked=agent.get("disable_plugins") or ())

    known = set(CORE_SECTIONS) | set(EXTRA_SECTIONS) | {"rules", "transports", "probes"}
    service_sections = {getattr(s, "section", None): s for s in plugins.services if getattr(s, "section", None)}
    known |= set(service_sections)
    for key in raw:
        if key not in known:
            check.error(key, f"unknown section; {did_you_mean(key, known, fmt='[{}]', listing='known sections')}")

    # Transports: each [transports.NAME] table is checked against its class's options.
    for name, _, table in _plugin_tables(check, raw, "transports", plugins.transports, "transport",
                                         lambda cls: getattr(cls, "options", {})):
        cfg.transports[name] = table
    for i, name in enumerate(mail["route"]):
        if name not in plugins.transports:
            check.error(f"mail.route[{i}]", f"no transport named {name!r}; {did_you_mean(name, plugins.transports, listing='installed')}")
        elif name not in cfg.transports:
            cfg.transports[name] = check.table(f"transports.{name}", {}, getattr(plugins.transports[name], "options", {}))

    # Probes: [probes.NAME] tables; common keys plus the probe's own ``options``.
    for name, probe, table in _plugin_tables(check, raw, "probes", plugins.probes, "probe",
                                             lambda probe: {**PROBE_OPTIONS, **(getattr(probe, "options", None) or {})}):
        cfg.probes[name] = table
        # Options a schema cannot express (e.g. the process probe's watch list) are the probe's to check.
        from alertmail.probing import COMMON_KEYS, configure_probe

        try:
            problems = configure_probe(name, probe, {k: v for k, v in cfg.probes[name].items() if k not in COMMON_KEYS})
        except Exception as exc:  # a bug in a plugin's configure(), not in the config
            problems = [f"probes.{name}: the probe failed to take its options: {type(exc).__name__}: {exc}"]
        for problem in problems:
            keypath, _, message = problem.partition(": ")
            check.error(keypath, message)

    for name, (options, array) in EXTRA_SECTIONS.items():
        value = raw.get(name, [] if array else {})
        if array:
            if not isinstance(value, list):
                check.error(name, f"expected an array of tables: [[{name}]]")
                value = []
            cfg.sections[name] = [check.table(f"{name}[{i}]", item, options) for i, item in enumerate(value)]
        else:
            cfg.sections[name] = check.table(name, value, options)
    for name, service in service_sections.items():
        cfg.sections[name] = check.table(name, raw.get(name, {}), getattr(service, "options", {}))

    silences_mod.check_config(cfg.sections.get("silences", []), check, default_tz=agent.get("timezone") or "UTC")
    heartbeat_mod.check_config(cfg.sections.get("heartbeat", {}), check)
    storm_mod.check_config(notify, check)
    cfg.rules = rules_mod.rules_from_config(raw.get("rules", []), check, default_to=mail["to"])
    if check.problems:
        raise ConfigError(path, check.problems)
    return cfg

