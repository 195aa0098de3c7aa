"""Commands for the queue and badmail folders.

While an agent runs it owns the queue (a lock file); then ``retry``, ``delete`` and
``badmail resend`` leave a request in ``queue/control/`` that the agent carries out
within [queue].scan_interval (5 s by default). With no agent running they act on the folders directly.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import click

from alertmail.cli.options import config_option, load_or_exit
from alertmail.exitcodes import ExitCode

REQUEST_WAIT = 5.0  # how long the command waits for a running agent to take a request


def state_folders(config_path: Path) -> tuple[object, Path]:
    cfg, _ = load_or_exit(config_path)
    return cfg, Path(cfg.state_dir)


def _age(seconds: float) -> str:
    from alertmail.units import format_duration

    return format_duration(max(seconds, 0))


def iso(timestamp: float | None) -> str | None:
    """A time for JSON output: ISO 8601 in UTC."""
    import datetime as dt

    return dt.datetime.fromtimestamp(timestamp, dt.UTC).isoformat(timespec="seconds") if timestamp else None


def _entry_json(entry) -> dict:
    return {
        "id": entry.id,
        "queued": iso(entry.created),
        "origin": entry.origin,
        "sender": entry.sender,
        "size": entry.size,
        "route": entry.route,
        "attempts": entry.attempts,
        "last_try": iso(entry.last_try),
        "next_try": iso(entry.next_try),
        "last_error": entry.last_error,
        "held": entry.held or None,
        "held_since": iso(entry.held_since),
        "recipients": {
            rcpt: {"status": s.status, "reply": s.reply, "transport": s.transport, "remote": s.remote, "time": iso(s.time)}
            for rcpt, s in entry.recipients.items()
        },
    }


def decoded_headers(head: str) -> str:
    """Header lines with encoded words (=?utf-8?...?=) decoded, as people read them."""
    import email.header

    out = []
    for line in head.splitlines():
        try:
            out.append(str(email.header.make_header(email.header.decode_header(line))) if "=?" in line else line)
        except (ValueError, LookupError):
            out.append(line)
    return "\n".join(out)


def check_id(msg_id: str) -> str:
    from alertmail.queue.entry import valid_id

    if not valid_id(msg_id):
        click.echo(f"{msg_id!r} is not a message id (hex digits, as `alertmail queue list` shows them)", err=True)
        sys.exit(ExitCode.USAGE)
    return msg_id


def hand_over(queue, action: str, msg_id: str) -> bool:
    """Leave a request for the running agent and wake it; True once it was taken within REQUEST_WAIT."""
    import signal

    path = queue.request(action, msg_id)
    owner = queue.owner()  # written by the lock's holder when it took the lock: the running agent
    if owner is not None and owner != os.getpid():
        try:
            os.kill(owner, signal.SIGUSR1)  # take it now, not at the next scan of the control folder
        except OSError:
            pass  # another user's agent, or gone: it still finds the request at its next scan
    deadline = time.monotonic() + REQUEST_WAIT
    while path.exists():
        if time.monotonic() > deadline:
            click.echo(f"the agent has not taken the request yet; it stays in {path}")
            return False
        time.sleep(0.1)
    return True


@click.group("queue")
def queue_group() -> None:
    """Look at and act on the messages waiting for delivery."""


@queue_group.command("list")
@config_option
@click.option("--corrupt", "show_corrupt", is_flag=True, help="what is damaged: set aside in queue/corrupt/ or found in place")
@click.option("--json", "as_json", is_flag=True, help="print JSON (times in ISO 8601)")
def queue_list(config_path: Path, show_corrupt: bool, as_json: bool) -> None:
    """One line per queued message: id, age, recipients, attempts, next try, last error."""
    from alertmail.cli.table import format_table
    from alertmail.queue.spool import Queue

    _, state_dir = state_folders(config_path)
    queue = Queue(state_dir / "queue")
    queue.load()
    if show_corrupt:
        _list_corrupt(queue, as_json)
        return
    entries = queue.entries()
    if as_json:
        import json

        click.echo(json.dumps([_entry_json(e) for e in entries], indent=2))
        return
    damaged = queue.corrupt()
    if damaged:
        click.echo(f"{len(damaged)} damaged file(s) set aside or found; see: alertmail queue list --corrupt", err=True)
    if not entries:
        click.echo("the queue is empty")
        return
    from alertmail.queue.badmail import stamp

    now = time.time()
    rows = []
    for e in entries:
        pending = e.pending
        rcpts = pending[0] + (f" +{len(pending) - 1}" if len(pending) > 1 else "") if pending else "-"
        if e.held:
            next_try = f"held since {stamp(e.held_since)}"
            error = f"held: {e.held}"
        else:
            next_try = "now" if e.next_try <= now else f"in {_age(e.next_try - now)}"
            error = e.last_error or "-"
        rows.append([e.id, _age(now - e.created), rcpts, e.attempts, next_try, error])
    click.echo(format_table(["id", "age", "recipients", "attempts", "next try", "last error"], rows, align_right=(1, 3)))
    click.echo(f"{len(entries)} message(s)")
    held = [e for e in entries if e.held]
    if held:
        click.echo(
            f"{len(held)} message(s) held: their route names a transport the config does not have; "
            "add it or change the route and reload, or they go to badmail at [queue].expire"
        )


def _list_corrupt(queue, as_json: bool = False) -> None:
    """One line per damaged file: where it is, its size, what was wrong (``as_json``: a JSON list)."""
    from alertmail.cli.table import format_table

    items = queue.corrupt()
    if as_json:
        import json

        click.echo(json.dumps([_corrupt_json(queue, path, reasons) for path, reasons in items], indent=2))
        return
    if not items:
        click.echo("nothing damaged")
        return
    rows = []
    for path, reasons in items:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        where = "in place (set aside at the next start)" if path.parent == queue.folder else "corrupt/"
        rows.append([path.name, size, where, reasons])
    click.echo(format_table(["file", "bytes", "where", "damage"], rows, align_right=(1,)))
    click.echo(f"{len(items)} damaged file(s); set-aside bytes are in {queue.folder / 'corrupt'}, never deleted")


def _corrupt_json(queue, path: Path, reasons: str) -> dict:
    try:
        st = path.stat()
        size, changed = st.st_size, st.st_mtime
    except OSError:
        size, changed = 0, None
    return {
        "file": path.name,
        "path": str(path),
        "bytes": size,
        "set_aside": path.parent != queue.folder,  # False: found in place, set aside at the next start
        "changed": iso(changed),
        "damage": reasons,
    }


@queue_group.command("show")
@config_option
@click.argument("msg_id")
@click.option("--json", "as_json", is_flag=True, help="print JSON (times in ISO 8601), the headers included")
def queue_show(config_path: Path, msg_id: str, as_json: bool) -> None:
    """Everything about one queued message: envelope, recipients' states, headers."""
    from alertmail.queue.badmail import stamp
    from alertmail.queue.dsn import original_headers
    from alertmail.queue.spool import Queue

    _, state_dir = state_folders(config_path)
    queue = Queue(state_dir / "queue")
    check_id(msg_id)
    queue.load()
    entry = queue.get(msg_id)
    if entry is None:
        click.echo(f"no message {msg_id} in {queue.folder}", err=True)
        sys.exit(ExitCode.NOINPUT)
    if as_json:
        import json

        try:
            headers = decoded_headers(original_headers(queue.read_message(entry.id)))
        except OSError as exc:
            headers = f"(cannot read the message: {exc})"
        click.echo(json.dumps({**_entry_json(entry), "headers": headers}, indent=2))
        return
    click.echo(f"id:         {entry.id}")
    click.echo(f"queued:     {stamp(entry.created)} ({_age(time.time() - entry.created)} ago, from {entry.origin})")
    click.echo(f"sender:     <{entry.sender}>")
    click.echo(f"size:       {entry.size} bytes")
    click.echo(f"route:      {' -> '.join(entry.route) if entry.route else '(the default route)'}")
    click.echo(f"attempts:   {entry.attempts}" + (f", the last at {stamp(entry.last_try)}" if entry.last_try else ""))
    if entry.held:
        click.echo(f"held:       since {stamp(entry.held_since)}: {entry.held}")
        click.echo(f"gives up:   {stamp(entry.next_try)} (at [queue].expire), unless a reload routes it")
    else:
        click.echo(f"next try:   {stamp(entry.next_try)}")
    click.echo("recipients:")
    for rcpt, state in entry.recipients.items():
        reply = f": {state.reply}" if state.reply else ""
        via = f" (via {state.transport})" if state.transport else ""
        click.echo(f"  <{rcpt}> {state.status}{reply}{via}")
    try:
        click.echo("\n" + decoded_headers(original_headers(queue.read_message(entry.id))).rstrip())
    except OSError as exc:
        click.echo(f"cannot read the message: {exc}", err=True)


@queue_group.command("retry")
@config_option
@click.argument("msg_id", required=False)
@click.option("--all", "retry_all", is_flag=True, help="every queued message")
@click.option("--no-wait", is_flag=True, help="hand the retry to the agent and return, without waiting for the outcome")
@click.option("--wait", "wait_for", default="60s", show_default=True, metavar="DURATION", help="longest to wait for the outcome")
def queue_retry(config_path: Path, msg_id: str | None, retry_all: bool, no_wait: bool, wait_for: str) -> None:
    """Try a message (or --all) again now and say what became of it: delivered, deferred (with the
    reply) or given up. A manual retry is not an attempt: it moves no backoff on."""
    from alertmail.units import parse_duration

    if bool(msg_id) == retry_all:
        click.echo("name one message id, or --all", err=True)
        sys.exit(ExitCode.USAGE)
    try:
        wait = 0.0 if no_wait else parse_duration(wait_for)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--wait") from None
    _act(config_path, "retry", "all" if retry_all else check_id(msg_id or ""), wait=wait)


@queue_group.command("delete")
@config_option
@click.argument("msg_id")
def queue_delete(config_path: Path, msg_id: str) -> None:
    """Remove a message from the queue without delivering it (no DSN, no badmail)."""
    _act(config_path, "delete", check_id(msg_id))


def _act(config_path: Path, action: str, msg_id: str, *, wait: float = 0.0) -> None:
    from alertmail.queue.spool import Queue

    _, state_dir = state_folders(config_path)
    queue = Queue(state_dir / "queue")
    if not queue.acquire_lock():
        queue.load()
        if msg_id != "all" and queue.get(msg_id) is None:
            click.echo(f"no message {msg_id} in {queue.folder}", err=True)
            sys.exit(ExitCode.NOINPUT)
        before = {e.id: e.last_try for e in queue.entries() if msg_id in ("all", e.id)}
        handed = time.time()
        if hand_over(queue, action, msg_id):
            if wait and action == "retry":
                if report_outcomes(queue, before, state_dir / "badmail", wait, since=handed):
                    sys.exit(ExitCode.CONFIG)
            else:
                click.echo(f"{action}: handed to the running agent")
        return
    try:
        queue.load()
        touched = queue.apply_request(action, msg_id)
    finally:
        queue.release_lock()
    if not touched:
        click.echo("the queue is empty" if msg_id == "all" else f"no message {msg_id} in {queue.folder}", err=True)
        sys.exit(ExitCode.NOINPUT if msg_id != "all" else ExitCode.OK)
    done = "deleted" if action == "delete" else "due now; no agent running: it goes when the agent starts"
    click.echo(f"{len(touched)} message(s) {done}")


def report_outcomes(queue, before: dict[str, float], badmail: Path, wait: float, *, since: float = 0.0) -> bool:
    """Wait up to ``wait`` seconds for each retried message's try to end; print what became of each.

    True when one is held (its route cannot be routed with the config in force): no try
    can end for it until the config changes.
    """
    from alertmail.queue.badmail import stamp

    deadline = time.monotonic() + wait
    pending = dict(before)
    held = False
    while pending:
        queue.load()
        for msg_id, last_try in list(pending.items()):
            entry = queue.get(msg_id)
            if entry is None:
                given_up = (badmail / f"{msg_id}.bdr").exists()
                reason = (badmail / f"{msg_id}.bdr").read_text(errors="replace").split("\n", 1)[0] if given_up else ""
                click.echo(f"{msg_id}: given up (badmail): {reason}" if given_up else f"{msg_id}: delivered")
            elif entry.held and entry.next_try > since + 1:  # held again after the request was taken
                click.echo(f"{msg_id}: held since {stamp(entry.held_since)}: {entry.held}")
                held = True
            elif entry.last_try > last_try:
                if entry.pending:
                    click.echo(
                        f"{msg_id}: deferred: {entry.last_error or 'no reply'}; next try in {_age(entry.next_try - time.time())}"
                    )
                else:
                    continue  # tried, settling: removed or updated in a moment
            else:
                continue
            del pending[msg_id]
        if pending and time.monotonic() < deadline:
            time.sleep(0.2)
        elif pending:
            for msg_id in pending:
                click.echo(f"{msg_id}: still being tried after {_age(wait)}; see: alertmail queue show {msg_id}")
            return held
    return held
