"""The relay's aiosmtpd handler: relay policy at EHLO, MAIL and RCPT; the queue at DATA.

What is decided here needs no aiosmtpd: the session (``server.RelaySMTP``) calls these
hooks with its own session and envelope, and a message is durable in the queue before
the client hears the final 250.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING, Any, Protocol

from alertmail import Envelope
from alertmail.intake import QueueWriteError
from alertmail.plugins.relay.policy import RelayPolicy, data_problem, has_routing, received_header

if TYPE_CHECKING:
    from alertmail.intake import Intake
    from alertmail.plugins.relay.data import MessageData

log = logging.getLogger("alertmail.relay")

# Longest wait for the queue to make a message durable before answering 451.
PUT_TIMEOUT = 60.0


class Session(Protocol):
    """What the hooks see of the SMTP session that calls them (``server.RelaySMTP``)."""

    client_ip: str
    client_allowed: bool  # the client's address is in [relay] allow
    close_after_reply: bool

    def protocol_name(self) -> str: ...


class Listener(Protocol):
    """What the hooks see of the listener (``listener.RelayServer``)."""

    @property
    def stopping(self) -> bool: ...


class RelayHandler:
    """aiosmtpd hooks: policy at EHLO/MAIL/RCPT, and queueing at DATA."""

    def __init__(self, policy: RelayPolicy, queue: Intake, server: Listener) -> None:
        self.policy = policy
        self.queue = queue
        self.server = server
        self._ehlo: dict[tuple[str, ...], list[str]] = {}  # aiosmtpd's EHLO lines -> the relay's (a few variants)

    async def handle_EHLO(self, smtp: Session, session: Any, envelope: Any, hostname: str, responses: list[str]) -> list[str]:
        session.host_name = hostname
        key = tuple(responses)
        lines = self._ehlo.get(key)
        if lines is None:
            if len(self._ehlo) >= 64:
                self._ehlo.clear()
            lines = self._ehlo[key] = self._ehlo_lines(responses)
        return list(lines)

    def _ehlo_lines(self, responses: list[str]) -> list[str]:
        keywords = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        if not self.policy.users:
            keywords = [k for k in keywords if not k.startswith("AUTH")]
        keywords += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [responses[0][4:], *keywords]
        return [f"250-{k}" for k in lines[:-1]] + [f"250 {lines[-1]}"]

    async def handle_MAIL(self, smtp: Session, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if self.server.stopping:
            smtp.close_after_reply = True
            return f"421 4.3.2 {self.policy.hostname} service shutting down"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(self, smtp: Session, session: Any, envelope: Any, address: str, options: list[str]) -> str:
        if len(envelope.rcpt_tos) >= self.policy.max_recipients:
            return "452 4.5.3 Too many recipients"
        trusted = session.authenticated or smtp.client_allowed
        if not (trusted or self.policy.local(address)):
            return f"554 5.7.1 <{address}>: Relay access denied"
        if not trusted and has_routing(address):
            return f"553 5.7.1 <{address}>: Sender-specified routing is not allowed"
        if not trusted and not self.policy.known_local(address):
            # Refused now, not bounced later: a DSN to a forged sender would be backscatter.
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient table"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, smtp: Session, session: Any, envelope: Any) -> str:
        data: MessageData = envelope.original_content
        if data.error is not None:
            log.error("relay: cannot keep the data of a message from %s: %s", smtp.client_ip, data.error)
            return "452 4.3.1 Insufficient system storage"
        async with data.loaded() as content:
            return await self._queue(smtp, session, envelope, content)

    async def _queue(self, smtp: Session, session: Any, envelope: Any, content: bytes) -> str:
        problem = data_problem(content)
        if problem:
            return f"554 5.6.0 {problem}"
        sender = "" if envelope.mail_from == "<>" else envelope.mail_from
        txid = secrets.token_hex(6)
        trace = received_header(
            helo=session.host_name or "",
            ip=smtp.client_ip,
            hostname=self.policy.hostname,
            protocol=smtp.protocol_name(),
            txid=txid,
            recipients=envelope.rcpt_tos,
        )
        try:
            # A put that outlives the timeout is still committed once the queue holds it (the client,
            # told 451, may send it again): at worst a duplicate, never a loss.
            async with asyncio.timeout(PUT_TIMEOUT):
                msg_id = await self.queue.put(
                    trace + content,
                    Envelope(sender, tuple(envelope.rcpt_tos)),
                    route=self.policy.route or None,
                    origin="relay" if smtp.client_allowed else "relay-auth" if session.authenticated else "relay-local",
                    # [relay] dkim signs mail from `allow` clients only: AUTH users and outsiders to local domains sign their own
                    dkim=self.policy.dkim and smtp.client_allowed,
                )
        except QueueWriteError as exc:
            log.error("relay: cannot queue a message from %s: %s", smtp.client_ip, exc)
            return "452 4.3.1 Insufficient system storage"
        except TimeoutError:
            log.error("relay: the queue took longer than %ss; answered 451", PUT_TIMEOUT)
            return "451 4.3.0 Queue busy, try again later"
        return f"250 2.0.0 OK queued as {msg_id}"
