"""The vocabulary of the config: options, sections, the checker and its errors.

Each component declares the sections it reads next to its code (a ``Section`` with its
``Option`` keys and a check for what keys alone cannot say); ``alertmail.config.load``
composes them. This module imports nothing of alertmail but ``units`` and ``errors``.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from alertmail.errors import AlertmailError
from alertmail.units import parse_address, parse_duration, parse_size

# Inline secrets are refused: they would end up in backups, diffs and logs.
SECRET_KEYS = {"password", "secret", "token", "api_key", "passphrase"}


@dataclass(frozen=True, slots=True)
class Option:
    """One key of a transport's or service's configuration table."""

    kind: str  # "str", "int", "float", "bool", "duration", "size", "list", "path", "address"
    default: Any = None
    required: bool = False
    help: str = ""
    choices: tuple[str, ...] = ()
    # Bounds of a number, a duration (seconds) or a size (bytes); a whole number without a
    # declared maximum is bounded by INT_MAX, what C code (socket backlogs, semaphores) takes.
    minimum: float | None = None
    maximum: float | None = None
    nonempty: bool = False  # a list that needs one item at least; a string that cannot be ""
    multiline: bool = False  # a str that may hold line breaks (text shown in a mail body, never a header)
    glob: bool = False  # list items or table values are fnmatch patterns: a "[" left open matches nothing
    addresses: bool = False  # list items are mail addresses, checked as such by the section's own check


INT_MAX = 2**31 - 1
SIZE_MAX = 2**40
# Names of labels, as Prometheus and Alertmanager take them.
_LABEL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def control_character(value: str, *, multiline: bool = False) -> str | None:
    """The first control character in ``value`` (CR, LF, NUL ...) as a readable escape, or None.

    A line break in a value that reaches a header or an SMTP command forges lines there;
    tabs are harmless. ``multiline`` lets LF (and CR LF) through, for text in a mail body.
    """
    for c in value:
        if c == "\t" or (multiline and c in "\r\n"):
            continue
        if ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029":
            return repr(c)
    return None


def open_bracket(pattern: str) -> bool:
    """True when a ``[`` in the glob ``pattern`` is never closed: fnmatch then matches it literally."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1 : i + 2] in ("!", "]") else i + 1)
            if end < 0:
                return True
            i = end
        i += 1
    return False


def _bounds(option: Option, value: float, show: Callable[[float], str]) -> None:
    low = option.minimum
    high = option.maximum if option.maximum is not None else (INT_MAX if option.kind == "int" else None)
    if (low is not None and value < low) or (high is not None and value > high):
        if low is not None and high is not None:
            raise ValueError(f"must lie between {show(low)} and {show(high)}, got {show(value)}")
        if low is not None:
            raise ValueError(f"must be at least {show(low)}, got {show(value)}")
        raise ValueError(f"must be at most {show(high or 0)}, got {show(value)}")


def _show_duration(seconds: float) -> str:
    from alertmail.units import format_duration

    if 0 < seconds < 1:
        return f"{seconds * 1000:g}ms"
    return format_duration(seconds) if seconds == int(seconds) else f"{seconds:g}s"


def did_you_mean(name: str, known: Iterable[str], *, fmt: str = "{!r}", listing: str = "known") -> str:
    """The fix for an unknown name: the closest known one, or the list of them."""
    import difflib  # only on a mistake: the agent that runs never loads it

    known = sorted(known)
    hint = difflib.get_close_matches(name, known, n=1)
    if hint:
        return f"did you mean {fmt.format(hint[0])}?"
    return f"{listing}: {', '.join(known)}"


def _convert(option: Option, value: Any, base: Path) -> Any:  # noqa: C901  one flat branch per option kind, each a few lines
    """The checked value for an Option, or ValueError with a message saying what was expected."""
    kind = option.kind
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {value!r}")
        _check_text(option, value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        _bounds(option, value, str)
    elif kind in ("float", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}: a rule on nan or inf never decides")
        _bounds(option, value, lambda v: f"{v:g}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
    elif kind == "duration":
        value = parse_duration(value)
        _bounds(option, value, _show_duration)
    elif kind == "size":
        value = parse_size(value)
        _bounds(option, value, lambda v: f"{v:.0f} bytes")
        if option.maximum is None and value > SIZE_MAX:
            raise ValueError(f"{value} bytes is more than the largest size allowed, 1TiB; make it smaller")
    elif kind == "path":
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path, got {value!r}")
        if "\0" in value:
            raise ValueError(f"a path cannot hold a NUL character: {value!r}")
        bad = control_character(value)
        if bad:
            raise ValueError(f"a path cannot hold the control character {bad}: {value!r}")
        path = Path(value).expanduser()
        value = path if path.is_absolute() else base / path
    elif kind == "address":
        parse_address(value)
    elif kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"expected a list of strings, got {value!r}")
        if option.nonempty and not value:
            example = f", e.g. {option.default!r}".replace("'", '"') if option.default else ""
            raise ValueError(f"empty, so nothing would ever be done with it; list one item at least{example}")
        seen: set[str] = set()
        problems: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            try:
                if not option.addresses:  # an address's own check names what is wrong with it
                    if not item.strip():
                        raise ValueError("empty; remove it or fill it in")
                    _check_text(option, item)
                if item in seen:
                    raise ValueError(f"{item!r} is listed twice; list it once")
            except ValueError as exc:
                problems.append((f"[{i}]", str(exc)))
            seen.add(item)
        if problems:
            raise ItemError(problems, value)
    elif kind == "durations":
        if not isinstance(value, list) or not value:
            raise ValueError(f'expected a non-empty list of durations like ["15m", "1h"], got {value!r}')
        value = [parse_duration(v) for v in value]
        for v in value:
            _bounds(option, v, _show_duration)
    elif kind == "table":
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float) for v in value.values()):
            raise ValueError(f'expected a table of strings like {{ mount = "/" }}, got {value!r}')
        value = {str(k): str(v) for k, v in value.items()}
        problems = []
        for key, item in value.items():
            try:
                if not _LABEL_NAME.fullmatch(key):
                    raise ValueError(f"{key!r} is not a label name: use letters, digits and _ (not first), e.g. mount")
                _check_text(option, item)
            except ValueError as exc:
                problems.append((f".{key}", str(exc)))
        if problems:
            raise ItemError(problems, value)
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


class ItemError(ValueError):
    """Problems with items of a list or table, each with what extends the key path ("[2]", ".mount").

    ``value`` is the list or table as written, kept so the checks after the schema's
    (addresses, routes) still look at the other items.
    """

    def __init__(self, problems: list[tuple[str, str]], value: Any) -> None:
        super().__init__("; ".join(message for _, message in problems))
        self.problems = problems
        self.value = value


def _check_text(option: Option, value: str) -> None:
    """A string that reaches a header, an SMTP command, a log line or a label: no line breaks or NUL."""
    bad = control_character(value, multiline=option.multiline)
    if bad:
        raise ValueError(
            f"line breaks and control characters are not allowed here ({bad} in {value!r}): in a subject, a header "
            "or an SMTP command they forge lines; remove it"
        )
    if option.nonempty and not value.strip():
        raise ValueError("empty; give it a value, or remove the key for the default")
    if option.glob and open_bracket(value):
        raise ValueError(
            f'the pattern {value!r} opens a "[" it never closes, so it matches nothing; close it or write [[] for a "["'
        )


_HOST_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(r"(?=.{1,253}$)" + _HOST_LABEL + r"(?:\." + _HOST_LABEL + r")*\.?|\[(?:IPv6:)?[0-9A-Fa-f:.]+\]")


def valid_hostname(name: str) -> bool:
    """A name fit for EHLO, a banner or a Message-ID: dotted labels (RFC 1123) or an address literal."""
    return bool(_HOSTNAME.fullmatch(name))


def listen_problem(value: str) -> str | None:
    """Why the agent could not listen on ``value`` ("host:port"), or None.

    Each address the host resolves to is bound as the agent binds it (IPv6 only on IPv6
    sockets), on port 0: a port the running agent holds is no problem here.
    """
    import ipaddress
    import socket

    host, port = parse_address(value)  # ValueError for what is not "host:port"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"{host} is an IPv4 address written as IPv6, which an IPv6 socket cannot bind; write {ip.ipv4_mapped}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        return f"cannot resolve {host!r} ({getattr(exc, 'strerror', None) or exc}); name an address of this host"
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                return f"cannot listen on {address[0]}: {exc.strerror or exc}; name an address of this host"
    if port < _unprivileged_port_start():
        # The port itself, bound as run binds it: refused without the right to it. In use (by
        # the running agent, say) is no problem here.
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((address[0], port, *address[2:]))
            except PermissionError:
                return (
                    f"port {port} is privileged and this process may not bind it: run as root or with "
                    "CAP_NET_BIND_SERVICE (systemd: AmbientCapabilities=CAP_NET_BIND_SERVICE), or listen on a port from 1024"
                )
            except OSError:
                pass
    return None


def _unprivileged_port_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as fh:
            return int(fh.read())
    except (OSError, ValueError):
        return 1024


@dataclass
class ConfigError(AlertmailError):
    """Every mistake found in one config file and the files it includes."""

    path: Path
    problems: list[str]
    elsewhere: list[tuple[Path, str]] = field(default_factory=list)  # (included file, problem)

    @property
    def count(self) -> int:
        return len(self.problems) + len(self.elsewhere)

    def lines(self) -> list[str]:
        """Each problem with the file it is in."""
        return [f"{self.path}: {p}" for p in self.problems] + [f"{path}: {p}" for path, p in self.elsewhere]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class Checker:
    """Collects problems while a config is validated, each with its key path."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.problems: list[str] = []
        self.refused: set[str] = set()  # key paths of list and table items the schema refused

    def error(self, keypath: str, message: str) -> None:
        if keypath in self.refused:
            return  # the schema refused this item already: one problem per item
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
                self.error(
                    where,
                    f"secrets are never written inline; use {key}_env (an environment variable) or {key}_file (a file) instead",
                )
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
            except ItemError as exc:
                for suffix, message in exc.problems:
                    self.error(where + suffix, message)
                    self.refused.add(where + suffix)
                out[key] = exc.value
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


# -- typed settings ---------------------------------------------------------
# A component declares its section as a frozen dataclass whose fields are its keys:
#
#     @dataclass(frozen=True, slots=True, kw_only=True)
#     class NotifySettings(Settings):
#         group_wait: float = setting("duration", 30.0, help="...")
#
# ``setting`` puts the key's Option (kind, bounds, help) in the field's metadata and its
# default in the field, so each key has one default, in one place. The checker reads the
# options from the fields; a checked table becomes the settings object with ``from_table``;
# a component takes that object and reads attributes, never string keys.

_OPTION = "alertmail.option"
_KEY = "alertmail.key"


def setting(kind: str, default: Any = None, *, key: str | None = None, **option: Any) -> Any:
    """A field of a ``Settings`` class: the key's ``Option`` and its one default.

    ``key`` is the name in the file when it cannot be the field's (``from`` is a Python word).
    """
    meta = {_OPTION: Option(kind, default, **option), _KEY: key}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


SettingsT = TypeVar("SettingsT", bound="Settings")


@functools.cache
def _keys(cls: Any) -> dict[str, str]:
    return {(f.metadata.get(_KEY) or f.name): f.name for f in fields(cls) if _OPTION in f.metadata}


class Settings:
    """The base of a section's (or a plugin's) frozen settings dataclass."""

    __slots__ = ()

    @classmethod
    def keys_to_fields(cls) -> dict[str, str]:
        """File key -> field name, in declaration order."""
        return _keys(cast(Any, cls))

    @classmethod
    def options(cls) -> dict[str, Option]:
        """The options the checker checks a table against, by file key."""
        return {(f.metadata.get(_KEY) or f.name): f.metadata[_OPTION] for f in fields(cls) if _OPTION in f.metadata}  # type: ignore[arg-type]

    @classmethod
    def from_table(cls: type[SettingsT], table: Mapping[str, Any]) -> SettingsT:
        """The settings of a checked table; a key the table lacks keeps its declared default."""
        return cls(**{name: table[key] for key, name in cls.keys_to_fields().items() if key in table})

    def as_table(self) -> dict[str, Any]:
        """The settings by file key, as the checked table had them (for JSON and comparisons)."""
        return {key: getattr(self, name) for key, name in self.keys_to_fields().items()}


def options_of(declared: Any) -> Mapping[str, Option]:
    """A plugin's or section's options, declared as a ``Settings`` class or (older plugins) a dict."""
    if isinstance(declared, type) and issubclass(declared, Settings):
        return declared.options()
    return declared or {}


def typed(declared: Any, table: Mapping[str, Any]) -> Any:
    """A checked ``table`` as the ``Settings`` class ``declared`` makes it; a plugin that declares
    its options as a dict (the older form) gets a dict of its own."""
    if isinstance(declared, type) and issubclass(declared, Settings):
        return declared.from_table(table)
    return dict(table)


def value_of(options: object, key: str) -> Any:
    """One key of a plugin's checked options, declared either way: an attribute of its
    settings object, or (a plugin that declares a dict) a key of its table; None when absent."""
    if isinstance(options, Mapping):
        return options.get(key)
    return getattr(options, key, None)


@dataclass(frozen=True)
class Section(Generic[SettingsT]):
    """A top-level table of the config file (``array``: an array of tables), owned by one component.

    ``settings`` is the component's ``Settings`` class: its fields are the keys, the
    checked table becomes one object of it (a list of them for an array section).
    ``check(value, checker, config)`` then checks what keys alone cannot say (one key
    against another, against ``[agent]``); it may return the settings completed with what
    it read (the exporter's web.yml), else None. ``build(raw, checker, config)``, when given,
    replaces both and returns the section's value (rules build ``Rule`` objects).
    """

    name: str
    settings: type[SettingsT] | Mapping[str, Option]
    array: bool = False
    check: Callable[[Any, Checker, Any], Any] | None = None
    build: Callable[[Any, Checker, Any], Any] | None = None
    includable: bool = False  # may also come from the files ``include`` names (an array section)

    @property
    def options(self) -> Mapping[str, Option]:
        return options_of(self.settings)

    def typed(self, table: Mapping[str, Any]) -> Any:
        """The checked ``table`` as this section's settings object."""
        return typed(self.settings, table)
