"""``[relay]``: its keys, each with its one default, as the relay's settings object.

The agent checks the table against these fields and hands the relay the object
(``ServiceContext.options``); the receiving processes get it pickled in their ``Spec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alertmail import Settings, setting


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings(Settings):
    """``[relay]``: the listener, the pickup folder, and how what they take leaves."""

    enabled: bool = setting("bool", False, help="start the relay with `alertmail run`")
    listen: list[str] = setting(
        "list", ["127.0.0.1:2525"], nonempty=True, help='addresses to listen on: "127.0.0.1:2525", "[::1]:2525"'
    )
    hostname: str | None = setting(
        "str", None, nonempty=True, help="name in the banner, EHLO and Received; default [agent].hostname"
    )
    allow: list[str] = setting("list", ["127.0.0.0/8", "::1"], help="IPs and CIDR networks that may relay without AUTH")
    users_file: Path | None = setting("path", None, help="user:hash lines (`alertmail relay passwd USER`); AUTH over TLS only")
    tls_cert: Path | None = setting("path", None, help="PEM certificate (chain) for STARTTLS")
    tls_key: Path | None = setting("path", None, help="PEM private key for STARTTLS")
    require_tls: bool = setting("bool", False, help="refuse mail commands before STARTTLS")
    max_size: int = setting("size", 10_000_000, help="largest message accepted (announced as SIZE)")
    max_recipients: int = setting("int", 100, help="recipients per message; more get 452")
    max_commands: int = setting(
        "int", 100, help="commands that move no mail (NOOP, RSET, errors, abandoned MAIL/RCPT) before 421 4.7.0"
    )
    max_connections: int = setting("int", 300, help="sessions at once, all clients together; more get 421 4.7.0")
    reserved_connections: int | None = setting(
        "int", None, help="sessions of max_connections only `allow` clients may take; default a sixth of max_connections"
    )
    max_connections_per_client: int = setting(
        "int", 50, help="sessions at once from one client outside `allow` (IPv4 address or IPv6 network); more get 421 4.7.0"
    )
    ipv6_prefix: int = setting("int", 64, help="IPv6 clients are counted per network of this many bits (/64: one site)")
    max_session_time: float = setting("duration", 1800.0, help="longest session; then 421 4.4.2 once its transaction is over")
    max_auth_failures: int = setting(
        "int", 10, help="failed AUTH per client (`allow` ones too) within rate_window; then 421 4.7.0"
    )
    max_auth_warnings: int = setting(
        "int", 10, help="failed-AUTH warnings logged per rate_window; the rest are counted in one line"
    )
    rate_window: float = setting("duration", 60.0, help="the time unit of max_auth_failures (as Postfix's anvil_rate_time_unit)")
    route: list[str] = setting(
        "list", ["mx"], nonempty=True, help='transports relayed and picked-up mail leaves through, e.g. ["mx"]'
    )
    local_domains: list[str] = setting("list", [], help="recipient domains any client may send to, without relay rights")
    local_recipients: list[str] = setting(
        "list", [], help='the addresses of local_domains that exist ("@domain": all of it); others get 550 5.1.1 at RCPT'
    )
    dkim: bool = setting("bool", False, help="sign mail from `allow` clients with the [mail.dkim] keys (not AUTH or local mail)")
    pickup: bool = setting("bool", True, help="take files dropped into STATE_DIR/pickup")
    pickup_interval: float = setting("duration", 1.0, help="how often the pickup folder is scanned")
    greet_pause: float = setting(
        "duration", 1.0, help="wait before the banner for clients outside `allow`; who talks first is dropped"
    )
    timeout: float = setting("duration", 300.0, help="idle time before a session is closed")
    event_loop: str = setting(
        "str",
        "auto",
        choices=("auto", "asyncio", "uvloop"),
        help="for the receiving processes and `alertmail relay`: auto = uvloop when installed (about twice the rate)",
    )
    workers: int | str = setting(
        "any",
        "auto",
        help='receiving processes: "auto" = one per core but one (at least 1); 0 = receive in the agent\'s own process',
    )
    stop_timeout: float = setting(
        "duration", 5.0, help="on shutdown, how long transactions in flight may take to finish; then their sessions get 421"
    )
