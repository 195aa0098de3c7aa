"""The ``checks = [ { name = ..., ... } ]`` option the file and logfile probes share."""

from __future__ import annotations

import os
from typing import Any

from alertmail import did_you_mean


def parse_checks(
    value: Any, keys: tuple[str, ...], required: tuple[str, ...], example: str
) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
    """(index, entry) of each good entry of ``checks``, and a problem line for each bad entry and key.

    Entries are dicts of non-empty strings. ``name`` is required and unique: it is the
    ``check`` label of the samples. The caller adds its own problems and raises ValueError.
    """
    if not isinstance(value, list):
        return [], [f"checks: expected a list of tables like [{example}], got {value!r}"]
    problems: list[str] = []
    checks: list[tuple[int, dict[str, str]]] = []
    names: set[str] = set()
    for i, entry in enumerate(value):
        where = f"checks[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a table like {example}, got {entry!r}")
            continue
        before = len(problems)
        for key, item in entry.items():
            if key not in keys:
                problems.append(f"{where}.{key}: unknown key; {did_you_mean(key, keys, listing='known keys')}")
            elif not isinstance(item, str) or not item:
                problems.append(f"{where}.{key}: expected a non-empty string, got {item!r}")
        for key in required:
            if key not in entry:
                problems.append(f"{where}.{key}: missing; e.g. {example}")
        name = entry.get("name")
        if isinstance(name, str) and name in names:
            problems.append(f"{where}.name: {name!r} is already the name of another check; give each check its own name")
        if len(problems) == before:
            names.add(str(name))
            checks.append((i, dict(entry)))
    return checks, problems


def absolute_path(where: str, value: str) -> str:
    """``value`` with ``~`` expanded; ValueError unless it is an absolute path."""
    path = os.path.expanduser(value)
    if "\0" in path:
        raise ValueError(f"{where}: a path cannot hold a NUL character: {value!r}")
    if not os.path.isabs(path):
        raise ValueError(f"{where}: expected an absolute path (the agent's working folder is not yours), got {value!r}")
    return path
