"""What every command shares: the one ``--config`` option, loading the config, logging."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

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


def setup_logging(level: str = "info") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # APScheduler logs every job run at INFO; the agent logs what matters itself.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def load_or_exit(config_path: Path):
    """The validated config and plugins, or exit 78 printing every problem."""
    from alertmail.config.load import load_config, read_toml
    from alertmail.config.schema import ConfigError
    from alertmail.loader import PluginError, load_plugins

    try:
        raw = read_toml(config_path)
        agent = raw.get("agent", {}) if isinstance(raw.get("agent"), dict) else {}
        dirs = agent.get("plugin_dirs", [])
        dirs = [dirs] if isinstance(dirs, str) else [d for d in dirs if isinstance(d, str)] if isinstance(dirs, list) else []
        base = config_path.resolve().parent
        blocked = agent.get("disable_plugins", [])
        plugins = load_plugins([base / d for d in dirs], blocked=blocked if isinstance(blocked, list) else ())
        cfg = load_config(config_path, plugins)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        click.echo(f"{len(exc.problems)} problem(s) in {exc.path}; nothing was started.", err=True)
        sys.exit(ExitCode.CONFIG)
    except PluginError as exc:
        click.echo(f"plugin error: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    return cfg, plugins
