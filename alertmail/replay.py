"""Try rules before trusting them: replay recorded samples, record real ones.

``alertmail replay --samples FILE.csv`` runs recorded samples through the rules and
the notifier (grouping, silences, storm cap) on the recorded clock, and prints the
timeline of alert events (with what became of each) and the mails that would have
been sent. No mail leaves: the notifier's queue is a list in memory. ``--render DIR``
writes each mail as ``.eml`` and its HTML part as ``.html`` (charts inlined as
``data:`` URIs so a browser opens it as is).

``alertmail probe --record FILE --for 10m`` writes real samples in the same format.

The CSV format, one sample a line, with a header line::

    timestamp,metric,labels,value
    2026-11-26T14:03:00+01:00,disk.used_percent,mount=/;device=sda1,93.4
    1795698180,cpu.percent,,12.5

``timestamp`` is ISO 8601 (no offset means UTC) or epoch seconds; ``labels`` is
``k=v`` pairs joined by ``;``, with ``%``, ``;`` and ``=`` inside a key or value
written as ``%25``, ``%3B`` and ``%3D``.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import datetime as dt
import email
import email.policy
import email.utils
import itertools
import os
import re
import tempfile
import time
import zoneinfo
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import click

from alertmail.config import format_duration
from alertmail.model import Envelope, Labels, Sample

# Defined here, not imported from alertmail.cli, which imports this module.
config_option = click.option(
    "--config", "-c", "config_path", type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("ALERTMAIL_CONFIG", "config.toml"),
    show_default="config.toml, or $ALERTMAIL_CONFIG", help="configuration file",
)

HEADER = ("timestamp", "metric", "labels", "value")
_SAFE = "/:.,*@+-_ "  # kept readable in label values; only % ; = are escaped


class SampleFileError(ValueError):
    """A line of a samples file that cannot be read; the message names file and line."""


# -- the CSV format ------------------------------------------------------------------


def format_labels(labels: Labels) -> str:
    return ";".join(f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in labels)


def parse_labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"expected labels like \"mount=/;device=sda1\", got {text!r}")
        out[unquote(key)] = unquote(value)
    return out


def parse_timestamp(text: str) -> float:
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"expected ISO 8601 (2026-11-26T14:03:00+01:00) or epoch seconds, got {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def read_samples(path: Path | str) -> list[Sample]:
    """Every sample of a CSV file, sorted by time; SampleFileError names the first bad line."""
    path = Path(path)
    out: list[Sample] = []
    with open(path, newline="", encoding="utf-8") as fh:
        for number, row in enumerate(csv.reader(fh), 1):
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].startswith("#"):
                continue
            if number == 1 and [c.strip().lower() for c in row] == list(HEADER):
                continue
            if len(row) != 4:
                raise SampleFileError(f"{path}:{number}: expected 4 columns {','.join(HEADER)}, got {len(row)}")
            try:
                out.append(Sample(row[1].strip(), float(row[3]), parse_labels(row[2]), parse_timestamp(row[0])))
            except ValueError as exc:
                raise SampleFileError(f"{path}:{number}: {exc}") from None
    out.sort(key=lambda s: s.timestamp)
    return out


class SampleWriter:
    """Appends samples to a CSV file, header first when the file is new."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._fh = open(self.path, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._csv.writerow(HEADER)
        self.count = 0

    def write(self, samples: Iterable[Sample]) -> None:
        for s in samples:
            stamp = dt.datetime.fromtimestamp(s.timestamp, dt.timezone.utc).isoformat(timespec="milliseconds")
            self._csv.writerow((stamp.replace("+00:00", "Z"), s.metric, format_labels(s.labels), repr(s.value)))
            self.count += 1
        self._fh.flush()  # an interrupted recording keeps what it has

    def close(self) -> None:
        self._fh.close()


# -- mails kept in memory --------------------------------------------------------------


@dataclass
class CollectedMail:
    id: str
    data: bytes
    envelope: Envelope

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]

    @property
    def at(self) -> float:
        return email.utils.parsedate_to_datetime(str(self.message["Date"])).timestamp()

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])


class MailCollector:
    """Stands in for the queue: keeps every mail the notifier queues, in order."""

    def __init__(self) -> None:
        self.mails: list[CollectedMail] = []

    async def put(self, data: bytes, envelope: Envelope, *, route: list[str] | None = None, origin: str = "agent") -> str:
        mail = CollectedMail(f"replay-{len(self.mails) + 1:04d}", bytes(data), envelope)
        self.mails.append(mail)
        return mail.id

    def entries(self) -> list[Any]:
        return []


# -- the replay --------------------------------------------------------------------------


@dataclass
class Replay:
    """What a replay produced: the journal lines (events and their fate) and the mails."""

    samples: int
    timeline: list[dict[str, Any]] = field(default_factory=list)
    mails: list[CollectedMail] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        """The alert events the rules produced, each once (not its release or digest line)."""
        return [line for line in self.timeline
                if "mail" not in line and (line["fate"] == "notified" or line["fate"].startswith("silenced"))]


async def replay(
    samples: Sequence[Sample],
    rules: Sequence[Any],
    *,
    silences: Any = None,
    group_wait: float = 0.0,
    max_mails_per_hour: int = 0,
    digest_interval: float = 900.0,
    sender: str = "alertmail@localhost",
    hostname: str = "replay",
    timezone: str = "UTC",
    subject_prefix: str = "",
    tick: float = 1.0,
    charts: bool = False,
    state_dir: Path | None = None,
) -> Replay:
    """Run ``samples`` (sorted by time) through ``rules`` and a notifier on the recorded clock.

    Between samples the engine and the notifier are ticked every ``tick`` seconds, as
    the agent does, so reminders, absent series, group waits, digests and the ends of
    silences happen at their times. After the last sample, what still waits (groups,
    digests) is flushed at its due time. ``state_dir`` (default: a temporary folder)
    receives the notifier's incident files and journal.
    """
    from alertmail.history import History
    from alertmail.notifier import Notifier
    from alertmail.rules import RuleEngine
    from alertmail.silences import SilenceSet

    if tick <= 0:
        raise ValueError("tick must be longer than 0s")
    with tempfile.TemporaryDirectory(prefix="alertmail-replay-") as tmp:
        folder = Path(state_dir) if state_dir is not None else Path(tmp)
        engine = RuleEngine(rules)
        history = History()
        collector = MailCollector()
        notifier = Notifier(
            sender=sender, hostname=hostname, timezone=timezone, route=["replay"], queue=collector,
            state_dir=folder, history=history.get, group_wait=group_wait, subject_prefix=subject_prefix,
            silences=silences if silences is not None else SilenceSet(), max_mails_per_hour=max_mails_per_hour,
            digest_interval=digest_interval, rules=rules,
            # A replay is a short-lived command: draw charts in this process, loading matplotlib once.
            render_options={"charts": "in-process" if charts else "off"}, durable=False,
        )

        async def step(now: float) -> None:
            events = engine.tick(now)
            if events:
                await notifier.notify(events, now)
            await notifier.flush(now)

        clock: float | None = None
        for ts, group in itertools.groupby(samples, key=lambda s: s.timestamp):
            batch = list(group)
            if clock is not None:
                t = clock + tick
                while t < ts:
                    await step(t)
                    t += tick
            history.add(s for s in batch if any(rule.matches(s) for rule in rules))
            events = engine.observe(batch, ts)
            await notifier.notify(events, ts)
            await step(ts)
            clock = ts
        for _ in range(100_000):  # drain: every wait ends, bounded in case a digest keeps coming
            due = notifier.next_flush
            if due is None:
                break
            await notifier.flush(max(due, clock or due))
            clock = max(due, clock or due)
        timeline = notifier.journal.read()
        return Replay(len(samples), timeline, list(collector.mails))


# -- rendering files ---------------------------------------------------------------------

_CID = re.compile(r"""(["'(])cid:([^"')\s]+)""")


def html_with_data_uris(message: EmailMessage) -> str | None:
    """The HTML part of ``message`` with each ``cid:`` image replaced by a ``data:`` URI."""
    part = message.get_body(preferencelist=("html",))
    if part is None:
        return None
    images = {}
    for sub in message.walk():
        cid = sub.get("Content-ID")
        if cid and sub.get_content_maintype() == "image":
            data = sub.get_payload(decode=True) or b""
            images[str(cid).strip("<>")] = f"data:{sub.get_content_type()};base64,{base64.b64encode(data).decode()}"
    html = part.get_content()
    return _CID.sub(lambda m: m.group(1) + images.get(m.group(2), f"cid:{m.group(2)}"), html)


def write_mail_files(mails: Sequence[CollectedMail], folder: Path) -> list[Path]:
    """``NNN-kind.eml`` and ``NNN-kind.html`` per mail (text in <pre> when a mail has no HTML)."""
    import html as html_mod

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for n, mail in enumerate(mails, 1):
        msg = mail.message
        kind = re.sub(r"[^a-z0-9-]+", "-", str(msg.get("X-Alertmail-Kind", "mail")).lower()).strip("-") or "mail"
        stem = folder / f"{n:03d}-{kind}"
        stem.with_suffix(".eml").write_bytes(mail.data)
        page = html_with_data_uris(msg)
        if page is None:
            body = msg.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            page = (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html_mod.escape(mail.subject)}</title>"
                    f"</head><body><pre>{html_mod.escape(text)}</pre></body></html>")
        stem.with_suffix(".html").write_text(page, encoding="utf-8")
        written += [stem.with_suffix(".eml"), stem.with_suffix(".html")]
    return written


# -- recording -----------------------------------------------------------------------------


async def record(probes: dict[str, Any], intervals: dict[str, float], timeouts: dict[str, float],
                 writer: SampleWriter, duration: float, *, echo: Any = None) -> int:
    """Run each probe at its own interval for ``duration`` seconds, appending samples; the count written."""
    from alertmail.probing import run_probe

    start = time.monotonic()
    next_run = {name: start for name in probes}
    while True:
        now = time.monotonic()
        if now - start >= duration:
            break
        due = [name for name, at in next_run.items() if at <= now]
        runs = await asyncio.gather(*(run_probe(probes[name], timeouts[name]) for name in due))
        for name, run in zip(due, runs):
            writer.write(run.samples)
            next_run[name] = max(next_run[name] + intervals[name], time.monotonic())
            if run.error and echo is not None:
                echo(run.error)
        wait = min(next_run.values()) - time.monotonic()
        remaining = duration - (time.monotonic() - start)
        if remaining <= 0:
            break
        await asyncio.sleep(max(0.0, min(wait, remaining)))
    return writer.count


# -- the command line ------------------------------------------------------------------------


def _rules_file(path: Path, default_to: Sequence[str]) -> list[Any]:
    from alertmail.config import Checker, ConfigError, read_toml
    from alertmail.rules import rules_from_config

    raw = read_toml(path)
    check = Checker(path.resolve().parent)
    rules = rules_from_config(raw.get("rules", []), check, default_to=default_to)
    if check.problems:
        raise ConfigError(path, check.problems)
    if not rules:
        raise ConfigError(path, ["no [[rules]] in this file"])
    return rules


def _timeline_lines(result: Replay, timezone: str) -> list[str]:
    """One row per alert event and per release; a digest is noted on the rows of the events it carries."""
    from alertmail.render import format_value
    from alertmail.table import format_table

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
@click.option("--samples", "samples_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of timestamp,metric,labels,value (as `alertmail probe --record` writes)")
@click.option("--rules", "rules_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file with [[rules]] to try instead of the config's")
@click.option("--render", "render_dir", type=click.Path(file_okay=False, path_type=Path),
              help="write each mail as NNN-kind.eml and NNN-kind.html into this folder")
@click.option("--tick", default="1s", show_default=True, help="step of the recorded clock between samples")
@click.pass_context
def replay_command(ctx: click.Context, config_path: Path, samples_path: Path, rules_path: Path | None,
                   render_dir: Path | None, tick: str) -> None:
    """Run recorded samples through the rules; print the alert timeline and the mails that would go out."""
    from alertmail.cli import load_or_exit
    from alertmail.config import ConfigError, parse_duration
    from alertmail.exitcodes import ExitCode
    from alertmail.silences import SilenceSet, from_config

    explicit = ctx.get_parameter_source("config_path") is not click.core.ParameterSource.DEFAULT
    cfg = None
    if explicit or config_path.exists():
        cfg, _ = load_or_exit(config_path)
    elif rules_path is None:
        click.echo(f"no {config_path}: pass --config or --rules", err=True)
        raise SystemExit(ExitCode.USAGE)
    try:
        step = parse_duration(tick)
        samples = read_samples(samples_path)
        default_to = (cfg.mail["to"] if cfg else None) or ["root@localhost"]
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
    notify = cfg.sections.get("notify", {}) if cfg else {}
    timezone = cfg.agent["timezone"] if cfg else "UTC"
    result = asyncio.run(replay(
        samples, rules,
        silences=SilenceSet(from_config(cfg).config_silences) if cfg else None,
        group_wait=notify.get("group_wait") or 0.0,
        max_mails_per_hour=notify.get("max_mails_per_hour") or 0,
        digest_interval=notify.get("digest_interval") or 900.0,
        sender=cfg.mail["from"] if cfg else "alertmail@localhost",
        hostname=cfg.hostname if cfg else "replay",
        timezone=timezone,
        subject_prefix=(cfg.mail.get("subject_prefix") or "") if cfg else "",
        tick=step,
        charts=render_dir is not None,
    ))
    first, last = samples[0].timestamp, samples[-1].timestamp
    click.echo(f"{len(samples)} samples over {format_duration(last - first)}, {len(rules)} rules, "
               f"{len(result.events)} alert events, {len(result.mails)} mails")
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


def record_to_file(path: Path, probes: dict[str, Any], settings: dict[str, Any], duration_text: str) -> None:
    """``alertmail probe --record FILE --for DURATION``: the probes (configured already) at their intervals."""
    from alertmail.config import parse_duration
    from alertmail.exitcodes import ExitCode

    try:
        duration = parse_duration(duration_text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--for") from None
    if not probes:
        click.echo("no probe is enabled; nothing to record", err=True)
        raise SystemExit(ExitCode.USAGE)
    writer = SampleWriter(path)
    click.echo(f"recording {', '.join(probes)} into {path} for {format_duration(duration)} (Ctrl-C stops early)", err=True)
    try:
        asyncio.run(record(
            probes, {n: settings[n].interval for n in probes}, {n: settings[n].timeout for n in probes},
            writer, duration, echo=lambda text: click.echo(f"warning: {text}", err=True),
        ))
    except KeyboardInterrupt:
        pass
    finally:
        writer.close()
    click.echo(f"{writer.count} samples written to {path}; try them with: alertmail replay --samples {path}", err=True)
