"""The SMTP client shared by the smtp and mx transports: its settings, and how replies map to statuses.

A delivery runs one SMTP transaction per endpoint (``smtpsession``) over an ordered
list of endpoints, keeping sessions for reuse (``smtppool``). Every reply becomes a
per-recipient ``RecipientStatus``:

- 2xx after DATA: DELIVERED; 4xx: TEMPORARY; 5xx: PERMANENT.
- A refusal at MAIL FROM or DATA applies to every recipient of the transaction,
  one at RCPT to that recipient only; with no recipient accepted, DATA is not sent.
- A session failure (connection refused or timed out, TLS failure, a greeting that
  is not 220, a 421, a dropped connection) is TEMPORARY and moves the recipients
  that have no final answer yet to the next endpoint.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alertmail import AlertmailError, RecipientStatus, Settings, Status, setting

if TYPE_CHECKING:  # imported where a session needs it: an agent that never speaks TLS never loads OpenSSL
    import ssl


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientSettings(Settings):
    """The keys the smtp and mx transports share: how long each network step may take.

    RFC 5321 §4.5.3.2 gives a timeout per command; aiosmtplib takes one per call, and
    one for the whole DATA phase, so three knobs cover it.
    """

    connect_timeout: float = setting("duration", 30.0, minimum=0.001, help="TCP connect to one address")
    command_timeout: float = setting(
        "duration", 300.0, minimum=0.001, help="greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, RSET (RFC 5321: 5 min)"
    )
    data_timeout: float = setting(
        "duration", 600.0, minimum=0.001, help="DATA up to the reply to the final dot (RFC 5321: 10 min for the dot)"
    )
    idle_timeout: float = setting("duration", 30.0, help="keep an idle session open this long for the next message; 0 = close")


_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")
_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each network step."""

    connect: float
    command: float
    data: float

    @classmethod
    def of(cls, settings: ClientSettings) -> Timeouts:
        return cls(connect=settings.connect_timeout, command=settings.command_timeout, data=settings.data_timeout)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where to connect: ``host`` names the server (TLS name, logs); ``address`` is the IP
    to use, or None to resolve ``host`` with the system resolver."""

    host: str
    port: int
    address: str | None = None
    # This endpoint's TLS policy where it differs from the transport's (an MTA-STS policy,
    # the mx transport's smart host); part of the key, so sessions of one policy are
    # never reused under another. ``policy`` names the rule in failure messages.
    tls: str | None = None
    verify: bool | None = None
    policy: str = ""

    def __str__(self) -> str:
        if self.address and self.address != self.host:
            return f"{self.host}[{self.address}]:{self.port}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass
class SessionSettings:
    """How sessions are opened; one per transport instance."""

    helo: str
    timeouts: Timeouts
    tls: str = "starttls"  # "starttls" | "implicit" | "none" | "opportunistic" | "required"
    tls_verify: bool = True
    ca_file: str | None = None
    username: str | None = None
    # Called at each new session, so a rotated password file is read without a restart;
    # the secret itself is never stored here (nor in any repr or log).
    password: Callable[[], str | None] | None = field(default=None, repr=False)
    _contexts: dict[bool, ssl.SSLContext] = field(default_factory=dict, repr=False)

    def tls_context(self, verify: bool | None = None) -> ssl.SSLContext:
        """The client TLS context, built once per kind: verifying (chain and name) unless told not
        to; ``verify`` overrides ``tls_verify`` for one endpoint."""
        if verify is None:
            verify = self.tls_verify and self.tls != "opportunistic"
        context = self._contexts.get(verify)
        if context is None:
            import ssl

            context = ssl.create_default_context(cafile=self.ca_file if verify else None)
            if not verify:
                # Opportunistic TLS between MTAs checks nothing (RFC 7435): it beats plain text.
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._contexts[verify] = context
        return context


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def helo_name(name: str, key: str) -> str:
    """``name`` checked for the EHLO line (ASCII, no spaces or controls); ValueError naming ``key``."""
    name = name.strip()
    if not name or not name.isascii() or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError(f'{key}: {name!r} cannot be sent in EHLO; use a plain host name like "web01.example.com"')
    return name


def one_line(text: str) -> str:
    """A server's reply text on one line, as statuses and logs carry it."""
    if not text:
        return ""
    if "\r" not in text and "\n" not in text:  # most replies: nothing to join
        return text.strip()
    return _LINE_BREAKS.sub(" ", text).strip()


class SessionError(AlertmailError):
    """A session could not be opened or was lost; ``status`` says how, for every recipient."""

    def __init__(self, status: RecipientStatus) -> None:
        super().__init__(status.message)
        self.status = status


def reply_status(code: int, text: str, remote: str) -> RecipientStatus:
    """The RecipientStatus for an SMTP reply, with its RFC 3463 code (or one from its class)."""
    text = one_line(text)
    klass = code // 100
    enhanced = f"{klass}.0.0" if klass in (2, 4, 5) else "4.0.0"
    match = _ENHANCED.match(text)
    if match and int(match.group(1)) == klass:
        enhanced = ".".join(match.group(1, 2, 3))
        text = text[match.end() :]
    status = Status.DELIVERED if klass == 2 else Status.PERMANENT if klass == 5 else Status.TEMPORARY
    return RecipientStatus(status, code, text, enhanced, remote)


def failure_status(exc: BaseException, remote: str) -> RecipientStatus:
    """The TEMPORARY status for a failed or lost session, which may carry no SMTP reply at all.

    Even a 5xx greeting is temporary here: another server, or the same one later, may
    take the mail; only replies inside a transaction are final.
    """
    import ssl

    import aiosmtplib

    if isinstance(exc, SessionError):
        return exc.status
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code:
        status = reply_status(exc.code, exc.message, remote)
        enhanced = "4" + status.enhanced[1:] if status.enhanced[:1] == "5" else status.enhanced
        return RecipientStatus(Status.TEMPORARY, status.code, status.message, enhanced, remote)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return RecipientStatus(Status.TEMPORARY, 0, f"TLS failure with {remote}: {cause}", "4.7.5", remote)
        cause = cause.__cause__ or cause.__context__
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return RecipientStatus(Status.TEMPORARY, 0, f"timed out talking to {remote}", "4.4.2", remote)
    if isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        return RecipientStatus(Status.TEMPORARY, 0, f"lost connection with {remote}", "4.4.2", remote)
    if isinstance(exc, OSError | aiosmtplib.SMTPConnectError):
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return RecipientStatus(Status.TEMPORARY, 0, f"cannot connect to {remote}: {reason}", "4.4.1", remote)
    return RecipientStatus(Status.TEMPORARY, 0, f"{remote}: {exc}", "4.0.0", remote)
