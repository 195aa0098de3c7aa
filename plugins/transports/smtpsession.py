"""One SMTP session: connect, greeting, EHLO, TLS and AUTH as configured; one mail transaction on it.

``open_session`` raises ``SessionError`` when no session could be had; ``transact``
never raises for a delivery problem and maps every reply as ``smtpclient`` says.
Before MAIL, a message this server cannot take as it is (8-bit data without 8BITMIME, a
line over 998 octets) is converted to 7-bit MIME, or refused with 5.6.3 when it is
DKIM-signed (``fit_for_server``).

With a server that offers PIPELINING (RFC 2920) the transaction's MAIL, RCPTs and
DATA go in one write and their replies are read back in order: two round trips per
message instead of three plus one per recipient. The statuses are those the
command-by-command exchange gives for the same replies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
import socket
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alertmail import ConversionError, RecipientStatus, Status, fit_for_server
from alertmail.plugins.transports.smtpclient import (
    Endpoint,
    SessionError,
    SessionSettings,
    Timeouts,
    failure_status,
    one_line,
    reply_status,
)

if TYPE_CHECKING:
    import aiosmtplib

# An address aiosmtplib's quote_address would send unchanged in angle brackets: a dot-atom
# local part and a domain of letters, digits and hyphens. These skip its RFC 5322 parse
# (a tenth of a delivery's CPU); any other address goes through it as before.
_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9_+=-]+(?:\.[A-Za-z0-9_+=-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# aiosmtplib's limits on one reply: a line, and a whole multiline reply.
MAX_REPLY_LINE = 8192
MAX_REPLY = MAX_REPLY_LINE * 4
# What aiosmtplib refuses in a command argument (CR, LF and NUL would inject commands).
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
# Postfix's smtp_rset_timeout: a live server answers RSET at once.
PROBE_TIMEOUT = 20.0
QUIT_TIMEOUT = 5.0


async def _addresses(endpoint: Endpoint, timeout: float) -> list[str]:
    if endpoint.address:
        return [endpoint.address]
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM), timeout)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def _connect_socket(address: str, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (address, port)), timeout)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass
class Session:
    """One open SMTP connection to one endpoint."""

    client: aiosmtplib.SMTP
    endpoint: Endpoint
    remote: str
    timer: asyncio.TimerHandle | None = None
    reused: bool = False
    idle_since: float = 0.0

    @property
    def alive(self) -> bool:
        return self.client.is_connected

    async def quit(self) -> None:
        """QUIT politely, briefly; then drop the connection whatever happened."""
        try:
            if self.client.is_connected:
                await self.client.quit(timeout=QUIT_TIMEOUT)
        except Exception:
            pass
        finally:
            self.client.close()


async def open_session(endpoint: Endpoint, settings: SessionSettings, log: logging.Logger) -> Session:
    """Connect, read the greeting, EHLO, TLS and AUTH as configured; SessionError on failure."""
    import ssl

    import aiosmtplib

    timeouts = settings.timeouts
    remote = str(endpoint)
    try:
        addresses = await _addresses(endpoint, timeouts.connect)
    except (OSError, TimeoutError) as exc:
        raise SessionError(
            RecipientStatus(Status.TEMPORARY, 0, f"cannot resolve {endpoint.host}: {exc}", "4.4.3", remote)
        ) from exc
    sock, last_error, connected = None, None, None
    for address in addresses:
        try:
            sock = await _connect_socket(address, endpoint.port, timeouts.connect)
            connected = address
            remote = str(Endpoint(endpoint.host, endpoint.port, address))
            break
        except (OSError, TimeoutError) as exc:
            last_error = exc
            log.debug("connect to %s:%s failed: %s", address, endpoint.port, exc)
    if sock is None:
        raise SessionError(failure_status(last_error or OSError("no address"), remote))

    tls = endpoint.tls or settings.tls
    verify = endpoint.verify
    implicit = tls == "implicit"
    client = aiosmtplib.SMTP(
        hostname=endpoint.host,
        sock=sock,
        local_hostname=settings.helo,
        timeout=timeouts.command,
        use_tls=implicit,
        start_tls=False,
        tls_context=settings.tls_context(verify) if implicit else None,
    )
    try:
        # The connect timeout bounded the TCP handshake; the greeting has its own (RFC 5321: 5 min).
        await client.connect(timeout=timeouts.command)
        await _hello(client, timeouts.command)
        if tls == "starttls":
            if not client.supports_extension("starttls"):
                raise SessionError(
                    RecipientStatus(Status.TEMPORARY, 0, f'{remote} does not offer STARTTLS (tls = "starttls")', "4.7.0", remote)
                )
            await client.starttls(tls_context=settings.tls_context(verify), timeout=timeouts.command)
            await _hello(client, timeouts.command)
        elif tls == "required":
            await _required_tls(client, endpoint, settings, remote)
        elif tls == "opportunistic" and client.supports_extension("starttls"):
            # verify set on an opportunistic endpoint: an MTA-STS policy in testing mode, which
            # asks for the check and a report of its failure, not for the mail to wait.
            check = bool(endpoint.verify)
            try:
                await client.starttls(tls_context=settings.tls_context(check), timeout=timeouts.command)
                await _hello(client, timeouts.command)
            except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                if not client.is_connected:
                    client.close()
                    if check:
                        log.warning(
                            "TLS with %s failed its check (%s): %s would refuse this server; delivering without the check",
                            remote,
                            exc,
                            endpoint.policy or "the policy",
                        )
                        retry = dataclasses.replace(endpoint, address=connected, verify=False)
                    else:
                        # The handshake broke the connection: plain text on a new one beats no delivery.
                        log.info("STARTTLS with %s failed (%s); retrying without TLS", remote, exc)
                        retry = dataclasses.replace(endpoint, address=connected, tls="none")
                    again = await open_session(retry, settings, log)
                    again.endpoint = dataclasses.replace(endpoint, address=connected)
                    return again
                log.info("%s refused STARTTLS (%s); continuing without TLS", remote, exc)
        elif tls == "opportunistic" and endpoint.verify:
            log.warning(
                "%s does not offer STARTTLS: %s would refuse it; delivering in clear text",
                remote,
                endpoint.policy or "the policy",
            )
        if settings.username:
            try:
                password = settings.password() if settings.password else None
            except (LookupError, OSError) as exc:
                raise SessionError(
                    RecipientStatus(Status.TEMPORARY, 0, f"cannot read the password: {exc}", "4.7.8", remote)
                ) from None
            try:
                await client.login(settings.username, password or "", timeout=timeouts.command)
            except aiosmtplib.SMTPAuthenticationError as exc:
                # As Postfix's smtp_sasl_auth_soft_bounce: a refused login is a setup problem, not the mail's.
                raise SessionError(
                    RecipientStatus(
                        Status.TEMPORARY,
                        exc.code,
                        f"authentication as {settings.username} failed: {one_line(exc.message)}",
                        "4.7.8",
                        remote,
                    )
                ) from None
    except SessionError:
        client.close()
        raise
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        client.close()
        raise SessionError(failure_status(exc, remote)) from exc
    except BaseException:
        client.close()
        raise
    if log.isEnabledFor(logging.DEBUG):
        log.debug("session open with %s (tls=%s)", remote, "yes" if client.get_transport_info("sslcontext") else "no")
    return Session(client, endpoint, remote)


async def _required_tls(client: aiosmtplib.SMTP, endpoint: Endpoint, settings: SessionSettings, remote: str) -> None:
    """STARTTLS that must succeed (and verify, where asked): any failure is a SessionError
    saying which rule asked for TLS, so the mail waits in the queue instead of going in clear."""
    import ssl

    import aiosmtplib

    verify = settings.tls_verify if endpoint.verify is None else endpoint.verify
    rule = endpoint.policy or 'tls = "required"'
    if not client.supports_extension("starttls"):
        raise SessionError(
            RecipientStatus(
                Status.TEMPORARY,
                0,
                f"{remote} does not offer STARTTLS; {rule} forbids sending in clear text",
                "4.7.4",
                remote,
            )
        )
    try:
        await client.starttls(tls_context=settings.tls_context(verify), timeout=settings.timeouts.command)
        await _hello(client, settings.timeouts.command)
    except (ssl.SSLError, aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        failed = failure_status(exc, remote)
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code:
            what = f"{remote} refused STARTTLS ({exc.code} {one_line(exc.message)})"
        elif failed.enhanced == "4.7.5":
            what = failed.message  # "TLS failure with ...: [SSL: CERTIFICATE_VERIFY_FAILED] ..."
        else:
            what = f"STARTTLS with {remote} failed: {failed.message}"
        raise SessionError(
            RecipientStatus(Status.TEMPORARY, failed.code, f"{what}; {rule} forbids sending in clear text", "4.7.5", remote)
        ) from exc


async def _hello(client: aiosmtplib.SMTP, timeout: float) -> None:
    """EHLO, or HELO from a server that does not know EHLO."""
    import aiosmtplib

    try:
        await client.ehlo(timeout=timeout)
    except aiosmtplib.SMTPHeloError as exc:
        if exc.code not in (500, 502) or not client.is_connected:
            raise
        await client.helo(timeout=timeout)


@dataclass
class Transaction:
    """The outcome of one MAIL/RCPT/DATA exchange on one session."""

    statuses: dict[str, RecipientStatus] = field(default_factory=dict)
    retry: list[str] = field(default_factory=list)  # no final answer: try the next endpoint
    data_started: bool = False  # past this point a lost session may still have delivered

    def lost(self, exc: BaseException, session: Session, recipients: Sequence[str], accepted: Sequence[str]) -> Transaction:
        """The session failed: every recipient without a final answer (or accepted, but not yet
        past the final dot) gets the failure, to retry on the next endpoint; the session is closed."""
        status = failure_status(exc, session.remote)
        for rcpt in recipients:
            if rcpt not in self.statuses or rcpt in accepted:
                self.statuses[rcpt] = status
                self.retry.append(rcpt)
        session.client.close()
        return self


async def transact(session: Session, sender: str, recipients: Sequence[str], data: bytes, timeouts: Timeouts) -> Transaction:
    """One mail transaction; never raises for a delivery problem."""
    import aiosmtplib

    client, remote = session.client, session.remote
    done = Transaction()
    accepted: list[str] = []

    def lost(exc: BaseException) -> Transaction:
        return done.lost(exc, session, recipients, accepted)

    def broken(exc: aiosmtplib.SMTPResponseException) -> bool:
        # 421 means "closing the channel": the next endpoint may do better.
        return exc.code == 421 or not client.is_connected

    try:
        # RFC 6152 §3 and RFC 5321 §4.5.3.1.6: converted to 7-bit, or returned, never sent as it is.
        data = fit_for_server(data, eight_bit=client.supports_extension("8bitmime"))
    except ConversionError as exc:
        status = RecipientStatus(Status.PERMANENT, 554, f"not sent to {remote}: {exc}", "5.6.3", remote)
        return Transaction(dict.fromkeys(recipients, status))
    options, encoding = [], "ascii"
    if client.supports_extension("size"):
        options.append(f"SIZE={len(data)}")
    if client.supports_extension("8bitmime") and not data.isascii():
        options.append("BODY=8BITMIME")
    if not all(a.isascii() for a in (sender, *recipients)):
        if not client.supports_extension("smtputf8"):
            status = RecipientStatus(
                Status.PERMANENT, 0, f"{remote} does not support SMTPUTF8, needed for these addresses", "5.6.7", remote
            )
            return Transaction(dict.fromkeys(recipients, status))
        options.append("SMTPUTF8")
        encoding = "utf-8"
    if client.supports_extension("pipelining"):
        return await _pipelined(session, sender, recipients, data, options, encoding, timeouts)
    try:
        try:
            await _mail(client, sender, options, encoding, timeouts.command)
        except ValueError:
            status = RecipientStatus(Status.PERMANENT, 0, f"bad sender address {sender!r}", "5.1.7", remote)
            return Transaction(dict.fromkeys(recipients, status))
        except aiosmtplib.SMTPResponseException as exc:
            if broken(exc):
                return lost(exc)
            status = reply_status(exc.code, exc.message, remote)
            await _reset(client)
            return Transaction(dict.fromkeys(recipients, status))
        for rcpt in recipients:
            try:
                await _rcpt(client, rcpt, encoding, timeouts.command)
                accepted.append(rcpt)
            except ValueError:
                done.statuses[rcpt] = RecipientStatus(Status.PERMANENT, 0, f"bad recipient address {rcpt!r}", "5.1.3", remote)
            except aiosmtplib.SMTPResponseException as exc:
                if broken(exc):
                    return lost(exc)
                done.statuses[rcpt] = reply_status(exc.code, exc.message, remote)
        if not accepted:
            await _reset(client)
            return done
        done.data_started = True
        try:
            reply = await client.data(data, timeout=timeouts.data)
        except aiosmtplib.SMTPResponseException as exc:
            if broken(exc):
                return lost(exc)
            status = reply_status(exc.code, exc.message, remote)
            await _reset(client)
        else:
            status = reply_status(reply.code, reply.message, remote)
        for rcpt in accepted:
            done.statuses[rcpt] = status
        return done
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return lost(exc)


async def _pipelined(
    session: Session, sender: str, recipients: Sequence[str], data: bytes, options: list[str], encoding: str, timeouts: Timeouts
) -> Transaction:
    """``transact`` with MAIL, RCPTs and DATA sent together (RFC 2920), replies read in order."""
    import aiosmtplib

    client, remote = session.client, session.remote
    done = Transaction()
    accepted: list[str] = []
    try:
        mail = _command(b"MAIL FROM:", sender, options, encoding)
    except ValueError:
        status = RecipientStatus(Status.PERMANENT, 0, f"bad sender address {sender!r}", "5.1.7", remote)
        return Transaction(dict.fromkeys(recipients, status))
    lines, sent = [mail], []
    for rcpt in recipients:
        try:
            lines.append(_command(b"RCPT TO:", rcpt, [], encoding))
            sent.append(rcpt)
        except ValueError:
            done.statuses[rcpt] = RecipientStatus(Status.PERMANENT, 0, f"bad recipient address {rcpt!r}", "5.1.3", remote)
    if not sent:
        return done
    lines.append(b"DATA\r\n")

    def lost(exc: BaseException) -> Transaction:
        return done.lost(exc, session, recipients, accepted)

    try:
        replies = Replies(client)
    except aiosmtplib.SMTPServerDisconnected as exc:  # gone since it was last used: nothing was sent
        return lost(exc)
    try:
        replies.write(b"".join(lines))
        reply = await replies.next(timeouts.command)
        refused = reply.code != 250
        if reply.code == 421:
            return lost(aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender))
        if refused:
            # Final for every recipient; the RCPT and DATA replies that follow only say "no transaction".
            done.statuses.update(dict.fromkeys(recipients, reply_status(reply.code, reply.message, remote)))
        for rcpt in sent:
            reply = await replies.next(timeouts.command)
            if refused:
                continue
            if reply.code in (250, 251):
                accepted.append(rcpt)
            elif reply.code == 421:
                return lost(aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, rcpt))
            else:
                done.statuses[rcpt] = reply_status(reply.code, reply.message, remote)
        if accepted:
            done.data_started = True
        reply = await replies.next(timeouts.data)
        if reply.code == 354 and not accepted:
            # A server that opens DATA with no recipient gets an empty message, which it must refuse (RFC 2920 §3.1).
            replies.write(b".\r\n")
            await replies.next(timeouts.data)
        elif reply.code == 354:
            replies.write(_dot_stuffed(data))
            reply = await replies.next(timeouts.data)
        if accepted:
            if reply.code == 421:
                return lost(aiosmtplib.SMTPDataError(reply.code, reply.message))
            status = reply_status(reply.code, reply.message, remote)
            for rcpt in accepted:
                done.statuses[rcpt] = status
            if reply.code == 250:
                return done
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return lost(exc)
    finally:
        replies.release()
    await _reset(client)
    return done


def _command(verb: bytes, address: str, options: list[str], encoding: str) -> bytes:
    """A MAIL or RCPT line as aiosmtplib would send it; ValueError for an address it would refuse."""
    import aiosmtplib.email

    path = simple_path(address) if address or verb == b"MAIL FROM:" else None
    if path is None:
        path = aiosmtplib.email.quote_address(address)
    line = b" ".join((verb + path.encode(encoding), *(o.encode("ascii") for o in options)))
    if _CONTROL.search(line):
        raise ValueError("an address with a control character")
    return line + b"\r\n"


def _dot_stuffed(data: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends, leading dots doubled, the final dot."""
    crlf = data.count(b"\r\n")
    if crlf != data.count(b"\n") or crlf != data.count(b"\r") or not data.endswith(b"\r\n"):
        from aiosmtplib.protocol import normalize_message_line_endings

        data = normalize_message_line_endings(data)
    if data.startswith(b".") or b"\n." in data:  # the regular expressions cost a tenth of a delivery's CPU
        from aiosmtplib.protocol import PERIOD_REGEX

        data = PERIOD_REGEX.sub(b"..", data)
    return data + b".\r\n"


class Replies(asyncio.Protocol):
    """Takes over a session's connection for one pipelined exchange and queues every reply.

    aiosmtplib's protocol keeps one parsed reply and drops bytes that arrive while it
    waits to be picked up, so several replies in one read would be lost. While this
    one reads, a lost connection is passed on to aiosmtplib's protocol as it happens;
    ``release`` hands the connection back, or closes it if anything is left unread.
    """

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        import aiosmtplib

        inner = client.protocol
        if inner is None or inner.transport is None or inner.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.client = client
        self.inner = inner
        self.transport: asyncio.Transport = inner.transport  # type: ignore[assignment]
        self.buffer = b""  # an unfinished line
        self.lines: list[bytes] = []  # the lines so far of an unfinished multiline reply
        self.replies: deque[aiosmtplib.SMTPResponse] = deque()
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.transport.set_protocol(self)

    def write(self, data: bytes) -> None:
        import aiosmtplib

        if self.error is not None or self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def next(self, timeout: float) -> aiosmtplib.SMTPResponse:
        """The next reply in order; SMTPServerDisconnected, SMTPResponseException or SMTPReadTimeoutError."""
        if not self.replies and self.error is None:
            loop = asyncio.get_running_loop()
            self.waiter = loop.create_future()
            # A timer, not asyncio.timeout: a tenth of the cost, and this runs twice per message.
            timer = loop.call_later(timeout, self._time_out)
            try:
                while not self.replies and self.error is None:  # a part of a reply wakes it too
                    await self.waiter
                    self.waiter = loop.create_future()
            finally:
                timer.cancel()
                self.waiter = None
        if self.replies:
            return self.replies.popleft()
        assert self.error is not None
        raise self.error

    def release(self) -> None:
        """Give the connection back to aiosmtplib; close it if a reply or stray bytes are left over."""
        if self.transport.is_closing():
            return
        self.transport.set_protocol(self.inner)
        if self.replies or self.buffer or self.lines or self.error is not None:
            self.client.close()

    def _time_out(self) -> None:
        import aiosmtplib

        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        import aiosmtplib

        if self.error is not None:
            return
        *complete, self.buffer = (self.buffer + data).split(b"\n")
        try:
            for line in complete:
                self._line(line)
        except aiosmtplib.SMTPResponseException as exc:
            self.error = exc
        if self.error is None and (len(self.buffer) > MAX_REPLY_LINE or sum(map(len, self.lines)) > MAX_REPLY):
            self.error = aiosmtplib.SMTPResponseException(-1, "Response too long")
        self._wake()

    def _line(self, line: bytes) -> None:
        """One reply line, without its LF: a reply is queued at its last line."""
        import aiosmtplib

        if len(line) >= MAX_REPLY_LINE:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")
        try:
            code = int(line[:3])
        except ValueError:
            shown = line.decode("utf-8", "ignore")
            raise aiosmtplib.SMTPResponseException(-1, f"Malformed SMTP response line: {shown}") from None
        text = line[4:].strip(b" \t\r")
        if line[3:4] == b"-":
            self.lines.append(text)
            return
        if self.lines:
            self.lines.append(text)
            text, self.lines = b"\n".join(self.lines), []
        self.replies.append(aiosmtplib.SMTPResponse(code, text.decode("utf-8", "surrogateescape")))

    def eof_received(self) -> bool:
        import aiosmtplib

        self.error = self.error or aiosmtplib.SMTPServerDisconnected("Unexpected EOF received")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        import aiosmtplib

        if self.error is None:
            self.error = aiosmtplib.SMTPServerDisconnected("Connection lost")
            self.error.__cause__ = exc
        self.inner.connection_lost(exc)
        self._wake()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


def simple_path(address: str) -> str | None:
    """``<address>`` when it needs no parsing to go on a MAIL or RCPT line (the empty sender too), else None."""
    if not address:
        return "<>"
    return f"<{address}>" if _SIMPLE_ADDRESS.fullmatch(address) else None


async def _mail(client: aiosmtplib.SMTP, sender: str, options: list[str], encoding: str, timeout: float) -> None:
    """MAIL FROM, as ``client.mail`` sends it; SMTPSenderRefused unless 250."""
    import aiosmtplib

    path = simple_path(sender)
    if path is None:
        await client.mail(sender, options=options, encoding=encoding, timeout=timeout)
        return
    reply = await client.execute_command(
        b"MAIL", b"FROM:" + path.encode(encoding), *(o.encode("ascii") for o in options), timeout=timeout
    )
    if reply.code != 250:
        raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)


async def _rcpt(client: aiosmtplib.SMTP, recipient: str, encoding: str, timeout: float) -> None:
    """RCPT TO, as ``client.rcpt`` sends it; SMTPRecipientRefused unless 250 or 251."""
    import aiosmtplib

    path = simple_path(recipient) if recipient else None
    if path is None:
        await client.rcpt(recipient, encoding=encoding, timeout=timeout)
        return
    reply = await client.execute_command(b"RCPT", b"TO:" + path.encode(encoding), timeout=timeout)
    if reply.code not in (250, 251):
        raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)


async def _reset(client: aiosmtplib.SMTP) -> None:
    """RSET after a refused transaction; a server that fails it is closed, not reused."""
    try:
        await client.rset(timeout=PROBE_TIMEOUT)
    except Exception:
        client.close()
