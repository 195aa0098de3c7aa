"""Runs one ``tcp`` check: connect, then optionally TLS (at once, or after STARTTLS).

The certificate is checked as a client would check it: the chain up to a trusted CA
(the system's, or ``ca_file``) and the host name. A certificate that fails is read once
more over an unchecked handshake, so its days left are still reported (below 0 when it
has expired) and the detail says what is wrong with it. Imported by ``netchecks`` only
when a ``tcp`` (or ``http``/``smtp``) check is configured.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from dataclasses import dataclass
from typing import Any

from alertmail import Sample
from alertmail.plugins.probes.netchecks import describe_error

# check's ca_file (None: the system's CAs) -> a verifying client context; loading the
# system's CAs costs milliseconds, so each is made once.
_CONTEXTS: dict[str | None, ssl.SSLContext] = {}


def client_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying TLS client context trusting ``ca_file``, or the system's CAs when None."""
    context = _CONTEXTS.get(ca_file)
    if context is None:
        context = _CONTEXTS[ca_file] = ssl.create_default_context(cafile=ca_file)
    return context


def unverified_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def days_left_of(ssl_object: Any) -> float | None:
    """Days until the peer certificate's notAfter (negative when past).

    A verified certificate's dates come from the ssl module; an unverified one (read only
    to say when it expired) is parsed from its DER form, the one case that loads cryptography.
    """
    if ssl_object is None:
        return None
    verified = ssl_object.getpeercert()
    if verified and "notAfter" in verified:
        return (ssl.cert_time_to_seconds(verified["notAfter"]) - time.time()) / 86400.0
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    not_after = x509.load_der_x509_certificate(der).not_valid_after_utc
    return (not_after - dt.datetime.now(dt.UTC)).total_seconds() / 86400.0


def verify_reason(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind ``exc`` (raised by a library around it), if any."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return exc
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


def certificate_problem(exc: ssl.SSLCertVerificationError) -> str:
    """What is wrong with the certificate, in words: "certificate has expired", "Hostname mismatch ..."."""
    return str(exc.verify_message or exc.reason or exc)


def days_text(days: float) -> str:
    when = (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).strftime("%Y-%m-%d %H:%M UTC")
    if days < 0:
        return f"expired {-days:.1f} days ago ({when})"
    return f"expires in {days:.1f} days ({when})"


class StartTlsRefused(Exception):
    """The server did not offer or accept STARTTLS; the message says what it answered."""


async def read_reply(reader: asyncio.StreamReader, protocol: str, tag: str = "") -> str:
    """One whole reply of the server: SMTP's continued lines, IMAP's untagged ones, POP3's one line."""
    lines = []
    while True:
        raw = await reader.readline()
        if not raw:
            raise ConnectionResetError("the server closed the connection")
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        lines.append(line)
        if protocol == "smtp" and not (len(line) > 3 and line[3] == "-"):
            return "\n".join(lines)
        if protocol == "pop3":
            return line
        if protocol == "imap" and (not tag or line.startswith(f"{tag} ")):
            return "\n".join(lines)


async def starttls_dialogue(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str) -> None:
    """Greeting, then the protocol's STARTTLS command; raises StartTlsRefused unless the server says go ahead."""

    async def say(command: str, tag: str = "") -> str:
        writer.write(command.encode() + b"\r\n")
        await writer.drain()
        return await read_reply(reader, protocol, tag)

    greeting = await read_reply(reader, protocol)
    if protocol == "smtp":
        if not greeting.startswith("220"):
            raise StartTlsRefused(f"banner: {greeting[:200]}")
        ehlo = await say("EHLO alertmail.invalid")
        if not ehlo.startswith("250") or "STARTTLS" not in ehlo.upper():
            raise StartTlsRefused(f"STARTTLS not offered; EHLO answered: {ehlo[:200]}")
        answer = await say("STARTTLS")
        if not answer.startswith("220"):
            raise StartTlsRefused(f"STARTTLS answered: {answer[:200]}")
    elif protocol == "imap":
        if not greeting.startswith("* OK"):
            raise StartTlsRefused(f"greeting: {greeting[:200]}")
        answer = await say("a1 STARTTLS", "a1")
        if not answer.splitlines()[-1].startswith("a1 OK"):
            raise StartTlsRefused(f"STARTTLS answered: {answer[:200]}")
    else:
        if not greeting.startswith("+OK"):
            raise StartTlsRefused(f"greeting: {greeting[:200]}")
        answer = await say("STLS")
        if not answer.startswith("+OK"):
            raise StartTlsRefused(f"STLS answered: {answer[:200]}")


@dataclass
class Result:
    up: bool
    detail: str
    connect_seconds: float | None = None
    days_left: float | None = None
    cert_valid: bool | None = None

    def samples(self, check: dict[str, Any], stamp: float) -> list[Sample]:
        labels = {"check": check["name"]}
        out = [Sample("tcp.up", 1.0 if self.up else 0.0, labels, stamp)]
        if self.connect_seconds is not None:
            out.append(Sample("tcp.connect_seconds", self.connect_seconds, labels, stamp))
        if self.cert_valid is not None:
            out.append(Sample("tls.cert_valid", 1.0 if self.cert_valid else 0.0, labels, stamp))
        if self.days_left is not None:
            out.append(Sample("tls.cert_days_left", self.days_left, labels, stamp))
        return out


async def _open(check: dict[str, Any], context: ssl.SSLContext | None) -> tuple[asyncio.StreamWriter, float]:
    """Connect (and start TLS with ``context``); the writer and the TCP connect time."""
    host, port = check["host"], check["port"]
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    connect = time.perf_counter() - start
    try:
        if context is not None:
            if check["starttls"]:
                await starttls_dialogue(reader, writer, check["starttls"])
            await writer.start_tls(context, server_hostname=host)
    except BaseException:
        writer.close()
        raise
    return writer, connect


async def close(writer: asyncio.StreamWriter) -> None:
    """Close the connection, waiting a second at most for the server's side (a TLS close_notify)."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, TimeoutError, ssl.SSLError):
        pass


async def _check(check: dict[str, Any]) -> Result:
    where = f"{check['host']}:{check['port']}"
    tls = check["tls"] or bool(check["starttls"])
    how = f"STARTTLS ({check['starttls']})" if check["starttls"] else "TLS"
    try:
        writer, connect = await _open(check, client_context(check["ca_file"]) if tls else None)
    except ssl.SSLCertVerificationError as exc:
        problem = certificate_problem(exc)
        days, took = None, None
        try:  # once more, unchecked, only to read the certificate's dates
            writer, took = await _open(check, unverified_context())
            days = days_left_of(writer.get_extra_info("ssl_object"))
            await close(writer)
        except (OSError, ssl.SSLError, StartTlsRefused, ValueError):
            pass
        detail = f"{where}: {how} certificate not valid: {problem}"
        if days is not None:
            detail += f"; it {days_text(days)}"
        return Result(True, detail, took, days, False)
    except StartTlsRefused as exc:
        return Result(False, f"{where}: {exc}")
    except ssl.SSLError as exc:
        return Result(False, f"{where}: {how} handshake failed: {exc.reason or exc}")
    except (OSError, EOFError) as exc:
        return Result(False, f"{where}: {describe_error(exc)}")
    try:
        days = days_left_of(writer.get_extra_info("ssl_object")) if tls else None
    finally:
        await close(writer)
    detail = f"{where} accepted the connection in {connect * 1000:.0f} ms"
    if days is not None:
        detail += f"; {how} certificate valid, {days_text(days)}"
    return Result(True, detail, connect, days, True if tls else None)


async def run(check: dict[str, Any]) -> Result:
    """One run of one check, bounded by its timeout; never raises for what the server does."""
    try:
        return await asyncio.wait_for(_check(check), check["timeout"])
    except TimeoutError:
        return Result(False, f"{check['host']}:{check['port']}: no answer within {check['timeout']:g}s")
