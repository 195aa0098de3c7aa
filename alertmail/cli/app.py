"""The ``alertmail`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from alertmail.cli.options import DEFAULT_CONFIG, config_option, load_or_exit, setup_logging
from alertmail.exitcodes import ExitCode

# Commands that live next to the code they drive, imported only when they are run:
# `alertmail run` then loads neither the replay nor the queue tooling.
LAZY_COMMANDS: dict[str, str] = {
    "probe": "alertmail.cli.probe:probe_command",
    "queue": "alertmail.cli.queue:queue_group",
    "badmail": "alertmail.cli.queue:badmail_group",
    "send-test": "alertmail.cli.queue:send_test",
    "replay": "alertmail.cli.replay:replay_command",
    "silence": "alertmail.cli.silence:silence_command",
}


class AlertmailGroup(click.Group):
    """Imports built-in commands on first use and adds plugin commands (``register_commands``) lazily."""

    _plugins_added = False

    def _add_plugin_commands(self) -> None:
        if self._plugins_added:
            return
        self._plugins_added = True
        from alertmail.loader import load_plugins

        try:
            load_plugins().hook.register_commands(cli=self)
        except Exception as exc:  # a broken plugin must not break the CLI
            logging.getLogger("alertmail.plugins").error("register_commands failed: %s", exc)

    def get_command(self, ctx, name):
        command = super().get_command(ctx, name)
        if command is None and name in LAZY_COMMANDS:
            import importlib

            module, _, attr = LAZY_COMMANDS[name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            self.add_command(command, name)
        if command is None:
            self._add_plugin_commands()
            command = super().get_command(ctx, name)
        return command

    def list_commands(self, ctx):
        self._add_plugin_commands()
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})


@click.group(cls=AlertmailGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alertmail")
def cli() -> None:
    """Watch this machine and mail people when it needs them."""


@cli.command()
@config_option
def check(config_path: Path) -> None:
    """Validate the configuration; exit 0 when it is good, 78 when not."""
    cfg, plugins = load_or_exit(config_path)
    if plugins.errors:
        # `alertmail plugins` exits 78 on these too: the two commands agree.
        for info in plugins.errors:
            click.echo(f"{config_path}: plugin {info.name} ({info.source}, {info.location}): {info.error}", err=True)
        click.echo(f"{len(plugins.errors)} problem(s) in {config_path}: plugins that do not load", err=True)
        sys.exit(ExitCode.CONFIG)
    click.echo(f"{config_path}: ok ({len(cfg.rules)} rules, route {' -> '.join(cfg.mail['route'])})")


@cli.command("plugins")
@config_option
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def plugins_command(config_path: Path, as_json: bool) -> None:
    """List loaded plugins with their source, version, probes and transports."""
    from alertmail.cli.options import plugin_dirs_of
    from alertmail.config.load import read_toml
    from alertmail.config.schema import ConfigError
    from alertmail.loader import load_plugins

    dirs: list[Path] = []
    if config_path.exists():
        try:
            dirs = plugin_dirs_of(read_toml(config_path), config_path)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
    plugins = load_plugins(dirs)
    infos = list(plugins.infos.values())
    if as_json:
        import json
        from dataclasses import asdict

        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    from alertmail.cli.table import format_table

    rows = [
        [
            i.name,
            i.source,
            i.version or "-",
            ", ".join(i.probes) or "-",
            ", ".join(i.transports + i.services) or "-",
            i.error or "ok",
        ]
        for i in infos
    ]
    click.echo(format_table(["plugin", "source", "version", "probes", "transports/services", "status"], rows))
    if plugins.errors:
        sys.exit(ExitCode.CONFIG)


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Run the agent: probes, rules, mail delivery and enabled services, until SIGTERM."""
    import asyncio

    cfg, plugins = load_or_exit(config_path)
    setup_logging(cfg.agent["log_level"])
    for info in plugins.errors:
        logging.getLogger("alertmail.plugins").error("plugin %s (%s) not loaded: %s", info.name, info.source, info.error)
    from alertmail.agent import Agent

    try:
        asyncio.run(Agent(cfg, plugins).run_forever())
    except OSError as exc:
        click.echo(f"alertmail: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)


@cli.command()
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG, show_default=True)
@click.option("--force", is_flag=True, help="overwrite an existing file")
def init(output: Path, force: bool) -> None:
    """Write a starter config with rules for this machine's mounts, interfaces and CPUs."""
    from alertmail.cli.init import starter_config

    if output.exists() and not force:
        click.echo(f"{output} exists; use --force to overwrite it", err=True)
        sys.exit(ExitCode.USAGE)
    output.write_text(starter_config())
    click.echo(f"wrote {output}; check it with: alertmail check --config {output}")


def main() -> None:
    cli(prog_name="alertmail")
