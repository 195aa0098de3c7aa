"""``alertmail status``: what the running agent thinks, asked over its control socket."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

import click

from alertmail.cli.options import config_option
from alertmail.exitcodes import ExitCode


def for_(seconds: float | None) -> str:
    """A span as people read it: "2h 5m", "3d 4h", "40s" (the two largest units)."""
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, seconds = divmod(seconds, size)
        if n:
            parts.append(f"{n}{unit}")
    return " ".join(parts[:2]) or "0s"


def _ago(iso_time: str | None, now: dt.datetime) -> str:
    if not iso_time:
        return "never"
    return for_((now - dt.datetime.fromisoformat(iso_time)).total_seconds()) + " ago"


def _until(iso_time: str | None, now: dt.datetime) -> str:
    if not iso_time:
        return ""
    return "in " + for_((dt.datetime.fromisoformat(iso_time) - now).total_seconds())


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _every(seconds: float) -> str:
    return f"{seconds:g}s" if seconds < 1 else for_(seconds)


def _labels(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def render_text(answer: dict[str, Any]) -> str:
    """The answer for people: the agent, then alerts, silences, probes, queue, mails."""
    about = answer["agent"]
    now = dt.datetime.fromisoformat(about["now"])
    lines = [
        f"agent: pid {about['pid']}, alertmail {about['version']}, up {for_(about['uptime_seconds'])}",
        f"  config: {about['config']}",
        f"  state:  {about['state_dir']}",
    ]
    reload = about.get("last_reload")
    if reload is None:
        lines.append("  last reload: none since start")
    else:
        outcome = "applied" if reload["ok"] else "refused: " + ("; ".join(reload.get("problems") or []) or "see the log")
        lines.append(f"  last reload: {_ago(reload['at'], now)}, {outcome}")

    alerts = answer["alerts"]
    firing = [a for a in alerts if a["state"] != "pending"]
    pending = [a for a in alerts if a["state"] == "pending"]
    lines.append("")
    lines.append(f"alerts: {len(firing)} firing, {len(pending)} pending")
    for a in alerts:
        labels = f" {{{_labels(a['labels'])}}}" if a["labels"] else ""
        if a["comparison"] == "absent":
            cond = f"{a['metric']} absent"
        else:
            cond = f"{a['metric']} {_number(a['value'])} {a['comparison']} {_number(a['threshold'])}"
        silenced = f", silenced by {a['silenced_by']}" if a["silenced_by"] else ""
        lines.append(
            f"  {a['state'].upper():8} {a['severity']:8} {a['rule']}{labels}: {cond}, for {for_(a['for_seconds'])}{silenced}"
        )

    silences = answer["silences"]
    lines.append("")
    lines.append(f"silences: {len(silences)}")
    for s in silences:
        ends = f", ends {_until(s['ends'], now)} ({s['ends']})" if s["ends"] else f", {s['schedule']}"
        state = "" if s["active"] else " (not yet in force)"
        comment = f" - {s['comment']}" if s["comment"] else ""
        lines.append(f"  {s['id']} {s['matchers']}{ends}{state}{comment}")

    lines.append("")
    lines.append(f"probes: {len(answer['probes'])}")
    for p in answer["probes"]:
        duration = f", took {p['duration']:.2f}s" if p["duration"] is not None else ""
        failures = f", {p['failures']} of {p['runs']} runs failed" if p["failures"] else f", {p['runs']} runs"
        error = f" (last error: {p['last_error']})" if p["last_error"] else ""
        lines.append(
            f"  {p['name']:12} every {_every(p['interval'])}, last run {_ago(p['last_run'], now)}{duration}{failures}{error}"
        )

    queue = answer["queue"]
    lines.append("")
    oldest = f", oldest queued {_ago(queue['oldest'], now)}" if queue["oldest"] else ""
    lines.append(f"queue: {queue['depth']} message(s){oldest}")
    for h in queue["held"]:
        lines.append(f"  held {h['id']}: {h['reason']} (since {_ago(h['since'], now)})")
    for w in queue["waiting"]:
        if w["held"]:
            continue
        nxt = f", next try {_until(w['next_try'], now)}" if w["next_try"] else ""
        err = f", last error: {w['last_error']}" if w["last_error"] else ""
        lines.append(f"  {w['id']} to {', '.join(w['recipients'])}: {w['attempts']} attempt(s){nxt}{err}")

    lines.append("")
    lines.append(f"last mails: {len(answer['mails'])}")
    for m in answer["mails"]:
        detail = f" ({m['detail']})" if m["detail"] else ""
        lines.append(f"  {_ago(m['time'], now):10} {m['fate']:9} {m['subject']}{detail}")
    return "\n".join(lines)


def state_dir_of(config_path: Path) -> Path:
    """``[agent].state_dir`` of the config, read without the full check: a config edited into
    a broken state after the agent started must not keep anyone from asking the agent."""
    from alertmail.config.load import state_dir_unchecked
    from alertmail.config.schema import ConfigError

    try:
        return state_dir_unchecked(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(ExitCode.CONFIG)


@click.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON (times in ISO 8601, UTC)")
def status_command(config_path: Path, as_json: bool) -> None:
    """What the running agent thinks: alerts firing and pending, silences, probes, the queue, the last mails.

    Asks the agent over STATE_DIR/control.sock. Exits 69 with one line when no agent runs there.
    """
    from alertmail.control import NoAgent, ask

    try:
        answer = ask(state_dir_of(config_path))
    except NoAgent as exc:
        click.echo(f"alertmail status: {exc}", err=True)
        sys.exit(ExitCode.UNAVAILABLE)
    if as_json:
        click.echo(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        click.echo(render_text(answer))
