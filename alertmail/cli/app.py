"""The ``alertmail`` command line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from alertmail.cli.options import DEFAULT_CONFIG, config_option, load_or_exit, setup_logging
from alertmail.exitcodes import EXIT_CODE_MEANINGS, ExitCode

if TYPE_CHECKING:
    from alertmail.config.load import Config

# Commands that live next to the code they drive, imported only when they are run:
# `alertmail run` then loads neither the replay nor the queue tooling.
LAZY_COMMANDS: dict[str, str] = {
    "probe": "alertmail.cli.probe:probe_command",
    "queue": "alertmail.cli.queue:queue_group",
    "badmail": "alertmail.cli.badmail:badmail_group",
    "send-test": "alertmail.cli.send_test:send_test",
    "replay": "alertmail.cli.replay:replay_command",
    "silence": "alertmail.cli.silence:silence_command",
    "dkim": "alertmail.cli.dkim:dkim_group",
    "status": "alertmail.cli.status:status_command",
}


EXIT_CODES = "\b\nExit codes, the same for every command:\n" + "\n".join(
    f"  {code.value:>2}  {text}" for code, text in EXIT_CODE_MEANINGS.items()
)


class UsageError(click.UsageError):
    """A usage error that exits 64, as the exit-code table says."""

    exit_code = ExitCode.USAGE


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

    # click exits 2 on a usage error; alertmail's table says 64 (sysexits EX_USAGE) for every command.
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise UsageError(exc.format_message(), exc.ctx) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UsageError:
            raise
        except click.UsageError as exc:
            raise UsageError(exc.format_message(), exc.ctx) from None


@click.group(
    cls=AlertmailGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EXIT_CODES,
)
@click.version_option(package_name="alertmail")
def cli() -> None:
    """Watch this machine and mail people when it needs them."""


def _ip(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise click.BadParameter(f"not an IP address: {value!r}; write it as 203.0.113.7 or 2001:db8::7") from None


@cli.command()
@config_option
@click.option(
    "--deliverability",
    is_flag=True,
    help="also look up the sender domain's SPF, DKIM and DMARC and say what receivers will make of the mail",
)
@click.option(
    "--resolver", metavar="HOST:PORT", default=None, help="with --deliverability: ask this DNS server instead of the system's"
)
@click.option("--json", "as_json", is_flag=True, help="print JSON: the problems, or the summary (and the assessment)")
@click.option(
    "--sending-address",
    metavar="ADDRESS",
    multiple=True,
    callback=lambda ctx, param, value: tuple(_ip(v) for v in value),
    help="with --deliverability: an address receivers see the mail come from (the smart host's, or this host's behind NAT);"
    " SPF is evaluated for it",
)
def check(config_path: Path, deliverability: bool, resolver: str | None, as_json: bool, sending_address: tuple[str, ...]) -> None:
    """Validate the configuration; exit 0 when it is good, 78 when not."""
    if as_json and not deliverability:
        _check_json(config_path)
        return
    cfg, plugins = load_or_exit(config_path)
    if plugins.errors:
        # `alertmail plugins` exits 78 on these too: the two commands agree.
        for info in plugins.errors:
            click.echo(f"{config_path}: plugin {info.name} ({info.source}, {info.location}): {info.error}", err=True)
        click.echo(f"{len(plugins.errors)} problem(s) in {config_path}: plugins that do not load", err=True)
        sys.exit(ExitCode.CONFIG)
    from alertmail.cli.deliverability import sender_warning

    for warning in [*cfg.warnings, *sender_warning(str(cfg.path), cfg.mail)]:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"{config_path}: ok ({len(cfg.rules)} rules, route {' -> '.join(cfg.mail.route)})", err=deliverability and as_json)
    if deliverability:
        _deliverability(cfg, resolver, as_json, sending_address)


def _check_json(config_path: Path) -> None:
    """``check --json``: {"ok": true, rules, route} or {"ok": false, "problems": [...]} (exit 78)."""
    import json

    from alertmail.cli.options import load
    from alertmail.config.schema import ConfigError
    from alertmail.loader import PluginError

    report: dict[str, Any] = {"config": str(config_path)}
    try:
        cfg, plugins = load(config_path)
    except ConfigError as exc:
        report.update(ok=False, problems=exc.lines())
    except PluginError as exc:
        report.update(ok=False, problems=[f"plugin error: {exc}"])
    else:
        problems = [f"{config_path}: plugin {i.name} ({i.source}, {i.location}): {i.error}" for i in plugins.errors]
        from alertmail.cli.deliverability import sender_warning

        warnings = [*cfg.warnings, *sender_warning(str(cfg.path), cfg.mail)]
        report.update(ok=not problems, problems=problems, warnings=warnings, rules=len(cfg.rules), route=cfg.mail.route)
    click.echo(json.dumps(report, indent=2))
    if not report["ok"]:
        sys.exit(ExitCode.CONFIG)


def _deliverability(cfg: Config, resolver_address: str | None, as_json: bool, sending_addresses: tuple[str, ...] = ()) -> None:
    import json

    import dns.resolver

    from alertmail.cli import deliverability
    from alertmail.delivery import dkim
    from alertmail.units import parse_address

    if resolver_address:
        host, port = parse_address(resolver_address, 53)
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port = [host], port
    else:
        resolver = dns.resolver.Resolver()
    resolver.lifetime = 10.0
    settings = cfg.section(dkim.SECTION)
    signing = settings if dkim.configured(settings) else None
    try:
        report = deliverability.check(
            cfg.mail.sender,
            cfg.mail.route,
            cfg.transports,
            signing,
            resolver,
            sending_addresses=list(sending_addresses) or None,
            helo=cfg.hostname,
        )
    except LookupError as exc:
        click.echo(f"cannot look up the sender domain's records: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else "\n".join(report.lines()))


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


@cli.command(
    "sendmail",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sendmail_command(args: tuple[str, ...]) -> None:
    """Submit a mail as sendmail(8) does (-t, -i, -f, -F, -bp): for cron, mail(1) and every program that mails."""
    from alertmail.cli.sendmail import main as sendmail

    sys.exit(sendmail(list(args)))


@cli.command()
@config_option
def run(config_path: Path) -> None:
    """Run the agent: probes, rules, mail delivery and enabled services, until SIGTERM."""
    from alertmail import deferssl

    deferssl.import_asyncio()  # OpenSSL loads only once something speaks TLS: 4 MB less when nothing does
    import asyncio

    cfg, plugins = load_or_exit(config_path)
    if any(info.source != "bundled" for info in plugins.infos.values()):
        # A plugin of unknown habits may hand asyncio ssl=True without ever importing ssl itself.
        import ssl  # noqa: F401
    setup_logging(cfg.agent.log_level, cfg.agent.log_format)
    for info in plugins.errors:
        logging.getLogger("alertmail.plugins").error("plugin %s (%s) not loaded: %s", info.name, info.source, info.error)
    from alertmail.agent import Agent, loop_factory
    from alertmail.queue.spool import QueueLocked

    try:
        with asyncio.Runner(loop_factory=loop_factory(cfg, plugins)) as runner:
            runner.run(Agent(cfg, plugins).run_forever())
    except QueueLocked as exc:
        # Another agent (or `alertmail relay`) runs on this state_dir: try again once it has stopped.
        click.echo(f"alertmail: cannot start: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    except OSError as exc:
        click.echo(f"alertmail: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)


@cli.command()
@click.option(
    "--output",
    "-o",
    default=None,
    metavar="FILE",
    help="where to write; - for standard output  [default: config.toml; standard output with --systemd]",
)
@click.option("--force", is_flag=True, help="overwrite an existing file")
@click.option("--systemd", is_flag=True, help="write a systemd unit that runs this alertmail, instead of a config")
@click.option(
    "--sendmail",
    "sendmail",
    is_flag=True,
    help="say how to install alertmail as the host's /usr/sbin/sendmail, and what it replaces",
)
@click.option(
    "--config",
    "-c",
    "unit_config",
    default=None,
    metavar="FILE",
    help="with --systemd or --sendmail: the config the unit or sendmail uses  [default: /etc/alertmail/config.toml]",
)
def init(output: str | None, force: bool, systemd: bool, sendmail: bool, unit_config: str | None) -> None:
    """Write a starter config with rules for this machine's mounts, interfaces and CPUs (or, with --systemd, a unit)."""
    if sendmail:
        _sendmail_instructions(unit_config)
        return
    if systemd:
        from alertmail.cli import systemd as unit_module

        config = str(Path(unit_config).resolve()) if unit_config else unit_module.DEFAULT_CONFIG
        command = unit_module.this_command()
        sandbox, warnings = unit_module.sandbox_fit(unit_module.paths_to_reach(command, config))
        for warning in warnings:
            click.echo(f"warning: {warning}", err=True)
        text = unit_module.unit(command, config, **sandbox)
        target = output or "-"
    else:
        from alertmail.cli.init import starter_config

        text = starter_config()
        target = output or DEFAULT_CONFIG
    if target == "-":
        click.echo(text, nl=False)
        return
    path = Path(target)
    if path.exists() and not force:
        click.echo(f"{path} exists; use --force to overwrite it", err=True)
        sys.exit(ExitCode.USAGE)
    path.write_text(text)
    hint = (
        f"install it with: cp {path} /etc/systemd/system/ && systemctl daemon-reload"
        if systemd
        else f"check it with: alertmail check --config {path}"
    )
    click.echo(f"wrote {path}; {hint}")


def _sendmail_instructions(config_path: str | None) -> None:
    import os
    import subprocess

    from alertmail.cli.init import sendmail_instructions

    config = str(Path(config_path).resolve()) if config_path else os.environ.get("ALERTMAIL_CONFIG") or DEFAULT_SYSTEM_CONFIG
    from alertmail.cli import sendmail as module

    state_dir = "/var/lib/alertmail"
    try:
        from alertmail.config.core import AgentSettings
        from alertmail.config.load import read_toml
        from alertmail.config.schema import Checker

        # Checked as the agent checks it (a mistake is for `alertmail check` to tell): the default is [agent]'s.
        table = Checker(Path(config).resolve().parent).table(
            "agent", read_toml(Path(config)).get("agent") or {}, AgentSettings.options()
        )
        state_dir = str(AgentSettings.from_table(table).state_dir.resolve())
    except Exception:  # no config yet: the instructions name the usual place
        pass
    current = None
    if os.path.lexists("/usr/sbin/sendmail"):
        target = os.path.realpath("/usr/sbin/sendmail")
        current = target
        try:
            owner = subprocess.run(["dpkg-query", "-S", target], check=False, capture_output=True, text=True, timeout=10)
            if owner.returncode == 0:
                current += f" from the package {owner.stdout.split(':', 1)[0].strip()}"
        except (OSError, subprocess.TimeoutExpired):
            pass  # not a Debian system
    click.echo(sendmail_instructions(sys.executable, str(Path(module.__file__).resolve()), config, state_dir, current), nl=False)


DEFAULT_SYSTEM_CONFIG = "/etc/alertmail/config.toml"


def main() -> None:
    cli(prog_name="alertmail")
