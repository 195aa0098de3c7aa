"""The control socket: ``alertmail status`` asks the running agent what it thinks.

The agent listens on a Unix socket, ``STATE_DIR/control.sock``. A client connects,
writes one request line (``status``) and reads one JSON document back; the agent
closes the connection. The socket is made with mode 0660: the agent's user and its
group may connect, nobody else (connecting to a Unix socket needs write permission
on it). The agent also refuses a peer whose user id (``SO_PEERCRED``) is neither root,
nor its own, nor one whose primary group is the agent's group, nor in that group,
so a socket made wider by hand stays closed. What it answers is read-only: nothing
sent over the socket changes the agent. A request line is at most ``MAX_REQUEST``
bytes and must arrive within ``READ_TIMEOUT``; at most ``MAX_CLIENTS`` are served at once.

A path longer than a socket address can hold (about 107 bytes) is reached through
``/proc/self/fd``, so a deep ``state_dir`` still works.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import grp
import json
import logging
import os
import pwd
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("alertmail.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1024  # bytes of the one request line
READ_TIMEOUT = 5.0  # seconds a client has to send its request line
MAX_CLIENTS = 8  # connections served at once; more wait for a place
LAST_MAILS = 10  # mails listed under "last mails"
JOURNAL_TAIL = 256 * 1024  # bytes read from the end of the alert journal for them
_SUN_PATH_MAX = 107


def socket_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / SOCKET_NAME


def iso(timestamp: float | None) -> str | None:
    """ISO 8601 in UTC, to the second; None stays None."""
    if not timestamp:
        return None
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def _address(path: Path) -> Iterator[str]:
    """An address ``bind``/``connect`` take for ``path``, however deep it is."""
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


def _peer_allowed(sock: socket.socket) -> bool:
    """Root, the agent's own user, or a user of the agent's group (primary or supplementary)."""
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return True  # no SO_PEERCRED here: the socket's mode is the only guard
    _pid, uid, gid = struct.unpack("3i", creds)
    if uid in (0, os.getuid()) or gid == os.getgid():
        return True
    try:
        name = pwd.getpwuid(uid).pw_name
        return name in grp.getgrgid(os.getgid()).gr_mem
    except KeyError:
        return False


class ControlServer:
    """Serves the agent's state on ``STATE_DIR/control.sock`` from the agent's event loop."""

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.path = socket_path(agent.state_dir)
        self._server: asyncio.AbstractServer | None = None
        self._places = asyncio.Semaphore(MAX_CLIENTS)
        self._started = time.monotonic()

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by an agent that died; the queue lock says no other one runs here
        old = os.umask(0o117)  # srw-rw----: the agent's user and group
        try:
            with _address(self.path) as address:
                self._server = await asyncio.start_unix_server(self._serve, address)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        log.info("control socket: %s (alertmail status)", self.path)

    def answer(self) -> dict[str, Any]:
        """What ``status`` answers now."""
        return status(self.agent, time.time(), uptime=time.monotonic() - self._started)

    async def page(self, controls: dict[str, str] | None = None) -> bytes:
        """The status page (the exporter serves it at "/"): the state is read here, on the event loop;
        charts are drawn and the HTML made in a worker thread. ``controls`` (the user and the form
        token) adds the page's forms."""
        now = time.time()
        answer = self.answer()
        events, silenced, histories = _page_alerts(self.agent, now)
        ctx = _page_context(self.agent, histories)
        from alertmail.render.status_page import render_status_page

        html = await asyncio.to_thread(render_status_page, events, silenced, answer, ctx, now, controls)
        return html.encode()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._places:
            try:
                try:
                    line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
                except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                if len(line) > MAX_REQUEST:
                    return
                request = line.decode("ascii", "replace").strip()
                sock = writer.get_extra_info("socket")
                if sock is not None and not _peer_allowed(sock):
                    answer: dict[str, Any] = {"error": "permission denied: not the agent's user or group"}
                elif request != "status":
                    answer = {"error": f"unknown request {request[:40]!r}; this agent answers: status"}
                else:
                    answer = self.answer()
                writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            except Exception:
                log.exception("control socket: the status answer failed")
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


# -- the answer ----------------------------------------------------------


class _Alert:
    """What a silence matches on, for a rule state (rule, labels, severity)."""

    __slots__ = ("labels", "rule", "severity")

    def __init__(self, rule: Any, labels: Any, severity: str) -> None:
        self.rule, self.labels, self.severity = rule, labels, severity


def _threshold(rule: Any, severity: str) -> float | None:
    for level, name in rule.levels:
        if name == severity:
            return level
    return rule.threshold


def _alerts(agent: Any, now: float) -> list[dict[str, Any]]:
    from alertmail.rules.model import State

    notifier = getattr(agent, "notifier", None)
    silences = notifier.silences if notifier is not None else None
    out = []
    for row in agent.engine.states(now):
        if row.state is State.OK:
            continue
        severity = row.severity or row.rule.severity
        silence = silences.match(_Alert(row.rule, row.labels, severity), now) if silences else None
        out.append(
            {
                "rule": row.rule.name,
                "labels": dict(row.labels),
                "state": row.state.value,
                "severity": severity,
                "metric": row.rule.metric,
                "value": row.value,
                "comparison": "absent" if row.note == "absent" else row.rule.comparison,
                "threshold": _threshold(row.rule, severity),
                "since": iso(row.since),
                "for_seconds": round(now - row.since, 3) if row.since else None,
                "silenced_by": silence.id if silence is not None else None,
                "incident": row.incident,
            }
        )
    order = {"firing": 0, "flapping": 1, "pending": 2}
    out.sort(key=lambda a: (order.get(a["state"], 3), a["since"] or ""))
    return out


def _silences(agent: Any, now: float) -> list[dict[str, Any]]:
    notifier = getattr(agent, "notifier", None)
    if notifier is None:
        return []
    notifier.silences.refresh(now)
    tz = agent.cfg.agent.timezone
    out = []
    for s in notifier.silences.all:
        if s.schedule.expired(now):
            continue
        ends = getattr(s.schedule, "ends", None)
        out.append(
            {
                "id": s.id,
                "matchers": s.describe_matchers(),
                "source": s.source,
                "active": s.schedule.active(now),
                "schedule": s.schedule.describe(tz),
                "ends": iso(ends),
                "comment": s.comment,
                "author": s.author,
            }
        )
    return out


def _probes(agent: Any) -> list[dict[str, Any]]:
    runs = getattr(agent, "probe_runs", {})
    out = []
    for name, (_probe, interval, timeout) in sorted(agent.probes.items()):
        run = runs.get(name, {})
        out.append(
            {
                "name": name,
                "interval": interval,
                "timeout": timeout,
                "last_run": iso(run.get("last")),
                "duration": run.get("duration"),
                "runs": run.get("runs", 0),
                "failures": run.get("failures", 0),
                "last_error": run.get("error") or None,
            }
        )
    return out


def _queue(agent: Any, now: float) -> dict[str, Any]:
    queue = getattr(agent, "queue", None)
    if queue is None:
        return {"depth": 0, "oldest": None, "held": [], "waiting": []}
    entries = queue.entries()
    oldest = min((e.created for e in entries), default=None)
    waiting = sorted(entries, key=lambda e: e.created)
    return {
        "depth": len(entries),
        "oldest": iso(oldest),
        "held": [
            {"id": e.id, "reason": f"its route names transport {e.held}, which the config lacks", "since": iso(e.held_since)}
            for e in waiting
            if e.held
        ],
        "waiting": [
            {
                "id": e.id,
                "queued": iso(e.created),
                "recipients": sorted(e.recipients),
                "attempts": e.attempts,
                "next_try": iso(e.next_try),
                "last_error": e.last_error or None,
                "held": e.held or None,
            }
            for e in waiting[:50]
        ],
    }


def _journal_tail(path: Path) -> list[dict[str, Any]]:
    """The mail lines at the end of the alert journal, newest last."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(size - JOURNAL_TAIL, 0))
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if len(data) == JOURNAL_TAIL:
        lines = lines[1:]  # the first one is likely cut
    out = []
    for raw in lines:
        if b'"mail"' not in raw:
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict) and "mail" in line:
            out.append(line)
    return out[-LAST_MAILS:]


def _mails(agent: Any) -> list[dict[str, Any]]:
    queue = getattr(agent, "queue", None)
    lines = _journal_tail(agent.state_dir / "logs" / "alerts.jsonl")
    out = []
    for line in reversed(lines):
        msg_id = str(line.get("id") or "")
        entry = queue.get(msg_id) if (queue is not None and msg_id) else None
        if entry is not None:
            fate = "waiting"
            detail = entry.last_error or (f"held: transport {entry.held} missing" if entry.held else "")
        elif msg_id and (agent.state_dir / "badmail" / f"{msg_id}.bad").exists():
            fate, detail = "failed", "given up: in badmail"
        elif msg_id:
            fate, detail = "delivered", ""
        else:
            fate, detail = "unknown", ""
        out.append(
            {
                "time": iso(line.get("t")),
                "subject": line.get("mail"),
                "to": line.get("to") or [],
                "kind": line.get("kind"),
                "id": msg_id or None,
                "fate": fate,
                "detail": detail or None,
            }
        )
    return out


def status(agent: Any, now: float, *, uptime: float) -> dict[str, Any]:
    """Everything ``alertmail status`` shows, as JSON-ready values (times in ISO 8601, UTC)."""
    from alertmail.version import __version__

    reload = getattr(agent, "last_reload", None)
    return {
        "agent": {
            "pid": os.getpid(),
            "version": __version__,
            "config": str(Path(agent.cfg.path).resolve()) if agent.cfg.path else None,
            "hostname": agent.cfg.hostname,
            "state_dir": str(Path(agent.state_dir).resolve()),
            "started": iso(now - uptime),
            "uptime_seconds": round(uptime, 3),
            "now": iso(now),
            "last_reload": reload,
        },
        "alerts": _alerts(agent, now),
        "silences": _silences(agent, now),
        "probes": _probes(agent),
        "queue": _queue(agent, now),
        "mails": _mails(agent),
    }


# -- the page -----------------------------------------------------------

PAGE_CHARTS = 10  # alerts on the status page drawn with a chart; the rest are listed


def _page_alerts(agent: Any, now: float) -> tuple[list[Any], dict[str, str], dict[tuple[str, Any], list]]:
    """Alerts firing and pending as events for the page, the silences holding them, and the history of
    the first ``PAGE_CHARTS`` (copied here, on the event loop, for the charts drawn in a thread)."""
    from alertmail.rules.model import AlertEvent, State, incident_id

    notifier = getattr(agent, "notifier", None)
    silences = notifier.silences if notifier is not None else None
    events = []
    silenced: dict[str, str] = {}
    for row in agent.engine.states(now):
        if row.state is State.OK:
            continue
        severity = row.severity or row.rule.severity
        incident = row.incident or incident_id(row.rule.name, row.labels, row.since or now, "pending")
        absent = row.note == "absent"
        events.append(
            AlertEvent(
                kind="pending" if row.state is State.PENDING else "flapping" if row.state is State.FLAPPING else "firing",
                rule=row.rule,
                labels=row.labels,
                value=row.value,
                threshold=None if absent else _threshold(row.rule, severity),
                comparison="absent" if absent else row.rule.comparison,
                severity=severity,
                since=row.since or now,
                at=now,
                incident=incident,
            )
        )
        silence = silences.match(_Alert(row.rule, row.labels, severity), now) if silences else None
        if silence is not None:
            silenced[incident] = silence.id
    from alertmail.render.view import worst_first

    events = sorted(worst_first(events), key=lambda e: e.kind == "pending")  # what fires leads
    histories = {(e.rule.metric, e.labels): list(agent.history.get(e.rule.metric, e.labels)) for e in events[:PAGE_CHARTS]}
    return events, silenced, histories


def _page_context(agent: Any, histories: dict[tuple[str, Any], list]) -> Any:
    from alertmail.render.view import RenderContext

    notifier = getattr(agent, "notifier", None)
    options = dict(getattr(notifier, "render_options", {}) or {})
    options.pop("templates_dir", None)  # the page is built-in; a user's mail templates do not apply
    return RenderContext(
        hostname=agent.cfg.hostname,
        timezone=agent.cfg.agent.timezone,
        history=lambda metric, labels: histories.get((metric, labels), ()),
        max_charts=PAGE_CHARTS,
        **options,
    )


# -- the client ----------------------------------------------------------


class NoAgent(Exception):
    """Nothing answers on the control socket; the one line to print."""


def ask(state_dir: Path | str, request: str = "status", timeout: float = 5.0) -> dict[str, Any]:
    """Ask the agent that owns ``state_dir``; NoAgent when none answers."""
    path = socket_path(state_dir)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            with _address(path) as address:
                sock.connect(address)
        except FileNotFoundError:
            raise NoAgent(f"no agent runs for {state_dir} (no control socket at {path}); start one with: alertmail run") from None
        except ConnectionRefusedError:
            raise NoAgent(
                f"no agent runs for {state_dir} ({path} is left from one that stopped); start one with: alertmail run"
            ) from None
        except PermissionError:
            raise NoAgent(f"{path}: permission denied; run as the agent's user or a member of its group") from None
        except TimeoutError:
            raise NoAgent(f"the agent did not answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise NoAgent(f"cannot reach the agent on {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(request.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            raise NoAgent(f"the agent did not answer on {path} within {timeout:g} s") from None
        except OSError as exc:
            raise NoAgent(f"the agent on {path} dropped the connection: {exc.strerror or exc}") from None
    finally:
        sock.close()
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise NoAgent(f"the agent on {path} gave no readable answer") from None
    if not isinstance(answer, dict):
        raise NoAgent(f"the agent on {path} gave no readable answer")
    if "error" in answer:
        raise NoAgent(f"the agent on {path} refused: {answer['error']}")
    return answer
