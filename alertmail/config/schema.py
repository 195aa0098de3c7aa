"""The vocabulary of the config: options, sections, the checker and its errors.

Each component declares the sections it reads next to its code (a ``Section`` with its
``Option`` keys and a check for what keys alone cannot say); ``alertmail.config.load``
composes them. This module imports nothing of alertmail but ``units`` and ``errors``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def did_you_mean(name: str, known: Iterable[str], *, fmt: str = "{!r}", listing: str = "known") -> str:
    """The fix for an unknown name: the closest known one, or the list of them."""
    import difflib  # only on a mistake: the agent that runs never loads it

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
        if "\0" in value:
            raise ValueError(f"a path cannot hold a NUL character: {value!r}")
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
            raise ValueError(f'expected a non-empty list of durations like ["15m", "1h"], got {value!r}')
        value = [parse_duration(v) for v in value]
    elif kind == "table":
        if not isinstance(value, dict) or not all(isinstance(v, str | int | float) for v in value.values()):
            raise ValueError(f'expected a table of strings like {{ mount = "/" }}, got {value!r}')
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


@dataclass(frozen=True)
class Section:
    """A top-level table of the config file (``array``: an array of tables), owned by one component.

    ``options`` checks each key; ``check(value, checker, config)`` then checks what keys
    alone cannot say (one key against another, against ``[agent]``). ``build(raw, checker,
    config)``, when given, replaces both and returns the section's value (rules build
    ``Rule`` objects).
    """

    name: str
    options: Mapping[str, Option]
    array: bool = False
    check: Callable[[Any, Checker, Any], None] | None = None
    build: Callable[[Any, Checker, Any], Any] | None = None
    includable: bool = False  # may also come from the files ``include`` names (an array section)
