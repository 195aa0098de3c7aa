"""The smtp transport: hand every message to a configured server (a smart host or a provider).

``servers`` are tried in order: a server that cannot be reached, breaks TLS, refuses
the login or answers 421 passes the recipients it did not finish to the next one.
TLS is on and verified by default: ``tls = "starttls"`` requires STARTTLS (a server
that does not offer it is a failure, never a silent fall back to plain text, since
the password and the mail would go in clear); ``"implicit"`` is TLS from the first
byte (port 465); ``"none"`` is plain text and refuses AUTH unless
``allow_plain_auth = true``. Sessions stay open for the next message for
``idle_timeout`` and are checked with RSET before reuse.

    [transports.smtp]
    servers = ["smtp1.example.com:587", "smtp2.example.com:587"]
    tls = "starttls"
    username = "alerts"
    password_env = "ALERTMAIL_SMTP_PASSWORD"
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import ClassVar

from alertmail import (
    DeliveryResult,
    Envelope,
    RecipientStatus,
    Status,
    TransportContext,
    hookimpl,
    message_bytes,
    parse_address,
    resolve_secret,
    setting,
)
from alertmail.plugins.transports.smtpclient import (
    ClientSettings,
    Endpoint,
    SessionSettings,
    Timeouts,
    helo_name,
    is_ip,
)

log = logging.getLogger("alertmail.transport.smtp")
# A server written without a port gets the one its TLS mode usually listens on.
DEFAULT_PORTS = {"starttls": 587, "implicit": 465, "none": 25}


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpSettings(ClientSettings):
    """``[transports.smtp]``."""

    servers: list[str] = setting(
        "list",
        None,
        required=True,
        nonempty=True,
        help='servers tried in order, e.g. ["smtp1.example.com:587", "[10.0.0.5]:25"]',
    )
    tls: str = setting(
        "str",
        "starttls",
        help="starttls (required, verified), implicit (port 465) or none",
        choices=("starttls", "implicit", "none"),
    )
    tls_verify: bool = setting("bool", True, help="check the server certificate and name")
    ca_file: Path | None = setting("path", None, help="PEM file of CA certificates to trust instead of the system's")
    username: str | None = setting("str", None, help="log in with AUTH as this user")
    password_env: str | None = setting("str", None, help="environment variable holding the password")
    password_file: Path | None = setting("path", None, help="file holding the password")
    allow_plain_auth: bool = setting("bool", False, help='allow AUTH over a connection without TLS (tls = "none")')
    helo: str | None = setting("str", None, nonempty=True, help="name given in EHLO; default: the agent's host name")


class SmtpTransport:
    """Delivers through the first of ``servers`` that takes the mail (aiosmtplib)."""

    name: ClassVar[str] = "smtp"
    options: ClassVar[type[SmtpSettings]] = SmtpSettings

    def __init__(self, settings: SmtpSettings, context: TransportContext) -> None:
        self.servers: list[Endpoint] = []
        for i, text in enumerate(settings.servers or []):
            try:
                host, port = parse_address(text, default_port=DEFAULT_PORTS[settings.tls])
            except ValueError as exc:
                raise ValueError(f"transports.smtp.servers[{i}]: {exc}") from None
            self.servers.append(Endpoint(host, port, host if is_ip(host) else None))
        if not self.servers:
            raise ValueError('transports.smtp.servers: name at least one server, e.g. ["smtp.example.com:587"]')
        if settings.username and settings.tls == "none" and not settings.allow_plain_auth:
            raise ValueError(
                'transports.smtp: username is set with tls = "none", which would send the password in clear text; '
                'use tls = "starttls" or "implicit", or set allow_plain_auth = true'
            )
        if settings.username:
            _check_password(settings)
        self.session = SessionSettings(
            helo=helo_name(settings.helo or context.hostname, "transports.smtp.helo"),
            timeouts=Timeouts.of(settings),
            tls=settings.tls,
            tls_verify=settings.tls_verify,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
            username=settings.username,
            # Read at each new session, so a rotated password file is picked up without a restart.
            password=lambda: _password(settings),
        )
        from alertmail.plugins.transports.smtppool import SessionPool  # the session code loads with a transport in use

        self.pool = SessionPool(self.session, idle_timeout=settings.idle_timeout, log=log)

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        """Deliver to the first server that answers; per-recipient statuses, never an exception."""
        data = message_bytes(message)
        results = await self.pool.deliver(self._endpoints(), envelope.sender, envelope.recipients, data)
        missing = RecipientStatus(Status.TEMPORARY, 0, "no server was tried", "4.4.1")
        return DeliveryResult({r: results.get(r, missing) for r in envelope.recipients})

    async def _endpoints(self) -> AsyncGenerator[Endpoint, None]:
        for endpoint in self.servers:
            yield endpoint

    async def close(self) -> None:
        """Close the sessions kept open for reuse."""
        await self.pool.close()


def _password(settings: SmtpSettings) -> str | None:
    return resolve_secret(settings.as_table(), "password")


def _check_password(settings: SmtpSettings) -> None:
    """Fail at start, not at the first alert, when the password cannot be read."""
    if not settings.password_env and not settings.password_file:
        raise ValueError("transports.smtp: username is set but no password; add password_env or password_file")
    try:
        _password(settings)
    except (LookupError, OSError) as exc:
        raise ValueError(f"transports.smtp.{'password_env' if settings.password_env else 'password_file'}: {exc}") from None


@hookimpl
def register_transports(register):
    register(SmtpTransport)
