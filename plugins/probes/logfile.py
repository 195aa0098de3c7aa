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

With ``positions_file`` set, each log's position is kept there after every run that moved
it, and a restart reads on from it: lines written while the agent was stopped count at the
first run. A log replaced meanwhile (rotated) is read from its start. Without it the position
lives in memory only, and a restart starts at the end again. Each run reads at most
``max_read`` bytes per check; a log that grew more is caught up over the next runs.
"""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from alertmail import Sample, Settings, setting, write_atomic
from alertmail.plugins.probes.checklist import Key, absolute_path, parse_checks, text

log = logging.getLogger("alertmail.probes.logfile")

EXAMPLE = '{ name = "app-errors", path = "/var/log/app/app.log", pattern = "ERROR|CRITICAL" }'
DEFAULT_MAX_READ = 16 * 1024 * 1024
# Bytes before the position kept to tell a file rewritten in place (copytruncate) from one that grew.
TAIL = 64
# The longest matching line put into the mail.
LINE_LIMIT = 1000


def open_log(path: str) -> tuple[int, os.stat_result] | None:
    """A read-only descriptor of the regular file at ``path`` and its stat; None when there is none.

    Raises OSError for anything else at the name: a folder, a pipe (opened without blocking, so
    a FIFO cannot hang the probe), a device; or one the agent may not open.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
    except OSError:
        os.close(fd)
        raise
    return fd, st


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
        opened = open_log(self.path)
        if opened is None:
            return  # read from its start once it appears
        fd, st = opened
        self.fd, self.identity = fd, (st.st_dev, st.st_ino)
        try:
            self.tail = os.pread(fd, min(TAIL, st.st_size), st.st_size - min(TAIL, st.st_size))
        except OSError:
            self.close()
            raise
        self.offset = st.st_size

    def resume(self, saved: Mapping[str, Any]) -> None:
        """Open the file at a position kept from an earlier run (``position()``), if it still fits.

        The same file, not shorter, with the same bytes before the position: read on from there.
        Another file under the name (rotated meanwhile), or one rewritten: read from its start.
        Raises OSError when it cannot be read.
        """
        self.close()
        opened = open_log(self.path)
        if opened is None:
            return
        fd, st = opened
        self.fd, self.identity = fd, (st.st_dev, st.st_ino)
        tail, offset = base64.b64decode(saved["tail"]), saved["offset"]
        if (saved["dev"], saved["ino"]) == self.identity and len(tail) <= offset <= st.st_size:
            try:
                same = os.pread(fd, len(tail), offset - len(tail)) == tail
            except OSError:
                self.close()
                raise
            if same:
                self.offset, self.tail = offset, tail

    def position(self) -> dict[str, Any] | None:
        """Where reading stands, for ``resume()`` after a restart; None before the file exists."""
        if self.identity is None:
            return None
        dev, ino = self.identity
        return {"dev": dev, "ino": ino, "offset": self.offset, "tail": base64.b64encode(self.tail).decode()}

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.identity, self.offset, self.tail = None, None, 0, b""

    def _open_new(self) -> bool:
        opened = open_log(self.path)
        if opened is None:
            return False
        fd, st = opened
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


def _regex(value: Any) -> re.Pattern[str]:
    try:
        return re.compile(text(value))
    except re.error as exc:
        raise ValueError(f'not a valid regular expression: {exc}; write a Python regex, e.g. "ERROR|CRIT"') from None


CHECK_KEYS = {
    "name": Key(text, required=True, example=f"e.g. {EXAMPLE}"),
    "path": Key(absolute_path, required=True, example=f"e.g. {EXAMPLE}"),
    "pattern": Key(_regex, required=True, example=f"e.g. {EXAMPLE}"),
}


def _fix(exc: OSError) -> str:
    if exc.errno == errno.EISDIR:
        return "name the log file itself, not its folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "run the agent as a user who may read it (for /var/log, a member of group adm)"
    return "name a log file the agent can read"


@dataclass(frozen=True, slots=True, kw_only=True)
class LogfileSettings(Settings):
    """``[probes.logfile]``."""

    checks: list[Any] = setting("any", [], help=f"list of {{ name, path, pattern }} tables, e.g. [{EXAMPLE}]")
    max_read: int = setting("size", DEFAULT_MAX_READ, help="most bytes read from one log in one run; the rest waits")
    positions_file: Path | None = setting(
        "path", None, help="file that keeps each log's position across restarts, e.g. a file in [agent].state_dir"
    )


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
    options: ClassVar[type[LogfileSettings]] = LogfileSettings

    def __init__(self) -> None:
        self.checks: list[LogCheck] = []
        self.max_read = DEFAULT_MAX_READ
        self.positions_file: str | None = None
        self._saved: dict[str, Any] = {}  # what the positions file holds now
        self._save_error = ""
        self._lock = threading.Lock()

    def configure(self, settings: LogfileSettings) -> None:
        # A reload configures on the agent's loop while a run may be reading in its worker
        # thread: a descriptor closed here must not be read (or reused) there.
        with self._lock:
            self._configure(settings)

    def _configure(self, settings: LogfileSettings) -> None:
        entries, problems = parse_checks(settings.checks, CHECK_KEYS, EXAMPLE)
        max_read = settings.max_read
        positions_file = settings.positions_file
        saved = self._load_positions(str(positions_file)) if positions_file else {}
        if not isinstance(max_read, int) or max_read < 4096:
            problems.append(f"max_read: expected at least 4KiB, got {max_read!r}; the default is 16MiB")
        # A reload keeps the position of a log it already follows.
        following = {(c.path, c.pattern.pattern): c for c in self.checks}
        checks: list[LogCheck] = []
        opened: list[Follower] = []
        for i, entry in entries:
            path, pattern = entry["path"], entry["pattern"]
            old = following.pop((path, pattern.pattern), None)
            if old is not None:
                checks.append(LogCheck(entry["name"], path, pattern, old.follower, old.last_line, old.last_at))
                continue
            follower = Follower(path)
            try:
                if isinstance(saved.get(path), dict):
                    follower.resume(saved[path])
                else:
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
        kept = {id(c.follower) for c in checks}
        for gone in self.checks:
            if id(gone.follower) not in kept:
                gone.follower.close()
        self.checks = checks
        self.max_read = int(max_read)
        self.positions_file = str(positions_file) if positions_file else None
        self._saved = saved

    @staticmethod
    def _load_positions(path: str) -> dict[str, Any]:
        """The positions kept by an earlier run; empty (and a warning) when the file is unusable."""
        try:
            with open(path, "rb") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("logfile: positions in %s cannot be used (%s); every log is read from its end", path, exc)
            return {}
        if not isinstance(data, dict):
            log.warning("logfile: positions in %s cannot be used; every log is read from its end", path)
            return {}
        good = {}
        for key, entry in data.items():
            try:
                base64.b64decode(entry["tail"], validate=True)
                if all(isinstance(entry[k], int) and entry[k] >= 0 for k in ("dev", "ino", "offset")):
                    good[key] = entry
            except (TypeError, KeyError, ValueError):
                continue  # that log starts at its end
        return good

    def _save_positions(self) -> None:
        positions = {c.path: c.follower.position() for c in self.checks}
        positions = {path: entry for path, entry in positions.items() if entry is not None}
        if positions == self._saved or self.positions_file is None:
            return
        try:
            write_atomic(self.positions_file, json.dumps(positions, indent=1, sort_keys=True).encode(), mode=0o600)
        except OSError as exc:
            if str(exc) != self._save_error:
                log.error("logfile: cannot keep positions in %s: %s", self.positions_file, exc)
            self._save_error = str(exc)
            return
        self._saved, self._save_error = positions, ""

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
        with self._lock:
            return self._collect()

    def _collect(self) -> list[Sample]:
        out: list[Sample] = []
        for check in self.checks:
            matches = self._count(check)
            if matches is not None:
                out.append(Sample("logfile.matches", matches, {"check": check.name}))
        self._save_positions()
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
