"""The ``logfile`` probe: count the new lines of a log that match a pattern.

::

    [probes.logfile]
    checks = [
      { name = "app-errors", path = "/var/log/app/app.log", pattern = "ERROR|CRITICAL" },
      { name = "oom", path = "/var/log/kern.log", pattern = "Out of memory: Killed process" },
    ]

Every check reports ``logfile.matches``: how many lines written since the last run match
its pattern (a Python regular expression, searched anywhere in the line), so ``above = 0``
mails on the first one. The last matching line is the check's detail, which the alert
mail shows.

Reading starts at the end of the file when the probe is configured: what is in the log
already is not news. From then on the file is followed as ``tail -F`` does, by its open
descriptor and by its name:

- rotation by rename (logrotate's default, ``create``): the old file is read to its end
  (the writer may have added lines after the last run), then the new file from its start;
- ``copytruncate`` and any other truncation: the file got shorter than the position, or
  the bytes just before the position changed, so it is read again from its start (the
  NUL bytes a writer without O_APPEND leaves in front are dropped);
- a file that does not exist yet is read from its start once it appears.

The position lives in the agent's memory: after a restart reading starts at the end again,
and lines written while the agent was stopped are not counted. Each run reads at most
``max_read`` bytes per check; a log that grew more is caught up over the next runs.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from alertmail import Option, Sample
from alertmail.plugins.probes.checklist import absolute_path, parse_checks

log = logging.getLogger("alertmail.probes.logfile")

CHECK_KEYS = ("name", "path", "pattern")
EXAMPLE = '{ name = "app-errors", path = "/var/log/app/app.log", pattern = "ERROR|CRITICAL" }'
DEFAULT_MAX_READ = 16 * 1024 * 1024
# Bytes before the position kept to tell a file rewritten in place (copytruncate) from one that grew.
TAIL = 64
# The longest matching line put into the mail.
LINE_LIMIT = 1000


class Follower:
    """The lines added to one file since the last read, across rotation and truncation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the open file
        self.offset = 0
        self.tail = b""  # up to TAIL bytes just before offset

    def start_at_end(self) -> None:
        """Open the file, if there is one, positioned at its end. Raises OSError when it cannot be read."""
        self.close()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # read from its start once it appears
        st = os.fstat(fd)
        self.fd, self.identity, self.offset = fd, (st.st_dev, st.st_ino), st.st_size
        self.tail = os.pread(fd, min(TAIL, self.offset), self.offset - min(TAIL, self.offset))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.identity, self.offset, self.tail = None, None, 0, b""

    def _open_new(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        self.close()
        self.fd, self.identity = fd, (st.st_dev, st.st_ino)
        return True

    def _rewritten(self, size: int) -> bool:
        """True when the open file is no longer the one read so far: shorter, or changed before the position."""
        if size < self.offset:
            return True
        if not self.tail or self.fd is None:
            return False
        return os.pread(self.fd, len(self.tail), self.offset - len(self.tail)) != self.tail

    def _drain(self, budget: int, *, final: bool) -> tuple[list[bytes], int]:
        """Complete lines from the position on, at most ``budget`` bytes; ``final``: the file gets no more lines."""
        assert self.fd is not None
        size = os.fstat(self.fd).st_size
        if self._rewritten(size):
            self.offset, self.tail = 0, b""
        want = min(size - self.offset, budget)
        if want <= 0:
            return [], 0
        data = os.pread(self.fd, want, self.offset)
        end = data.rfind(b"\n") + 1
        if end == 0 and (len(data) == budget or final):
            end = len(data)  # a line longer than the budget, or the unended last line of a rotated file
        elif final and want == size - self.offset:
            end = len(data)
        chunk = data[:end]
        self.offset += len(chunk)
        self.tail = (self.tail + chunk)[-TAIL:]
        lines = chunk.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        return lines, len(chunk)

    def read(self, budget: int) -> list[bytes]:
        """The complete lines written since the last read. Raises OSError when the file cannot be read."""
        lines: list[bytes] = []
        if self.fd is not None:
            try:
                st = os.stat(self.path)
                now = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                now = None  # renamed away and not created again yet: the old file may still grow
            replaced = now is not None and now != self.identity
            got, used = self._drain(budget, final=replaced)
            lines += got
            budget -= used
            if not replaced or budget <= 0 or self.offset < os.fstat(self.fd).st_size:
                return lines  # the same file, or the old one is not read to its end yet
        if self._open_new():
            self.offset, self.tail = 0, b""
            got, _ = self._drain(budget, final=False)
            lines += got
        return lines


def _fix(exc: OSError) -> str:
    if exc.errno == errno.EISDIR:
        return "name the log file itself, not its folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "run the agent as a user who may read it (for /var/log, a member of group adm)"
    return "name a log file the agent can read"


@dataclass
class LogCheck:
    name: str
    path: str
    pattern: re.Pattern[str]
    follower: Follower
    last_line: str = ""
    last_at: float = 0.0
    error: str = ""


class LogfileProbe:
    """Lines matching a pattern among those written to a log since the last run."""

    name: ClassVar[str] = "logfile"
    description: ClassVar[str] = "new log lines matching a pattern"
    interval: float | None = 30.0
    options: ClassVar[dict[str, Option]] = {
        "checks": Option("any", [], help=f"list of {{ name, path, pattern }} tables, e.g. [{EXAMPLE}]"),
        "max_read": Option("size", DEFAULT_MAX_READ, help="most bytes read from one log in one run; the rest waits"),
    }

    def __init__(self) -> None:
        self.checks: list[LogCheck] = []
        self.max_read = DEFAULT_MAX_READ

    def configure(self, options: Mapping[str, Any]) -> None:
        entries, problems = parse_checks(options.get("checks") or [], CHECK_KEYS, CHECK_KEYS, EXAMPLE)
        max_read = options.get("max_read", DEFAULT_MAX_READ)
        if not isinstance(max_read, int) or max_read < 4096:
            problems.append(f"max_read: expected at least 4KiB, got {max_read!r}; the default is 16MiB")
        # A reload keeps the position of a log it already follows.
        following = {(c.path, c.pattern.pattern): c for c in self.checks}
        checks: list[LogCheck] = []
        opened: list[Follower] = []
        for i, entry in entries:
            try:
                path = absolute_path(f"checks[{i}].path", entry["path"])
            except ValueError as exc:
                problems.append(str(exc))
                continue
            try:
                pattern = re.compile(entry["pattern"])
            except re.error as exc:
                problems.append(
                    f'checks[{i}].pattern: not a valid regular expression: {exc}; write a Python regex, e.g. "ERROR|CRIT"'
                )
                continue
            old = following.pop((path, pattern.pattern), None)
            if old is not None:
                checks.append(LogCheck(entry["name"], path, pattern, old.follower, old.last_line, old.last_at))
                continue
            follower = Follower(path)
            try:
                follower.start_at_end()
            except OSError as exc:
                problems.append(f"checks[{i}].path: cannot read {path}: {exc.strerror}; {_fix(exc)}")
                continue
            opened.append(follower)
            checks.append(LogCheck(entry["name"], path, pattern, follower))
        if problems:
            for follower in opened:
                follower.close()
            raise ValueError("\n".join(problems))
        for gone in following.values():
            gone.follower.close()
        self.checks = checks
        self.max_read = int(max_read)

    def _count(self, check: LogCheck) -> int | None:
        try:
            lines = check.follower.read(self.max_read)
        except OSError as exc:
            error = f"cannot read {check.path}: {exc.strerror}"
            if error != check.error:
                log.error("logfile check %s: %s", check.name, error)
            check.error = error
            return None
        if check.error:
            log.info("logfile check %s: %s can be read again", check.name, check.path)
            check.error = ""
        matches = 0
        for raw in lines:
            line = raw.lstrip(b"\0").rstrip(b"\r").decode("utf-8", "replace")
            if check.pattern.search(line):
                matches += 1
                check.last_line = line
        if matches:
            check.last_at = time.time()
        return matches

    def collect(self) -> list[Sample]:
        out: list[Sample] = []
        for check in self.checks:
            matches = self._count(check)
            if matches is not None:
                out.append(Sample("logfile.matches", matches, {"check": check.name}))
        return out

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """The last matching line, or why the log cannot be read."""
        if metric != "logfile.matches":
            return None
        for check in self.checks:
            if check.name == labels.get("check"):
                if check.error:
                    return check.error
                if not check.last_line:
                    return None
                line = check.last_line if len(check.last_line) <= LINE_LIMIT else check.last_line[:LINE_LIMIT] + " [cut]"
                when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(check.last_at))
                return f"last matching line in {check.path} (read {when}):\n{line}"
        return None

    def __repr__(self) -> str:
        return f"<probe {self.name}>"
