"""The ``file`` probe: does a file exist, how old and how big is it, how many match a glob.

::

    [probes.file]
    checks = [
      { name = "db-backup", path = "/var/backups/db-*.sql.gz" },
      { name = "certbot", path = "/etc/letsencrypt/live/example.org/fullchain.pem" },
    ]

Every check reports ``file.exists`` and ``file.count`` on every run, 0 included, so "the
backup is missing" is an ordinary rule (``below = 1``); ``file.age_seconds`` and
``file.size_bytes`` are of the newest match (by modification time) and come only when
something matches. When nothing matches, the check's detail in the mail says why: no
such folder, a folder the agent may not read, or simply no match.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from alertmail import Sample, Settings, setting
from alertmail.plugins.probes.checklist import Key, absolute_path, parse_checks, text

EXAMPLE = '{ name = "db-backup", path = "/var/backups/db-*.sql.gz" }'
CHECK_KEYS = {
    "name": Key(text, required=True, example=f"e.g. {EXAMPLE}"),
    "path": Key(absolute_path, required=True, example=f"e.g. {EXAMPLE}"),  # may be a glob
}
_MAGIC = re.compile(r"[*?\[]")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileSettings(Settings):
    """``[probes.file]``."""

    checks: list[Any] = setting("any", [], help=f"list of {{ name, path }} tables, e.g. [{EXAMPLE}]")


@dataclass(frozen=True, slots=True)
class FileCheck:
    name: str
    path: str  # absolute; may be a glob (``**`` spans folders)


def static_folder(pattern: str) -> str:
    """The deepest folder of ``pattern`` without glob characters: what must exist and be readable."""
    parts = pattern.split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if _MAGIC.search(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


def why_nothing(pattern: str) -> str:
    """Why ``pattern`` matches nothing, in words for the mail."""
    folder = static_folder(pattern)
    try:
        if not os.path.isdir(folder):
            os.stat(folder)  # raises for a missing folder; a file in the way falls through
            return f"{folder} is not a folder"
        if _MAGIC.search(pattern):
            with os.scandir(folder):
                pass
        else:
            os.stat(pattern)
    except FileNotFoundError:
        if not os.path.exists(folder):
            return f"no such folder: {folder}"
        return f"no such file: {pattern}"
    except OSError as exc:
        return f"cannot read {exc.filename or folder}: {exc.strerror}"
    return f"no file matches {pattern}"


class FileProbe:
    """Existence, count, age and size of the files each check's path or glob names."""

    name: ClassVar[str] = "file"
    description: ClassVar[str] = "files by path or glob: existence, age, size, count"
    interval: float | None = 60.0
    options: ClassVar[type[FileSettings]] = FileSettings

    def __init__(self) -> None:
        self.checks: list[FileCheck] = []
        self._details: dict[str, str] = {}

    def configure(self, settings: FileSettings) -> None:
        checks, problems = parse_checks(settings.checks, CHECK_KEYS, EXAMPLE)
        if problems:
            raise ValueError("\n".join(problems))
        self.checks = [FileCheck(check["name"], check["path"]) for _, check in checks]
        self._details = {}

    def _look(self, check: FileCheck, now: float) -> list[Sample]:
        labels = {"check": check.name}
        newest: tuple[float, int, str] | None = None
        matches = glob.glob(check.path, recursive=True) if _MAGIC.search(check.path) else [check.path]
        count = 0
        for path in matches:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                try:  # a dangling symlink still matches, as ls shows it
                    st = os.lstat(path)
                except OSError:
                    continue
            except OSError:
                continue
            count += 1
            if newest is None or st.st_mtime > newest[0]:
                newest = (st.st_mtime, st.st_size, path)
        out = [Sample("file.exists", 1 if count else 0, labels, now), Sample("file.count", count, labels, now)]
        if newest is None:
            self._details[check.name] = why_nothing(check.path)
            return out
        mtime, size, path = newest
        out += [Sample("file.age_seconds", now - mtime, labels, now), Sample("file.size_bytes", size, labels, now)]
        when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(mtime))
        more = f" (newest of {count})" if count > 1 else ""
        self._details[check.name] = f"{path}{more}: {size} bytes, modified {when}"
        return out

    def collect(self) -> list[Sample]:
        now = time.time()
        out: list[Sample] = []
        for check in self.checks:
            out += self._look(check, now)
        return out

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """The newest match, or why nothing matches, as of the last run."""
        if not metric.startswith("file."):
            return None
        return self._details.get(labels.get("check", ""))

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
