"""The bundled relay: a local SMTP service and a pickup folder feeding alertmail's queue.

The modern form of the IIS SMTP virtual server: applications on the host hand mail to
``[relay].listen`` (or drop files into ``state_dir/pickup``); it is made durable in the
queue before the client hears 250, then delivered through ``[relay].route``.

    [relay]
    enabled = true                        # start with `alertmail run`
    listen = ["127.0.0.1:2525", "[::1]:2525"]
    hostname = "web01.example.com"        # banner, EHLO, Received; default [agent].hostname
    allow = ["127.0.0.0/8", "::1"]        # may relay without AUTH
    users_file = "relay-users"            # user:scrypt$... lines; AUTH only over TLS
    tls_cert = "tls/cert.pem"
    tls_key = "tls/key.pem"
    require_tls = false
    max_size = "10MB"
    route = ["mx"]                        # how relayed mail leaves; needs [transports.mx]
    workers = "auto"                      # receiving processes: cores - 1 (at least 1); 0 = in the agent's process

The agent's process delivers; ``workers`` processes receive (``receivers.py``), each
committing to the same queue folder, so a busy relay uses every core. This module is
what the plugin loader imports, so it stays light: aiosmtpd and the listener are
imported only when the service starts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click

from alertmail import AlertmailError, Checker, ServiceContext, Settings, config_option, hookimpl, parse_address
from alertmail.intake import Attempts, ConfigView, LoopUnavailable, listen_problem, loop_factory, valid_hostname, value_of
from alertmail.plugins.relay.settings import RelaySettings

if TYPE_CHECKING:
    from alertmail import DeliveryResult, Envelope
    from alertmail.intake import OutboxConfig, QueuedMessage
    from alertmail.plugins.relay.listener import RelayServer
    from alertmail.plugins.relay.policy import RelayPolicy
    from alertmail.plugins.relay.receivers import Receivers
    from alertmail.plugins.relay.w3c import W3CLog
    from alertmail.plugins.relay.watcher import PickupWatcher

log = logging.getLogger("alertmail.relay")


class RelayConfigError(AlertmailError, ValueError):
    """The [relay] table cannot work as written (the message names the key and the fix)."""


# Least value of the numeric options (the schema checks only their kind).
MINIMUMS: dict[str, tuple[float, str]] = {
    "max_size": (1, "at least 1 byte"),
    "max_recipients": (1, "at least 1"),
    "max_commands": (1, "at least 1"),
    "max_connections": (1, "at least 1"),
    "max_connections_per_client": (1, "at least 1"),
    "reserved_connections": (0, "0 or more"),
    "ipv6_prefix": (1, "between 1 and 128"),
    "max_session_time": (0.001, "more than 0"),
    "max_auth_failures": (1, "at least 1"),
    "max_auth_warnings": (0, "0 or more"),
    "rate_window": (0.001, "more than 0"),
    "pickup_interval": (0.001, "more than 0"),
    "greet_pause": (0, "0 or more"),
    "timeout": (0.001, "more than 0"),
    "stop_timeout": (0, "0 or more"),
}


def reserved_connections(settings: RelaySettings) -> int:
    """``reserved_connections`` as set, else a sixth of ``max_connections`` (50 of 300)."""
    reserved = settings.reserved_connections
    return settings.max_connections // 6 if reserved is None else reserved


def check_options(settings: RelaySettings, check: Checker, cfg: ConfigView) -> None:  # noqa: C901  a list of independent checks, one per key
    """What ``alertmail run`` would stumble on in ``[relay]``, reported by ``alertmail check``.

    Checked when the config has a ``[relay]`` table (without one the relay does not run).
    """
    if RelayService.section not in cfg.raw:
        return
    from alertmail.plugins.relay.policy import parse_networks

    for name, (least, words) in MINIMUMS.items():
        value = getattr(settings, name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < least:
            check.error(f"relay.{name}", f"must be {words}, got {value!r}")
    if settings.ipv6_prefix > 128:
        check.error("relay.ipv6_prefix", f"must be between 1 and 128, got {settings.ipv6_prefix}")
    reserved, most = settings.reserved_connections, settings.max_connections
    if reserved is not None and reserved >= most >= 1:
        check.error(
            "relay.reserved_connections",
            f"must be less than max_connections ({most}), or clients outside `allow` never get a session; "
            "lower it or raise max_connections",
        )
    try:
        worker_count(settings.workers)
    except RelayConfigError as exc:
        check.error("relay.workers", str(exc).partition(": ")[2])
    for i, item in enumerate(settings.listen):
        try:
            problem = listen_problem(item)
        except ValueError as exc:
            hint = ' (IPv6 goes in brackets: "[::1]:2525")' if item.count(":") > 1 and not item.startswith("[") else ""
            check.error(f"relay.listen[{i}]", f"{exc}{hint}")
        else:
            if problem:
                check.error(f"relay.listen[{i}]", problem)
    for i, domain in enumerate(settings.local_domains):
        if not valid_hostname(domain) or domain.startswith("["):
            check.error(f"relay.local_domains[{i}]", f"not a domain: {domain!r}; write it like example.com")
    hostname = settings.hostname
    if hostname and not valid_hostname(hostname):
        check.error(
            "relay.hostname", f"not a host name: {hostname!r}; it goes into the banner and EHLO: write it like mx.example.com"
        )
    for i, item in enumerate(settings.allow):
        try:
            parse_networks([item])
        except ValueError as exc:
            check.error(f"relay.allow[{i}]", str(exc))
    cert, key = settings.tls_cert, settings.tls_key
    for name, path in (("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.access(path, os.R_OK):
            check.error(
                f"relay.{name}", f"cannot read {path}: {'no such file' if not Path(path).exists() else 'permission denied'}"
            )
    if bool(cert) != bool(key):
        check.error(f"relay.{'tls_key' if cert else 'tls_cert'}", "tls_cert and tls_key go together; set both")
    elif cert and key and os.access(cert, os.R_OK) and os.access(key, os.R_OK):
        import ssl  # here, not at the top: an agent with the relay off never loads OpenSSL

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(str(cert), str(key))
        except (ssl.SSLError, OSError) as exc:
            check.error("relay.tls_cert", f"cannot load {cert} with {key}: {exc}")
    if settings.require_tls and not (cert and key):
        check.error("relay.require_tls", "needs relay.tls_cert and relay.tls_key")
    if settings.users_file:
        from alertmail.plugins.relay.users import Users, UsersFileError

        if not (cert and key):
            check.error("relay.users_file", "AUTH is offered only over TLS; set tls_cert and tls_key")
        try:
            Users.load(settings.users_file)
        except (OSError, UsersFileError) as exc:
            check.error("relay.users_file", str(exc))
    for keypath, message in read_local_recipients(settings)[1]:
        check.error(keypath, message)
    try:
        check_route(cfg.transports, settings.route, Path(cfg.state_dir))
    except RelayConfigError as exc:
        keypath, _, message = str(exc).partition(": ")
        check.error(keypath, message)


class RelayService:
    """The SMTP listener and the pickup watcher, started with the agent when ``[relay].enabled``."""

    name: ClassVar[str] = "relay"
    section: ClassVar[str] = "relay"
    options: ClassVar[type[RelaySettings]] = RelaySettings
    check = staticmethod(check_options)

    def __init__(self) -> None:
        self.server: RelayServer | None = None  # when the agent's process receives (workers = 0)
        self.receivers: Receivers | None = None  # the receiving processes
        self.pickup: PickupWatcher | None = None
        self.w3c: W3CLog | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._delivery: Attempts | None = None
        self._stop_timeout = RelaySettings().stop_timeout

    async def start(self, context: ServiceContext[RelaySettings]) -> None:
        from alertmail import __version__
        from alertmail.intake import Badmail
        from alertmail.plugins.relay.data import FOLDER as DATA_FOLDER
        from alertmail.plugins.relay.listener import RelayServer, tls_context
        from alertmail.plugins.relay.policy import RelayPolicy, parse_networks
        from alertmail.plugins.relay.users import Users, UsersFileError
        from alertmail.plugins.relay.w3c import W3CLog
        from alertmail.plugins.relay.watcher import PickupWatcher

        settings = context.options
        state_dir = Path(context.state_dir)
        hostname = settings.hostname or context.hostname
        route = list(settings.route)
        check_route(context.config.transports, route, state_dir)
        try:
            listen = [parse_address(a) for a in settings.listen]
            allow = parse_networks(settings.allow)
        except ValueError as exc:
            raise RelayConfigError(f"relay.listen / relay.allow: {exc}") from None
        tls = None
        if settings.tls_cert or settings.tls_key:
            if not (settings.tls_cert and settings.tls_key):
                raise RelayConfigError("relay.tls_cert and relay.tls_key go together; set both")
            tls = tls_context(str(settings.tls_cert), str(settings.tls_key))
        if settings.require_tls and tls is None:
            raise RelayConfigError("relay.require_tls needs relay.tls_cert and relay.tls_key")
        users = None
        if settings.users_file:
            if tls is None:
                raise RelayConfigError("relay.users_file: AUTH is offered only over TLS; set tls_cert and tls_key")
            try:
                users = Users.load(settings.users_file)
            except (OSError, UsersFileError) as exc:
                raise RelayConfigError(f"relay.users_file: {exc}") from None
        local_recipients, problems = read_local_recipients(settings)
        if problems:
            raise RelayConfigError(f"{problems[0][0]}: {problems[0][1]}")
        # aiosmtpd logs every command line at INFO (AUTH PLAIN data included): keep it quiet.
        logging.getLogger("mail.log").setLevel(logging.ERROR)
        policy = RelayPolicy(
            hostname=hostname,
            allow=allow,
            users=users,
            local_domains=frozenset(d.lower().rstrip(".") for d in settings.local_domains),
            local_recipients=local_recipients,
            max_size=settings.max_size,
            max_recipients=settings.max_recipients,
            max_commands=settings.max_commands,
            max_connections=settings.max_connections,
            max_connections_per_client=settings.max_connections_per_client,
            reserved_connections=reserved_connections(settings),
            ipv6_prefix=settings.ipv6_prefix,
            max_session_time=settings.max_session_time,
            max_auth_failures=settings.max_auth_failures,
            max_auth_warnings=settings.max_auth_warnings,
            rate_window=settings.rate_window,
            require_tls=settings.require_tls,
            greet_pause=settings.greet_pause,
            route=tuple(route),
            timeout=settings.timeout,
            dkim=settings.dkim,
            data_folder=state_dir / DATA_FOLDER,
        )
        self._stop_timeout = settings.stop_timeout
        self.w3c = W3CLog(state_dir / "logs", f"alertmail {__version__}")
        workers = worker_count(settings.workers)
        if workers:
            await self._start_receivers(context, workers, listen, policy)
        else:
            self.server = RelayServer(policy, context.queue, self.w3c, tls)
            try:
                await self.server.start(listen)
            except OSError:
                await self.server.stop(0)
                raise
        self._flusher = asyncio.create_task(self._flush_log(self.w3c), name="relay-log-flush")
        if context.delivery is not None:
            self._delivery = context.delivery
            self._delivery.observers.append(self._log_attempt)
        if settings.pickup:
            self.pickup = PickupWatcher(
                state_dir / "pickup",
                context.queue,
                Badmail(state_dir / "badmail"),
                hostname,
                interval=settings.pickup_interval,
                max_size=settings.max_size,
                max_recipients=settings.max_recipients,
                route=route,
            )
            await self.pickup.start()

    async def _start_receivers(
        self, context: ServiceContext[RelaySettings], workers: int, listen: list[tuple[str, int]], policy: RelayPolicy
    ) -> None:
        """Bind the listening sockets here, and receive on them in ``workers`` processes of their own."""
        from alertmail import __version__
        from alertmail.plugins.relay.listener import bind
        from alertmail.plugins.relay.receiver import Spec
        from alertmail.plugins.relay.receivers import Receivers

        settings = context.options
        sockets = await asyncio.to_thread(bind, listen)
        agent = context.config.agent
        spec = Spec(
            index=0,
            fds=tuple(sock.fileno() for sock in sockets),
            settings=settings,
            policy=policy,
            anvil=-1,
            slots=-1,
            processes=workers,
            writer=context.queue.shared_writer(),
            logs=Path(context.state_dir) / "logs",
            software=f"alertmail {__version__}",
            log_level=agent.log_level,
            log_format=agent.log_format,
            event_loop="uvloop" if event_loop(settings) else "asyncio",
        )
        self.receivers = Receivers(workers, sockets, context.queue, spec)
        try:
            await self.receivers.start()
        except BaseException:
            for sock in sockets:
                sock.close()
            raise

    def _log_attempt(
        self, entry: QueuedMessage, transport: str, envelope: Envelope, result: DeliveryResult, seconds: float, size: int
    ) -> None:
        """One W3C line per recipient of each delivery attempt, as IIS logs its outbound sessions."""
        if self.w3c is None:
            return
        for rcpt, status in result.recipients.items():
            self.w3c.record(
                client_ip=status.remote or "-",
                username=transport,
                server_ip="-",
                server_port=0,
                method="DELIVER",
                query=f"id={entry.id}&to={rcpt}&status={status.status.value}",
                status=status.code,
                sent=size,
                received=0,
                taken_ms=int(seconds * 1000),
            )

    async def _flush_log(self, w3c: W3CLog) -> None:
        """Idle sessions write no lines; this makes the last ones reach the file within a second."""
        while True:
            await asyncio.sleep(1.0)
            w3c.flush()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Where the listener listens (ports resolved), for tests and the log."""
        if self.receivers is not None:
            return list(self.receivers.addresses)
        return self.server.addresses if self.server else []

    def counters(self) -> dict[str, tuple[str, float]]:
        """What /metrics shows of the relay: name -> (help, value); counters since the service started."""
        counts = self.receivers.counts if self.receivers is not None else self.server.counts if self.server is not None else {}
        return {
            "sessions": ("SMTP sessions admitted", counts.get("sessions", 0)),
            "sessions_refused": ("SMTP connections refused by the connection caps (421)", counts.get("sessions_refused", 0)),
            "accepted": ("messages accepted (250 to DATA) and queued", counts.get("accepted", 0)),
            "refused": ("MAIL, RCPT and DATA commands answered 4xx or 5xx", counts.get("refused", 0)),
        }

    async def stop(self) -> None:
        """Stop accepting, let transactions in flight finish, stop the pickup watcher."""
        delivery = self._delivery
        if delivery is not None and self._log_attempt in delivery.observers:
            delivery.observers.remove(self._log_attempt)
        try:
            if self.receivers is not None:
                await self.receivers.stop(self._stop_timeout)
            if self.server is not None:
                await self.server.stop(self._stop_timeout)
        finally:
            # Also when the caller's time ran out (cancelled): the watcher and the log are closed all the same.
            if self.pickup is not None:
                await self.pickup.stop()
            if self._flusher is not None:
                self._flusher.cancel()
            if self.w3c is not None:
                self.w3c.close()


def worker_count(value: int | str) -> int:
    """``[relay].workers`` as a number of receiving processes ("auto": one per core but one, at least 1)."""
    if value == "auto":
        from alertmail.plugins.relay.receivers import default_count

        return default_count()
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 256:
        return value
    raise RelayConfigError(f'relay.workers: expected "auto" or a number of processes from 0 to 256, got {value!r}')


def read_local_recipients(settings: RelaySettings) -> tuple[frozenset[str], list[tuple[str, str]]]:
    """``[relay].local_recipients`` lowercased, and what is wrong with it: (key path, message with the fix).

    Each item is an address in one of ``local_domains``, or ``"@domain"`` for all of
    that domain's addresses; each local domain needs at least one item, so that a
    config written when any address of a local domain was taken says so at ``check``.
    """
    domains = {str(d).lower().rstrip(".") for d in settings.local_domains}
    found: set[str] = set()
    problems: list[tuple[str, str]] = []
    for i, item in enumerate(settings.local_recipients):
        local_part, at, domain = str(item).strip().lower().rpartition("@")
        domain = domain.rstrip(".")
        if not at or not domain or any(c in str(item) for c in " <>\r\n"):
            problems.append((f"relay.local_recipients[{i}]", f'expected "user@domain" or "@domain", got {item!r}'))
        elif domain not in domains:
            problems.append(
                (f"relay.local_recipients[{i}]", f"{domain} is not in relay.local_domains; add it there or remove {item!r}")
            )
        else:
            found.add(f"{local_part}@{domain}")
    listed = {address.rpartition("@")[2] for address in found}
    for domain in sorted(domains - listed):
        problems.append(
            (
                "relay.local_recipients",
                f"no address of local domain {domain} is listed, so mail to it from outside `allow` would be refused "
                f'(but for postmaster); list its addresses, e.g. ["ops@{domain}"], or "@{domain}" to take any of them',
            )
        )
    return frozenset(found), problems


def check_route(transports: Mapping[str, Settings | Mapping[str, Any]], route: Sequence[str], state_dir: Path) -> None:
    """Every transport of the relay's route is configured (``transports``: their settings by name),
    and none leads back into pickup/."""
    if not route:
        raise RelayConfigError('relay.route: empty; name at least one transport, e.g. ["mx"]')
    for name in route:
        if name not in transports:
            raise RelayConfigError(f"relay.route: no [transports.{name}] table; add one (it says how relayed mail leaves)")
    if route[-1] == "alertmanager":
        # It takes only alerts an agent sealed; any other relayed mail needs a mail transport after it.
        raise RelayConfigError(
            "relay.route: ends with alertmanager, which takes only alerts sealed by a trusted agent, never other mail; "
            'add a mail transport after it, e.g. ["alertmanager", "smtp"]'
        )
    if "pickup" in route:
        # The pickup transport's own key, read by its file name: its settings belong to that plugin.
        pickup = transports["pickup"]
        folder = value_of(pickup, "directory") or state_dir / "pickup"
        if Path(folder).resolve() == (state_dir / "pickup").resolve():
            raise RelayConfigError("relay.route: the pickup transport writes into the relay's own pickup folder (a loop)")


def event_loop(settings: RelaySettings) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop of the receiving processes and of `alertmail relay`, by ``[relay].event_loop``.

    uvloop roughly doubles what one process accepts per second (see bench/relay_bench.py).
    """
    try:
        return loop_factory(settings.event_loop)
    except LoopUnavailable:
        raise RelayConfigError('relay.event_loop = "uvloop": uvloop is not installed (pip install uvloop)') from None


def relay_settings(cfg: ConfigView) -> RelaySettings:
    """The ``[relay]`` settings of a checked config (the declared defaults without a table)."""
    settings = cfg.sections.get(RelayService.section)
    return settings if isinstance(settings, RelaySettings) else RelaySettings()


async def serve(
    cfg: OutboxConfig, plugins: Any, services: Sequence[type], *, ready: Callable[[list[Any]], None] | None = None
) -> None:
    """Run the queue, delivery and ``services`` until SIGTERM or SIGINT, then stop them in order.

    Stop order: services first (no new mail; transactions in flight finish and are
    queued), then delivery (attempts in flight finish), then the queue.
    """
    from alertmail.intake import Outbox

    outbox = Outbox(cfg, plugins)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await outbox.open()
        # `alertmail queue retry` and `badmail resend` leave a request, then wake delivery with SIGUSR1.
        loop.add_signal_handler(signal.SIGUSR1, outbox.delivery.take_requests_now)
        started = await outbox.start_services(services, only_enabled=False)
        if ready is not None:
            ready(started)
        await stop.wait()
        log.info("stopping: no new mail; finishing transactions in flight")
    finally:
        await outbox.close()


@click.group("relay", invoke_without_command=True)
@config_option
@click.pass_context
def relay_command(ctx: click.Context, config_path: Path) -> None:
    """Run the SMTP relay alone: listener, pickup folder, queue and delivery.

    Runs until SIGTERM or SIGINT; then it stops accepting, lets transactions in
    flight finish, lets delivery attempts in flight finish, and exits 0.
    """
    if ctx.invoked_subcommand is not None:
        return
    from alertmail import ExitCode, load_or_exit
    from alertmail.intake import QueueLocked, setup_logging

    cfg, plugins = load_or_exit(config_path)
    setup_logging(cfg.agent.log_level, cfg.agent.log_format)
    settings = relay_settings(cfg)
    if not settings.enabled:
        log.info("[relay].enabled is false: `alertmail run` would not start it; running it as asked")

    def announce(services: list[Any]) -> None:
        for service in services:
            addresses = ", ".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in service.addresses)
            click.echo(f"relay listening on {addresses}", err=True)

    try:
        with asyncio.Runner(loop_factory=event_loop(settings)) as runner:
            runner.run(serve(cfg, plugins, [RelayService], ready=announce))
    except RelayConfigError as exc:
        click.echo(f"{cfg.path}: {exc}", err=True)
        sys.exit(ExitCode.CONFIG)
    except QueueLocked as exc:
        click.echo(f"cannot start: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)
    except OSError as exc:
        click.echo(f"cannot start the relay: {exc}", err=True)
        sys.exit(ExitCode.TEMPFAIL)


@relay_command.command("passwd")
@click.argument("user")
@config_option
@click.option(
    "--file",
    "users_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="users file to write (default: [relay].users_file of the config)",
)
@click.option("--password-stdin", is_flag=True, help="read the password from the first line of standard input")
def passwd_command(user: str, config_path: Path, users_file: Path | None, password_stdin: bool) -> None:
    """Add USER to the relay's users file, or set a new password (scrypt hash)."""
    from alertmail import ExitCode
    from alertmail.plugins.relay.users import UsersFileError, set_password

    if users_file is None:
        from alertmail import load_or_exit

        cfg, _ = load_or_exit(config_path)
        users_file = relay_settings(cfg).users_file
        if users_file is None:
            click.echo(f"{cfg.path}: relay.users_file is not set; set it or pass --file", err=True)
            sys.exit(ExitCode.CONFIG)
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        click.echo("an empty password is not allowed", err=True)
        sys.exit(ExitCode.USAGE)
    try:
        new = set_password(Path(users_file), user, password)
    except UsersFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(ExitCode.USAGE)
    click.echo(f"{'added' if new else 'changed the password of'} {user} in {users_file}")


@hookimpl
def register_services(register: Callable[[Any], None]) -> None:
    register(RelayService)


@hookimpl
def register_commands(cli: click.Group) -> None:
    cli.add_command(relay_command)
