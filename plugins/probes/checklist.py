"""The ``checks = [ { name = ..., ... } ]`` option that the file, logfile, nagios and service probes share.

Each probe declares the keys of one entry (a ``Key`` each: how its value is checked, its
default, an example for the "missing" message); ``parse_checks`` checks the whole list
against them and says what is wrong with every entry and key at once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from alertmail import did_you_mean


@dataclass(frozen=True)
class Key:
    """One key of a check entry."""

    convert: Callable[[Any], Any]  # the checked value, or ValueError saying what was expected
    default: Any = None
    required: bool = False
    example: str = ""  # what the "missing; ..." message shows


class ItemProblem(ValueError):
    """A problem inside a key's value; ``where`` follows the key in the key path (``[0]``)."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(message)
        self.where = where


def parse_checks(
    value: Any,
    keys: Mapping[str, Key],
    example: str,
    more: Callable[[dict[str, Any]], list[str]] | None = None,
    *,
    option: str = "checks",
    noun: str = "check",
) -> tuple[list[tuple[int, dict[str, Any]]], list[str]]:
    """(checks, problems): (index, entry) of each good entry of the list, the entry as a dict
    of checked values (defaults filled in), and a ``checks[i].key: ...`` line for each bad
    entry and key.

    ``name``, when a key, is unique: it is the label of the samples. ``more(check)`` checks
    what no single key shows, for an entry whose keys are good, and returns lines that start
    with the key path inside the entry: ``url: problem``, or ``: problem`` for the entry as
    a whole. The caller adds its own problems and raises ValueError.
    """
    if not isinstance(value, list):
        return [], [f"{option}: expected a list of tables like [{example}], got {value!r}"]
    problems: list[str] = []
    checks: list[tuple[int, dict[str, Any]]] = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        where = f"{option}[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a table like {example}, got {entry!r}")
            continue
        before = len(problems)
        check: dict[str, Any] = {}
        for key, item in entry.items():
            spec = keys.get(key)
            if spec is None:
                problems.append(f"{where}.{key}: unknown key; {did_you_mean(key, keys, listing='known keys')}")
                continue
            try:
                check[key] = spec.convert(item)
            except ValueError as exc:
                problems.append(f"{where}.{key}{getattr(exc, 'where', '')}: {exc}")
        for key, spec in keys.items():
            if key in entry:
                continue
            if spec.required:
                problems.append(f"{where}.{key}: missing; {spec.example}")
            else:
                check[key] = spec.default
        name = check.get("name")
        if isinstance(name, str):
            if name in names:
                problems.append(f"{where}.name: {name!r} is used twice; each {noun} needs its own name")
            names.add(name)
        if len(problems) == before and more is not None:
            problems += [f"{where}{'' if line.startswith((':', '[')) else '.'}{line}" for line in more(check)]
        if len(problems) == before:
            checks.append((i, check))
    return checks, problems


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def absolute_path(value: Any) -> str:
    """A non-empty string, ``~`` expanded, that is an absolute path."""
    path = os.path.expanduser(text(value))
    if "\0" in path:
        raise ValueError(f"a path cannot hold a NUL character: {value!r}")
    if not os.path.isabs(path):
        raise ValueError(f"expected an absolute path (the agent's working folder is not yours), got {value!r}")
    return path
