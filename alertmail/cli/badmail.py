"""``alertmail badmail``: what was given up on, with its reason, and putting it back."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import click

from alertmail.cli.options import config_option
from alertmail.cli.queue import check_id, hand_over, iso, report_outcomes, state_folders
from alertmail.exitcodes import ExitCode


@click.group("badmail")
def badmail_group() -> None:
    """Messages given up on: <id>.bad (the message) and <id>.bdr (why)."""


@badmail_group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (times in ISO 8601)")
def badmail_list(config_path: Path, as_json: bool) -> None:
    """One line per message in badmail: id, when, size, reason."""
    from alertmail.cli.table import format_table
    from alertmail.queue.badmail import Badmail, stamp

    _, state_dir = state_folders(config_path)
    items = Badmail(state_dir / "badmail").items()
    if as_json:
        import json

        listed = [
            {"id": i.id, "given_up": iso(i.time), "size": i.size, "reason": i.reason, "replies": list(i.replies)} for i in items
        ]
        click.echo(json.dumps(listed, indent=2))
        return
    if not items:
        click.echo("badmail is empty")
        return
    rows = [[i.id, stamp(i.time), i.size, "; ".join([i.reason, *i.replies])] for i in items]
    click.echo(format_table(["id", "given up", "bytes", "reason"], rows, align_right=(2,)))
    click.echo(f"{len(items)} message(s); the reasons are in {state_dir / 'badmail'}/<id>.bdr")


@badmail_group.command("resend")
@config_option
@click.argument("msg_id")
@click.option("--no-wait", is_flag=True, help="hand it to the agent and return, without waiting for the outcome")
@click.option("--wait", "wait_for", default="60s", show_default=True, metavar="DURATION", help="longest to wait for the outcome")
def badmail_resend(config_path: Path, msg_id: str, no_wait: bool, wait_for: str) -> None:
    """Put a message from badmail back into the queue (to the recipients that failed); with an agent
    running, wait for its first try and say what became of it."""
    from alertmail.queue.badmail import Badmail
    from alertmail.queue.spool import Queue, QueueLocked
    from alertmail.units import parse_duration

    _, state_dir = state_folders(config_path)
    badmail = Badmail(state_dir / "badmail")
    if not (badmail.folder / f"{check_id(msg_id)}.bad").exists():
        click.echo(f"no message {msg_id} in {badmail.folder}", err=True)
        sys.exit(ExitCode.NOINPUT)
    queue = Queue(state_dir / "queue")

    async def resend() -> str:
        await queue.start()
        try:
            return await badmail.resend(msg_id, queue)
        finally:
            await queue.close()

    try:
        new_id = asyncio.run(resend())
    except QueueLocked:
        try:
            wait = 0.0 if no_wait else parse_duration(wait_for)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--wait") from None
        _, data = badmail.read(msg_id)
        queue.load()
        known = {e.id for e in queue.entries()}
        if not hand_over(queue, "resend", msg_id):
            return
        if not wait:
            click.echo(f"{msg_id}: handed to the running agent, which queues it again")
            return
        # The agent removes <id>.bad once the message is durable in the queue again.
        deadline = time.monotonic() + wait
        while (badmail.folder / f"{msg_id}.bad").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if (badmail.folder / f"{msg_id}.bad").exists():
            click.echo(f"{msg_id}: handed to the running agent, not queued again yet; see: alertmail queue list")
            return
        queue.load()
        again = [e.id for e in queue.entries() if e.id not in known and e.origin == "resend" and queue.read_message(e.id) == data]
        if again:
            click.echo(f"{msg_id}: queued again as {again[0]}")
            report_outcomes(queue, {again[0]: 0.0}, badmail.folder, wait)
        elif any(i.id != msg_id and badmail.read(i.id)[1] == data for i in badmail.items()):
            click.echo(f"{msg_id}: queued again and given up at once; see: alertmail badmail list")
        else:
            click.echo(f"{msg_id}: queued again and delivered")
        return
    except (OSError, ValueError) as exc:
        click.echo(f"cannot resend {msg_id}: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    click.echo(f"{msg_id}: queued again as {new_id}; it goes out when the agent runs")
