"""The relay's SMTP session: aiosmtpd's protocol with smuggling defence, limits and a W3C log.

Imported only when the relay starts (aiosmtpd is not loaded by an idle agent).

What aiosmtpd 1.4.6 does and what this module adds:

- aiosmtpd reads commands up to LF and DATA line by line up to CRLF, so a bare LF
  never ends a message there; here DATA is read in larger pieces and ends only at
  <CRLF>.<CRLF> as well. A bare LF would still reach the next hop, whose reading of
  ``<LF>.<LF>`` may differ (SMTP smuggling, CVE-2023-51764), so message data with a
  bare CR or LF is refused with ``554 5.6.0`` and nothing is queued, and a command
  line not ended by CRLF is answered ``521 5.5.2`` and the connection closed (as
  Postfix's ``smtpd_forbid_bare_newline``).
- Addresses with CR, LF or unbalanced angle brackets get ``501 5.1.3`` before aiosmtpd
  parses them (it accepts ``<a@b`` and keeps a CR inside the address).
- Recipient and command limits, a session lifetime, enhanced status codes on every reply (aiosmtpd's
  own replies lack them), the early-talker check, and AUTH checks in a thread (scrypt
  would stall the event loop). The relay policy and the queue are ``handler``'s.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import re
import ssl
import time
from collections.abc import Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, cast

import aiosmtpd
from aiosmtpd.smtp import (
    SMTP,
    AuthResult,
    LoginPassword,
    _AuthMechAttr,
    login_always_fail,
)

from alertmail import AlertmailError
from alertmail.plugins.relay.data import MessageData, read_data
from alertmail.plugins.relay.policy import address_problem, with_enhanced_code

if TYPE_CHECKING:
    from alertmail.intake import Intake
    from alertmail.plugins.relay.handler import RelayHandler
    from alertmail.plugins.relay.w3c import W3CLog

log = logging.getLogger("alertmail.relay")

# The aiosmtpd releases whose SMTP.__init__ RelaySMTP._init_fast mirrors attribute for
# attribute (tests/test_relay_aiosmtpd.py holds the copy to the installed one); any
# other release, even a 1.4.x not listed, runs aiosmtpd's own __init__.
FAST_INIT_VERSIONS = frozenset({"1.4.4", "1.4.5", "1.4.6"})
_FAST_INIT = aiosmtpd.__version__ in FAST_INIT_VERSIONS
# Commands that move no mail; with the error replies, and the MAIL and RCPT of a transaction
# given up, they count against max_commands.
JUNK = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "HELO", "EHLO"})
_SIMPLE_PATH = re.compile(
    r"^\s*<([A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(\s.*|)$"
)


class AuthLog(Protocol):
    def warn(self, client: str, message: str, *args: object) -> None: ...


class Listener(Protocol):
    """What a session needs of the listener that made it: ``listener.RelayServer``, or its form in a
    receiving process whose caps count the sessions of every process (``receiver.shared_server``)."""

    @property
    def queue(self) -> Intake: ...

    @property
    def w3c(self) -> W3CLog: ...

    @property
    def counts(self) -> MutableMapping[str, int]: ...

    @property
    def auth_log(self) -> AuthLog: ...

    def admit(self, session: RelaySMTP) -> str | None:
        """Count a new session in; the reason it is refused (421) when a cap is reached."""
        ...

    def release(self, session: RelaySMTP) -> None: ...

    def auth_blocked(self, key: str) -> bool: ...

    def auth_failed(self, key: str) -> bool: ...


class CommandRefused(AlertmailError):
    """A command line refused before aiosmtpd parses it; ``reply`` is the answer."""

    def __init__(self, reply: str, *, close: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.close = close


class RelaySMTP(SMTP):
    """One SMTP session; aiosmtpd's protocol with the relay's checks and logging."""

    def __init__(self, handler: RelayHandler, server: Listener, **kwargs: Any) -> None:
        if _FAST_INIT:
            self._init_fast(handler, **kwargs)
        else:
            super().__init__(handler, **kwargs)
        # aiosmtpd keeps these limits on the class, shared by every session: each EHLO adds
        # to them and each new session clears them. Each session gets its own here.
        self.command_size_limits = collections.defaultdict(lambda: SMTP.command_size_limit)
        self.server = server
        self.policy = handler.policy
        self.client_ip = ""
        self.client_key = ""  # what the per-client limits count: the IP, or its IPv6 network
        self.client_allowed = False
        self.local_ip, self.local_port = "", 0
        self.close_after_reply = False
        self._junk = 0  # commands that moved no mail since the last accepted message
        self._pending = 0  # accepted MAIL and RCPT of the transaction in progress
        self._lifetime: asyncio.TimerHandle | None = None
        self._expired = False  # max_session_time is over: the session ends with its transaction
        self._committing = False  # the DATA hook is making a message durable
        self._refused: str | None = None  # why the session is refused at once (a connection cap)
        self._secret_input = False
        self._credentials: LoginPassword | None = None
        # the command being answered: [verb, query, started, bytes in, bytes out]
        self._current: list[Any] | None = None
        self._continued: list[str] = []

    # aiosmtpd's __init__ introspects the protocol and the handler (inspect.getmembers,
    # dir) on every connection: about 90 us a session against 10 us here. The relay spends
    # about 1 ms of CPU per message, so this saves some 7% when every message comes on
    # its own connection; bench/relay_bench.py on a shared machine varies more than that.
    # For FAST_INIT_VERSIONS this sets the same attributes from maps computed once per class.
    # aiosmtpd offers no public way to skip that work: the maps are built inside __init__,
    # per instance and bound to it, with no hook, class-level cache or argument that
    # avoids them; a subclass that calls super().__init__ (what other releases run) pays them.
    _method_names: ClassVar[tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]] | None] = None

    def _init_fast(
        self,
        handler: RelayHandler,
        *,
        hostname: str,
        ident: str,
        data_size_limit: int,
        enable_SMTPUTF8: bool,
        tls_context: ssl.SSLContext | None,
        require_starttls: bool,
        auth_require_tls: bool,
        auth_exclude_mechanism: Iterable[str],
        timeout: float,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        cls = type(self)
        if cls._method_names is None:
            cls._method_names = (
                tuple(n for n in dir(cls) if n.startswith("auth_")),
                tuple(n for n in dir(handler) if n.startswith("handle_")),
                tuple(n for n in dir(cls) if n.startswith("smtp_")),
            )
        auth_names, hook_names, smtp_names = cls._method_names
        self.__ident__ = ident
        self.loop = loop
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = False
        self.hostname = hostname
        self.tls_context = tls_context
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = None
        self._auth_callback = login_always_fail
        self._auth_required = False
        excluded = set(auth_exclude_mechanism)
        self._auth_methods = {
            name[5:]: _AuthMechAttr(getattr(self, name), True) for name in auth_names if name[5:] not in excluded
        }
        self._handle_hooks = {name[7:]: getattr(handler, name) for name in hook_names}
        self._ehlo_hook_ver = "new"
        self._smtp_methods = {name[5:]: getattr(self, name) for name in smtp_names}
        self._enforce_call_limit = False

    # -- connection ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            peer = transport.get_extra_info("peername") or ("", 0)
            sock = transport.get_extra_info("sockname") or ("", 0)
            self.client_ip, self.local_ip, self.local_port = str(peer[0]), str(sock[0]), sock[1]
            self.client_key = self.policy.client_key(self.client_ip)
            self.client_allowed = self.policy.allowed(self.client_ip)
            self._refused = self.server.admit(self)
            self._lifetime = self.loop.call_later(self.policy.max_session_time, self._lifetime_over)

    def connection_lost(self, error: Exception | None) -> None:
        self.server.release(self)
        if self._lifetime is not None:
            self._lifetime.cancel()
        super().connection_lost(error)

    # -- lifetime -------------------------------------------------------------
    # aiosmtpd's timeout is per command: a client that sends a NOOP now and then, or
    # its message a byte at a time, would keep its session (and its place) for hours.

    def _lifetime_over(self) -> None:
        """max_session_time is over: end the session now, or when its transaction ends (within ``timeout``)."""
        self._expired = True
        if self.transport is None:
            return
        if self.in_transaction():
            self._lifetime = self.loop.call_later(self.policy.timeout, self._end)
        else:
            self._end()

    def _end(self) -> None:
        """Say 421 and close (after the reply, when a message is being made durable)."""
        self._lifetime = None
        if self.transport is None or self.transport.is_closing():
            return
        if self._committing:
            return  # push() ends the session once the reply to DATA is out
        current = self._current or ["-", "", time.monotonic(), 0, 0]
        current[1] = current[1] or "max_session_time"
        self._finish(current, 421)
        reply = f"421 4.4.2 {self.policy.hostname} Error: session longer than max_session_time; closing"
        cast(asyncio.WriteTransport, self.transport).write(reply.encode() + b"\r\n")
        self.transport.close()

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command != "DATA":
            return await super()._call_handler_hook(command, *args)
        self._committing = True
        try:
            return await super()._call_handler_hook(command, *args)
        finally:
            self._committing = False

    def _cb_client_connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        super()._cb_client_connected(reader, writer)
        read_line = reader.readuntil

        # aiosmtpd reads command lines (separator LF), DATA lines (CRLF) and AUTH
        # answers through readuntil(): every line passes here first.
        async def readuntil(separator: bytes = b"\n") -> bytes:
            line = await read_line(separator)
            if separator == b"\n" and not self._secret_input:
                self._command_line(line)
            elif self._current is not None:
                self._current[3] += len(line)
            return line

        reader.readuntil = readuntil  # type: ignore[method-assign,assignment]

    async def _handle_client(self) -> None:
        if self._refused is not None:
            self._current = ["CONNECT", self._refused, time.monotonic(), 0, 0]
            self.close_after_reply = True
            await self.push(f"421 4.7.0 {self.policy.hostname} Error: {self._refused}; try again later")
            return
        pause = 0.0 if self.client_allowed else self.policy.greet_pause
        if pause > 0:
            # An early talker sends before the greeting: a spam engine that does not wait.
            try:
                early = await asyncio.wait_for(self._reader.read(1), pause)
            except TimeoutError:
                early = None
            if early is not None:
                if early:
                    self._current = ["CONNECT", "early-talker", time.monotonic(), len(early), 0]
                    await self.push(f"554 5.5.0 {self.policy.hostname} Protocol error: talked before the greeting")
                assert self.transport is not None
                self.transport.close()
                return
        await super()._handle_client()

    # -- commands -----------------------------------------------------------

    def _command_line(self, line: bytes) -> None:
        """Start the log record of a command line; refuse bare LF, bad addresses, junk floods."""
        text = line.decode("ascii", "replace")
        verb, _, arg = text.rstrip("\r\n").partition(" ")
        verb = verb.upper()
        query = arg.split(" ", 1)[0] if verb == "AUTH" else arg[:256]  # never log AUTH data
        self._current = [verb, query, time.monotonic(), len(line), 0]
        if not line.endswith(b"\r\n"):
            raise CommandRefused(f"521 5.5.2 {self.policy.hostname} Error: bare <LF> received", close=True)
        if self._junk >= self.policy.max_commands:
            raise CommandRefused("421 4.7.0 Too many commands without an accepted message, closing", close=True)
        if verb in ("MAIL", "RCPT"):
            problem = address_problem(verb, arg.rstrip("\r\n").strip())
            if problem:
                raise CommandRefused(f"501 5.1.3 Bad address syntax: {problem}")
        if "\r" in text[:-2]:
            raise CommandRefused("500 5.5.2 Bare CR in command line")

    # -- DATA -------------------------------------------------------------------
    # aiosmtpd reads DATA line by line in Python (about 40 awaits for a 2 KB message),
    # all of it in memory. data.read_data reads up to each ".<CRLF>", so a message takes
    # a few reads, and keeps a small bound of it in memory, the rest in a file.

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        content, size = await self._read_message()
        if self._current is not None:
            self._current[3] += size
        if content is None:
            self._set_post_data_state()
            await self.push("552 5.3.4 Error: Too much mail data")
            return
        # The handler reads it with data.loaded(): a file past a small bound, not bytes.
        self.envelope.content = self.envelope.original_content = content  # type: ignore[assignment]
        try:
            status = await self._call_handler_hook("DATA")
        finally:
            content.close()
        self._set_post_data_state()
        await self.push(status)

    async def _read_message(self) -> tuple[MessageData | None, int]:
        """The data up to <CRLF>.<CRLF> (spooled past a small bound) and the bytes read; None when over the size limit."""
        return await read_data(self._reader, self.data_size_limit or 0, self.policy.data_folder)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # Plain "<local@domain> params" skips the RFC 5322 parser (a tenth of a session's CPU).
        match = _SIMPLE_PATH.match(arg)
        if match:
            return match.group(1), match.group(2).lstrip()
        return super()._getaddr(arg)

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, CommandRefused):
            if error.close:
                self.close_after_reply = True
            return error.reply
        log.exception("relay: session with %s failed", self.client_ip)
        return "451 4.3.0 Local error in processing"

    async def push(self, status: str | bytes) -> None:
        reply = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        current = self._current
        reply = with_enhanced_code(reply, current[0] if current else "")
        continued = len(reply) > 3 and reply[3] == "-"
        if current is not None:
            current[4] += len(reply) + 2
            if not continued and not reply.startswith(("334", "354")):
                self._finish(current, int(reply[:3]) if reply[:3].isdigit() else 0)
        if continued:
            # The lines of a multi-line reply (EHLO) leave in one write, not one each.
            self._continued.append(reply)
            return
        if self._continued:
            reply = "\r\n".join([*self._continued, reply])
            self._continued.clear()
        await super().push(reply)
        if self.close_after_reply and self.transport is not None:
            self.transport.close()
        elif self._expired and current is not None and self._current is None and not self.in_transaction():
            self._end()  # the transaction in progress when max_session_time ran out has ended

    def _finish(self, current: list[Any], code: int) -> None:
        """Write the command's log line and count it against the junk limit."""
        self._current = None
        verb = current[0]
        if verb == "DATA" and code == 250:
            self.server.counts["accepted"] += 1
            self._junk = self._pending = 0
        elif verb in ("MAIL", "RCPT") and code < 400:
            self._pending += 1  # progress only if the transaction ends with an accepted message
        elif code >= 400 or verb in JUNK:
            self._junk += 1
            if code >= 400 and verb in ("MAIL", "RCPT", "DATA"):
                self.server.counts["refused"] += 1
        if self._pending and not self.in_transaction():
            # a transaction given up (RSET, EHLO, refused data): its MAIL and RCPT moved no mail either
            self._junk += self._pending
            self._pending = 0
        login = getattr(self.session.auth_data, "login", None) if self.session else None
        self.server.w3c.record(
            client_ip=self.client_ip,
            username=login.decode("utf-8", "replace") if isinstance(login, bytes) else login,
            server_ip=self.local_ip,
            server_port=self.local_port,
            method=verb,
            query=current[1],
            status=code,
            sent=current[4],
            received=current[3],
            taken_ms=int((time.monotonic() - current[2]) * 1000),
        )

    # Methods, not properties: aiosmtpd's __init__ runs inspect.getmembers(self).
    def protocol_name(self) -> str:
        """``SMTP``, ``ESMTP``, ``ESMTPS``, ``ESMTPA``, ``ESMTPSA`` (RFC 3848)."""
        assert self.session is not None
        if not self.session.extended_smtp:
            return "SMTP"
        return "ESMTP" + ("S" if self._tls_protocol else "") + ("A" if self.session.authenticated else "")

    def in_transaction(self) -> bool:
        return bool(self.envelope is not None and self.envelope.mail_from)

    # -- AUTH -----------------------------------------------------------------
    # aiosmtpd checks credentials synchronously; here they are only captured, then
    # checked in a thread (scrypt takes tens of milliseconds).

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        self._credentials = auth_data
        return AuthResult(success=False, handled=True)

    async def challenge_auth(self, *args: Any, **kwargs: Any) -> Any:
        self._secret_input = True
        try:
            return await super().challenge_auth(*args, **kwargs)
        finally:
            self._secret_input = False

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_PLAIN(_, args))

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        return await self._verify(await super().auth_LOGIN(_, args))

    async def _verify(self, parsed: AuthResult) -> AuthResult:
        credentials, self._credentials = self._credentials, None
        if credentials is None or self.policy.users is None:
            return parsed  # the client's answer could not be parsed; already answered
        login = credentials.login.decode("utf-8", "replace")
        # Every client is limited, `allow` ones too: a local program may be the guesser.
        key = self.client_key
        if self.server.auth_blocked(key):
            return self._auth_refused()  # no password is checked while the client is over the limit
        ok = await asyncio.get_running_loop().run_in_executor(None, self.policy.users.verify, login, credentials.password)
        if not ok:
            warn = self.server.auth_log.warn
            warn(key, "relay: failed AUTH from %s for user %r", self.client_ip, login)
            if self.server.auth_failed(key):
                warn(key, "relay: %s reached max_auth_failures; AUTH refused for a while", key)
                return self._auth_refused()
            return AuthResult(success=False, handled=False)  # smtp_AUTH answers 535 5.7.8
        return AuthResult(success=True, auth_data=LoginPassword(credentials.login, b""))

    def _auth_refused(self) -> AuthResult:
        self.close_after_reply = True
        return AuthResult(success=False, handled=False, message="421 4.7.0 Error: too many failed AUTH attempts; try again later")
