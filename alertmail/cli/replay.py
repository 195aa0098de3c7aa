"""``alertmail replay``: recorded samples through the rules, the timeline and the mails."""

from __future__ import annotations

import asyncio
import datetime as dt
import sys
import zoneinfo
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from alertmail.cli.options import config_option
from alertmail.probes.samples import SampleWriter, read_samples, record
from alertmail.replay import Replay, replay, write_mail_files
from alertmail.units import format_duration

# -- the command line ------------------------------------------------------------------------


def _rules_file(path: Path, default_to: Sequence[str]) -> list[Any]:
    from alertmail.config.load import read_toml
    from alertmail.config.schema import Checker, ConfigError
    from alertmail.rules.config import rules_from_config

    document = read_toml(path)
    check = Checker(path.resolve().parent)
    rules = rules_from_config(document.get("rules", []), check, default_to=default_to)
    if check.problems:
        raise ConfigError(path, check.problems)
    if not rules:
        raise ConfigError(path, ["no [[rules]] in this file"])
    return rules


def _print_json(result: Replay, samples: int, rules: int, render_dir: Path | None) -> None:
    """The replay for scripts: the timeline lines as the journal writes them, and the mails."""
    import json

    from alertmail.cli.queue import iso

    files = [str(p) for p in write_mail_files(result.mails, render_dir)] if render_dir is not None else []
    report = {
        "samples": samples,
        "rules": rules,
        "timeline": [{**line, "t": iso(line.get("t"))} for line in result.timeline],
        "mails": [{"id": m.id, "at": iso(m.at), "to": list(m.envelope.recipients), "subject": m.subject} for m in result.mails],
        "files": files,
    }
    click.echo(json.dumps(report, indent=2, default=str))


def _timeline_lines(result: Replay, timezone: str) -> list[str]:
    """One row per alert event and per release; a digest is noted on the rows of the events it carries."""
    from alertmail.cli.table import format_table
    from alertmail.render.format import format_value

    zone = zoneinfo.ZoneInfo(timezone)

    def clock(t: float, fmt: str = "%Y-%m-%d %H:%M:%S %Z") -> str:
        return dt.datetime.fromtimestamp(t, zone).strftime(fmt)

    rows: list[list[str]] = []
    by_event: dict[tuple[str, str, float], list[str]] = {}
    for line in result.timeline:
        if "mail" in line:
            continue
        fate = str(line.get("fate", ""))
        key = (line.get("incident", ""), line["kind"], line.get("at", line["t"]))
        if fate.startswith("digest:") and key in by_event:
            by_event[key][-1] += f", in the digest to {fate[7:]} at {clock(line['t'], '%H:%M:%S')}"
            continue
        labels = ",".join(f"{k}={v}" for k, v in sorted(line.get("labels", {}).items())) or "-"
        row = [clock(line["t"]), line["kind"], line["rule"], labels, format_value(line.get("value")), fate]
        by_event[key] = row
        rows.append(row)
    if not rows:
        return ["no alert events"]
    return format_table(["time", "event", "rule", "labels", "value", "fate"], rows).splitlines()


@click.command("replay")
@config_option
@click.option(
    "--samples",
    "samples_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="CSV of timestamp,metric,labels,value (as `alertmail probe --record` writes)",
)
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file with [[rules]] to try instead of the config's",
)
@click.option(
    "--render",
    "render_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="write each mail as NNN-kind.eml and NNN-kind.html into this folder",
)
@click.option("--tick", default="1s", show_default=True, help="step of the recorded clock between samples")
@click.option("--json", "as_json", is_flag=True, help="print JSON: the timeline and the mails (times in ISO 8601)")
@click.pass_context
def replay_command(
    ctx: click.Context,
    config_path: Path,
    samples_path: Path,
    rules_path: Path | None,
    render_dir: Path | None,
    tick: str,
    as_json: bool,
) -> None:
    """Run recorded samples through the rules; print the alert timeline and the mails that would go out."""
    from alertmail.agent import render_options
    from alertmail.cli.options import load_or_exit
    from alertmail.config.core import AgentSettings, MailSettings
    from alertmail.config.schema import ConfigError
    from alertmail.exitcodes import ExitCode
    from alertmail.notify.notifier import SECTION as NOTIFY
    from alertmail.notify.notifier import NotifySettings
    from alertmail.notify.runtime_silences import in_force
    from alertmail.notify.silences import SECTION as SILENCES
    from alertmail.units import parse_duration

    explicit = ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT
    cfg = plugins = None
    if not (explicit or config_path.exists()) and rules_path is None:
        click.echo(f"no {config_path}: pass --config or --rules", err=True)
        raise SystemExit(ExitCode.USAGE)
    try:
        step = parse_duration(tick)
        samples = read_samples(samples_path)
    except ValueError as exc:
        click.echo(f"alertmail: {exc}", err=True)
        raise SystemExit(ExitCode.USAGE) from None
    if explicit or config_path.exists():
        # The recording is the source here: a rule on a metric it holds is not a rule on nothing.
        cfg, plugins = load_or_exit(config_path, also_declared={s.metric for s in samples})
    try:
        default_to = (cfg.mail.to if cfg else None) or ["root@localhost"]
        rules = _rules_file(rules_path, default_to) if rules_path else cfg.rules  # type: ignore[union-attr]
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        raise SystemExit(ExitCode.CONFIG) from None
    except ValueError as exc:
        click.echo(f"alertmail: {exc}", err=True)
        raise SystemExit(ExitCode.USAGE) from None
    if not samples:
        click.echo(f"{samples_path}: no samples", err=True)
        raise SystemExit(ExitCode.USAGE)
    # Without a config, each section is as a config without its table has it: the declared defaults.
    agent = cfg.agent if cfg else AgentSettings()
    timezone = agent.timezone
    result = asyncio.run(
        replay(
            samples,
            rules,
            notify=cfg.section(NOTIFY) if cfg else NotifySettings(),
            mail=cfg.mail if cfg else MailSettings(),
            # The config's silences, not the run-time ones of an agent that may be running.
            silences=in_force(cfg.tables(SILENCES), timezone=timezone) if cfg else None,
            hostname=cfg.hostname if cfg else "replay",
            timezone=timezone,
            tick=step,
            charts=render_dir is not None,
            render_options=render_options(cfg, plugins) if cfg else None,
        )
    )
    first, last = samples[0].timestamp, samples[-1].timestamp
    if as_json:
        _print_json(result, len(samples), len(rules), render_dir)
        return
    click.echo(
        f"{len(samples)} samples over {format_duration(last - first)}, {len(rules)} rules, "
        f"{len(result.events)} alert events, {len(result.mails)} mails"
    )
    click.echo()
    for line in _timeline_lines(result, timezone):
        click.echo(line)
    click.echo()
    zone = zoneinfo.ZoneInfo(timezone)
    for n, mail in enumerate(result.mails, 1):
        when = dt.datetime.fromtimestamp(mail.at, zone).strftime("%Y-%m-%d %H:%M:%S %Z")
        click.echo(f"mail {n:3d}  {when}  to {', '.join(mail.envelope.recipients)}")
        click.echo(f"          {mail.subject}")
    if render_dir is not None:
        written = write_mail_files(result.mails, render_dir)
        click.echo(f"\nwrote {len(written)} files to {render_dir}")


class Progress:
    """One line on standard error, rewritten in place on a terminal (a line every 10% into a file)."""

    def __init__(self, duration: float) -> None:
        self.duration = max(duration, 0.001)
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def update(self, elapsed: float, count: int) -> None:
        percent = min(int(100 * elapsed / self.duration), 100)
        if not self.tty and percent // 10 == self.shown // 10:
            return
        self.shown = percent
        line = f"recording: {percent:3d}%  {format_duration(elapsed)} of {format_duration(self.duration)}, {count} samples"
        click.echo(f"\r{line}" if self.tty else line, err=True, nl=not self.tty)

    def done(self) -> None:
        if self.tty and self.shown >= 0:
            click.echo(err=True)


def record_to_file(
    path: Path,
    probes: dict[str, Any],
    intervals: dict[str, float],
    timeouts: dict[str, float],
    duration_text: str,
    config_path: Path | None = None,
) -> None:
    """``alertmail probe --record FILE --for DURATION``: the probes (configured already) at their intervals,
    each run bounded by its timeout."""
    from alertmail.exitcodes import ExitCode
    from alertmail.units import parse_duration

    try:
        duration = parse_duration(duration_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    if not probes:
        click.echo("no probe is enabled; nothing to record", err=True)
        raise SystemExit(ExitCode.USAGE)
    writer = SampleWriter(path)
    shown = Progress(duration)
    click.echo(f"recording {', '.join(probes)} into {path} for {format_duration(duration)} (Ctrl-C stops early)", err=True)
    # The 0% line now, not after the first round of probe runs: a slow first run (a busy
    # machine, a probe near its timeout) took more than a tenth of a short recording, and
    # the progress then began at 10% or later.
    shown.update(0.0, 0)
    try:
        asyncio.run(
            record(
                probes,
                intervals,
                timeouts,
                writer,
                duration,
                echo=lambda text: click.echo(f"warning: {text}", err=True),
                progress=shown.update,
            )
        )
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
        shown.done()
    config = f" -c {config_path}" if config_path is not None else ""
    click.echo(f"{writer.count} samples written to {path}; try them with: alertmail replay{config} --samples {path}", err=True)
