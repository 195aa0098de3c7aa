"""``alertmail silence add | list | remove``: run-time silences in ``state_dir/silences.toml``."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path

import click

from alertmail.cli.options import config_option
from alertmail.notify.runtime_silences import RuntimeSilences
from alertmail.notify.silences import SECTION as SILENCES
from alertmail.notify.silences import config_silences
from alertmail.units import parse_duration


def _parse_label_options(values: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values:
        for part in filter(None, (p.strip() for p in value.split(","))):
            key, sep, pattern = part.partition("=")
            if not sep or not key.strip():
                raise click.BadParameter(f"expected k=v (or k=v,k2=v2), got {part!r}", param_hint="--labels")
            if any(c in part for c in "\r\n"):
                raise click.BadParameter("no line breaks in labels", param_hint="--labels")
            out[key.strip()] = pattern.strip()
    return out


@click.group("silence")
def silence_command() -> None:
    """Silence alerts at run time: add, list, remove (kept in state_dir/silences.toml)."""


@silence_command.command("add")
@config_option
@click.option("--rule", "rule", default=None, help='rule name or glob, e.g. "disk-*"')
@click.option("--labels", "labels", multiple=True, metavar="K=V[,K=V]", help="label matchers, exact or glob; repeatable")
@click.option("--severity", "severity", multiple=True, help="only this severity; repeatable")
@click.option("--for", "duration", required=True, metavar="DURATION", help='how long, e.g. "2h", "30m", "1d"')
@click.option("--comment", default="", help="why; shown in `silence list` and the heartbeat")
def silence_add(
    config_path: Path, rule: str | None, labels: Sequence[str], severity: Sequence[str], duration: str, comment: str
) -> None:
    """Silence matching alerts from now for --for; prints the new silence's id."""
    import getpass
    import time

    from alertmail.cli.options import load_or_exit
    from alertmail.exitcodes import ExitCode

    try:
        seconds = parse_duration(duration)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    if seconds <= 0:
        raise click.BadParameter("must be longer than 0s", param_hint="--for")
    matchers = _parse_label_options(labels)
    if rule is None and not matchers and not severity:
        click.echo("give at least one of --rule, --labels, --severity (--rule '*' silences every alert)", err=True)
        raise SystemExit(ExitCode.USAGE)
    if any(c in (comment + (rule or "")) for c in "\r\n"):
        raise click.BadParameter("no line breaks in --rule or --comment")
    cfg, _ = load_or_exit(config_path)
    rule = rule or "*"
    if cfg.rules and not any(fnmatchcase(r.name, rule) for r in cfg.rules):
        click.echo(f"warning: no configured rule matches {rule!r}; the silence is added anyway", err=True)
    try:
        author = getpass.getuser()
    except Exception:
        author = ""
    silence = RuntimeSilences(cfg.state_dir).add(
        duration=seconds,
        rule=rule,
        labels=matchers,
        severity=tuple(severity),
        comment=comment,
        author=author,
        now=time.time(),
    )
    click.echo(f"{silence.id}  {silence.describe_matchers()}  {silence.schedule.describe(cfg.agent.timezone)}")


@silence_command.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def silence_list(config_path: Path, as_json: bool) -> None:
    """List the silences from the config and the run-time ones, and whether each is in force now."""
    import json
    import time

    from alertmail.cli.options import load_or_exit
    from alertmail.cli.table import format_table
    from alertmail.exitcodes import ExitCode

    cfg, _ = load_or_exit(config_path)
    now = time.time()
    tz = cfg.agent.timezone
    runtime = RuntimeSilences(cfg.state_dir)
    try:
        try:
            runtime.prune(now=now)
        except PermissionError:
            pass  # a reader without write access still gets the list; the agent prunes
        current = [s for s in runtime.read() if not s.schedule.expired(now)]
        silences = [*config_silences(cfg.tables(SILENCES), default_tz=tz), *current]
    except (ValueError, OSError) as exc:
        click.echo(f"alertmail: {exc}", err=True)
        raise SystemExit(ExitCode.CONFIG) from None
    rows = [
        {
            "id": s.id,
            "source": s.source,
            "active": s.schedule.active(now),
            "matchers": s.describe_matchers(),
            "schedule": s.schedule.describe(tz),
            "comment": s.comment,
            "author": s.author,
        }
        for s in silences
    ]
    if as_json:
        from alertmail.cli.queue import iso

        for row, s in zip(rows, silences):
            # A fixed span (a run-time silence) has its start and end; a weekly or cron schedule has neither.
            row["starts"] = iso(getattr(s.schedule, "starts", None))
            row["ends"] = iso(getattr(s.schedule, "ends", None))
        click.echo(json.dumps(rows, indent=2))
    elif not rows:
        click.echo("no silences")
    else:
        click.echo(
            format_table(
                ["id", "source", "now", "matchers", "schedule", "comment"],
                [
                    [r["id"], r["source"], "active" if r["active"] else "-", r["matchers"], r["schedule"], r["comment"]]
                    for r in rows
                ],
            )
        )


@silence_command.command("remove")
@config_option
@click.argument("silence_id")
def silence_remove(config_path: Path, silence_id: str) -> None:
    """Remove a run-time silence by its id (config silences are removed from the config)."""
    import time

    from alertmail.cli.options import load_or_exit
    from alertmail.exitcodes import ExitCode

    cfg, _ = load_or_exit(config_path)
    if silence_id.startswith("config-"):
        click.echo(f"{silence_id} comes from [[silences]] in {cfg.path}; remove it there", err=True)
        raise SystemExit(ExitCode.USAGE)
    if not RuntimeSilences(cfg.state_dir).remove(silence_id, now=time.time()):
        click.echo(f"no run-time silence {silence_id!r}; see `alertmail silence list`", err=True)
        raise SystemExit(ExitCode.USAGE)
    click.echo(f"removed {silence_id}")
