"""What every command shares: the one ``--config`` option, loading the config, logging."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

import click

from alertmail.exitcodes import ExitCode

DEFAULT_CONFIG = "config.toml"

config_option = click.option(
    "--config",
    "-c",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=lambda: os.environ.get("ALERTMAIL_CONFIG", DEFAULT_CONFIG),
    show_default="config.toml, or $ALERTMAIL_CONFIG",
    help="configuration file",
)


# syslog priorities, as journald reads them from a "<N>" line prefix.
PRIORITIES = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald stamps the time itself and reads the priority."""

    def format(self, record: logging.LogRecord) -> str:
        priority = PRIORITIES.get(record.levelno, 6)
        text = f"{record.name}: {super().format(record)}"
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers: time (ISO 8601, UTC), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        import datetime as dt
        import json

        line = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def under_journal(stream: TextIO | None = None) -> bool:
    """Is ``stream`` (standard error by default) connected to the journal, as ``JOURNAL_STREAM`` says?"""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Log to standard error: plain text with times, journald's form under systemd, or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif under_journal():
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler])
    # APScheduler logs every job run at INFO; the agent logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def _unchecked_agent(document: dict) -> dict:
    """The ``[agent]`` table of a config file read but not yet checked (the plugins load first)."""
    table = document.get("agent")
    return table if isinstance(table, dict) else {}


def _strings(value: object) -> list[str]:
    """The strings of a list (or the one string) from a config not yet checked; the check reports the rest."""
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str) and "\0" not in v] if isinstance(value, list) else []


def plugin_dirs_of(document: dict, config_path: Path) -> list[Path]:
    """[agent].plugin_dirs of an unchecked config, relative to its file: plugins load before the check."""
    base = config_path.resolve().parent
    return [base / d for d in _strings(_unchecked_agent(document).get("plugin_dirs"))]


def load(config_path: Path, also_declared: Iterable[str] = ()):
    """The validated config and plugins; ConfigError or PluginError when there is a problem.

    ``also_declared``: metrics that count as declared besides the probes' (those of replayed samples).
    """
    from alertmail.config.load import load_config, read_toml
    from alertmail.loader import load_plugins

    document = read_toml(config_path)
    blocked = _strings(_unchecked_agent(document).get("disable_plugins"))
    plugins = load_plugins(plugin_dirs_of(document, config_path), blocked=blocked)
    return load_config(config_path, plugins, also_declared=also_declared), plugins


def load_or_exit(config_path: Path, also_declared: Iterable[str] = ()):
    """The validated config and plugins, or exit 78 printing every problem."""
    from alertmail.config.schema import ConfigError
    from alertmail.loader import PluginError

    try:
        cfg, plugins = load(config_path, also_declared)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{exc.count} problem(s) in {exc.path}; nothing was started.", err=True)
        sys.exit(ExitCode.CONFIG)
    except PluginError as exc:
        click.echo(f"plugin error: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    return cfg, plugins
