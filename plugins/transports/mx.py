"""The mx transport: deliver straight to each recipient domain's mail servers (RFC 5321 §5).

Recipients are grouped by domain. A domain's MX records are sorted by preference,
equal preferences shuffled, and each host's addresses (IPv4 first, then IPv6) are
tried in turn until one takes the mail; a host that cannot be reached, breaks the
session or answers 421 hands over to the next. A domain with no MX record is its
own mail server (implicit MX, its A/AAAA records).

DNS answers that settle the matter are permanent: a null MX (RFC 7505, ``0 .``)
gives 556 5.1.10, a domain that does not exist 550 5.1.2, one with neither MX nor
address 550 5.4.4. A DNS timeout, SERVFAIL or no reachable name server is
temporary (451 4.4.3). Codes on statuses made here are the reply an MTA would
give; code 0 means no server answered at all.

Modes, as the IIS SMTP service had them: ``"mx"`` (direct only),
``"mx-then-smarthost"`` (direct first; what is unreachable or fails temporarily
goes to the smart host) and ``"smarthost"`` (always the smart host). A smart host
written ``[10.10.10.1]:25`` is an address and skips DNS; a name is looked up as a
host (A/AAAA), not as a mail domain.

TLS towards MX hosts is opportunistic by default, as between MTAs (RFC 7435): STARTTLS
when offered, certificates not checked, and plain text on a new connection when the
TLS handshake fails, since a cleartext delivery is what opportunistic TLS accepts
anyway and a broken TLS stack at the far end must not hold mail for days. With
``tls = "required"`` (or ``smart_host_tls`` for the smart host alone) nothing goes in
clear text: no STARTTLS, a failed handshake or, with ``tls_verify``, a certificate that
fails its check is a temporary failure with the reason. A recipient domain's MTA-STS
policy (RFC 8461, ``mtasts``) in enforce mode makes TLS required and verified for its
MX hosts, and rules out the hosts it does not list.

    [transports.mx]
    mode = "mx-then-smarthost"
    smart_host = "[10.10.10.1]:25"
    port = 25
    resolver = "127.0.0.1:5353"       # optional; default: the system resolver
    helo = "web01.example.com"
    tls = "required"                  # never in clear text; tls_verify = true to check certificates
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

from alertmail import (
    AlertmailError,
    DeliveryResult,
    Envelope,
    RecipientStatus,
    Status,
    TransportContext,
    hookimpl,
    message_bytes,
    parse_address,
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

log = logging.getLogger("alertmail.transport.mx")
TLS_CHOICES = ("opportunistic", "required", "none")


class RouteError(AlertmailError):
    """DNS settled (or could not settle) where a domain's mail goes; ``status`` says which."""

    def __init__(self, status: RecipientStatus) -> None:
        super().__init__(status.message)
        self.status = status


def _temporary(message: str) -> RecipientStatus:
    return RecipientStatus(Status.TEMPORARY, 451, message, "4.4.3")


def _permanent(code: int, message: str, enhanced: str) -> RecipientStatus:
    return RecipientStatus(Status.PERMANENT, code, message, enhanced)


def _literal(text: str) -> str | None:
    """The IP address in a domain literal ``[192.0.2.1]`` / ``[IPv6:2001:db8::1]``, else None."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    inner = text[1:-1]
    if inner.lower().startswith("ipv6:"):
        inner = inner[5:]
    try:
        return str(ipaddress.ip_address(inner))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class MxSettings(ClientSettings):
    """``[transports.mx]``."""

    mode: str = setting(
        "str",
        "mx",
        help="mx (direct), mx-then-smarthost, or smarthost (always)",
        choices=("mx", "mx-then-smarthost", "smarthost"),
    )
    smart_host: str | None = setting("str", None, help='"[10.10.10.1]:25" (an address: no DNS) or "relay.example.com:25"')
    port: int = setting("int", 25, minimum=1, maximum=65535, help="port of the MX hosts")
    resolver: str | None = setting("str", None, help='DNS server as "127.0.0.1:5353"; default: the system resolver')
    dns_timeout: float = setting("duration", 10.0, minimum=0.001, help="longest one DNS lookup may take, retries included")
    helo: str | None = setting("str", None, nonempty=True, help="name given in EHLO; default: the agent's host name")
    tls: str = setting(
        "str",
        "opportunistic",
        help="opportunistic (STARTTLS when offered, unverified), required (never in clear text) or none",
        choices=TLS_CHOICES,
    )
    tls_verify: bool = setting("bool", False, help='with tls = "required": check the certificate chain and the host name')
    ca_file: Path | None = setting("path", None, help="PEM file of CA certificates to trust instead of the system's")
    smart_host_tls: str | None = setting("str", None, help="tls for the smart host; default: as tls", choices=TLS_CHOICES)
    smart_host_tls_verify: bool | None = setting("bool", None, help="tls_verify for the smart host; default: as tls_verify")
    mta_sts: bool = setting("bool", True, help="honour the recipient domains' MTA-STS policies (RFC 8461)")
    mta_sts_timeout: float = setting("duration", 20.0, minimum=0.001, help="longest an MTA-STS policy fetch over HTTPS may take")
    mta_sts_port: int = setting("int", 443, help="for tests only: the HTTPS port of mta-sts.<domain> (RFC 8461: 443)")


class MxTransport:
    """Delivers by looking up each recipient domain's MX hosts, with an optional smart host."""

    name: ClassVar[str] = "mx"
    options: ClassVar[type[MxSettings]] = MxSettings

    def __init__(self, settings: MxSettings, context: TransportContext) -> None:
        self.mode: str = settings.mode
        self.port: int = settings.port
        if not 0 < self.port < 65536:
            raise ValueError(f"transports.mx.port: {self.port} is out of range 1-65535")
        self.dns_timeout: float = settings.dns_timeout
        self.resolver_address: tuple[str, int] | None = None
        if settings.resolver:
            try:
                self.resolver_address = parse_address(settings.resolver, default_port=53)
            except ValueError as exc:
                raise ValueError(f"transports.mx.resolver: {exc}") from None
            if not is_ip(self.resolver_address[0]):
                raise ValueError(
                    f'transports.mx.resolver: expected an IP address like "127.0.0.1:5353", got {settings.resolver!r}'
                )
        self.smart_host: tuple[str, int, bool] | None = None
        text = settings.smart_host
        if text:
            try:
                host, port = parse_address(text, default_port=25)
            except ValueError as exc:
                raise ValueError(f"transports.mx.smart_host: {exc}") from None
            # "[relay.example.com]" means what it means to Postfix: the host's address, no MX lookup,
            # which is how a plain name is read here too.
            self.smart_host = (host, port, is_ip(host))
        elif self.mode != "mx":
            raise ValueError(f'transports.mx: mode = "{self.mode}" needs smart_host, e.g. smart_host = "[10.10.10.1]:25"')
        tls = settings.tls
        verify = settings.tls_verify
        smart_tls = settings.smart_host_tls or tls
        smart_verify = verify if settings.smart_host_tls_verify is None else settings.smart_host_tls_verify
        for key, mode, check in (("tls_verify", tls, verify), ("smart_host_tls_verify", smart_tls, smart_verify)):
            if check and mode != "required":
                needs = key.replace("_verify", "")
                raise ValueError(
                    f'transports.mx.{key}: certificates are checked only when TLS is required; set {needs} = "required"'
                )
        # The smart host's own policy travels with its endpoint (see smtpclient.Endpoint).
        self.smart_host_tls: dict[str, Any] = {"tls": smart_tls, "verify": smart_verify}
        if smart_tls == "required":
            self.smart_host_tls["policy"] = 'smart_host_tls = "required"' if settings.smart_host_tls else 'tls = "required"'
        session = SessionSettings(
            helo=helo_name(settings.helo or context.hostname, "transports.mx.helo"),
            timeouts=Timeouts.of(settings),
            tls=tls,
            tls_verify=verify,
            ca_file=str(settings.ca_file) if settings.ca_file else None,
        )
        self.mta_sts: Any = None
        if settings.mta_sts and self.mode != "smarthost":
            from alertmail.plugins.transports.mtasts import MtaSts

            port = settings.mta_sts_port
            if not 0 < port < 65536:
                raise ValueError(f"transports.mx.mta_sts_port: {port} is out of range 1-65535")
            self.mta_sts = MtaSts(
                Path(context.state_dir) / "mta-sts.json",
                query=self._query,
                addresses=self._addresses,
                timeout=settings.mta_sts_timeout,
                port=port,
                ca_file=session.ca_file,
                log=log,
            )
        from alertmail.plugins.transports.smtppool import SessionPool  # the session code loads with a transport in use

        self.pool = SessionPool(session, idle_timeout=settings.idle_timeout, log=log)
        self._resolver: Any = None

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        """Deliver to every recipient domain; per-recipient statuses, never an exception."""
        data = message_bytes(message)
        results: dict[str, RecipientStatus] = {}
        if self.mode == "smarthost":
            results.update(await self._via_smart_host(envelope.sender, envelope.recipients, data))
        else:
            domains: dict[str, list[str]] = {}
            for rcpt in envelope.recipients:
                local, at, domain = rcpt.rpartition("@")
                if not at or not local or not domain:
                    results[rcpt] = _permanent(553, f"bad recipient address {rcpt!r}", "5.1.3")
                else:
                    domains.setdefault(domain.lower(), []).append(rcpt)
            found = await asyncio.gather(
                *(self._direct(d, rs, envelope.sender, data) for d, rs in domains.items()), return_exceptions=True
            )
            for (domain, rcpts), outcome in zip(domains.items(), found):
                if isinstance(outcome, BaseException):
                    # One domain's defect must not cost the others their (perhaps done) delivery.
                    log.error("delivery to %s failed", domain, exc_info=outcome)
                    outcome = {r: _temporary(f"{domain}: {type(outcome).__name__}: {outcome}") for r in rcpts}
                results.update(outcome)
            if self.mode == "mx-then-smarthost":
                retry = [r for r, s in results.items() if s.status is Status.TEMPORARY]
                if retry:
                    log.info("direct delivery failed temporarily for %d recipient(s); trying the smart host", len(retry))
                    results.update(await self._via_smart_host(envelope.sender, retry, data))
        return DeliveryResult({r: results[r] for r in envelope.recipients})

    async def _direct(self, domain: str, recipients: list[str], sender: str, data: bytes) -> dict[str, RecipientStatus]:
        literal = _literal(domain)
        try:
            hosts: list[tuple[str, list[str] | None]] = [(literal, [literal])] if literal else await self._mx_hosts(domain)
        except RouteError as exc:
            return dict.fromkeys(recipients, exc.status)
        failures: list[RecipientStatus] = []
        tls: dict[str, Any] = {}
        if self.mta_sts is not None and not literal:
            policy = await self.mta_sts.policy(domain)
            if policy is not None and policy.mode != "none":
                hosts = self._apply_policy(domain, policy, hosts, failures)
                rule = f"the MTA-STS policy of {domain} (mode {policy.mode})"
                if policy.mode == "enforce":
                    tls = {"tls": "required", "verify": True, "policy": rule}
                elif self.pool.settings.tls == "opportunistic":
                    tls = {"verify": True, "policy": rule}  # testing: check and report, deliver anyway
        found = await self.pool.deliver(self._mx_endpoints(hosts, failures, tls=tls), sender, recipients, data)
        fallback = failures[-1] if failures else _temporary(f"no address found for any mail server of {domain}")
        return {r: found.get(r, fallback) for r in recipients}

    def _apply_policy(
        self, domain: str, policy: Any, hosts: list[tuple[str, list[str] | None]], failures: list[RecipientStatus]
    ) -> list[tuple[str, list[str] | None]]:
        """The MX hosts an MTA-STS policy allows (RFC 8461 §4.1); in testing mode all, with a warning."""
        allowed = [h for h in hosts if policy.allows(h[0])]
        for host, _ in hosts:
            if policy.allows(host):
                continue
            if policy.mode == "enforce":
                failures.append(
                    RecipientStatus(
                        Status.TEMPORARY,
                        0,
                        f"mail server {host} is not listed in the MTA-STS policy of {domain} (mode enforce); not used",
                        "4.7.5",
                    )
                )
                log.warning("%s", failures[-1].message)
            else:
                log.warning("mail server %s is not listed in the MTA-STS policy of %s (mode testing); used anyway", host, domain)
        return allowed if policy.mode == "enforce" else hosts

    async def _via_smart_host(self, sender: str, recipients: Sequence[str], data: bytes) -> dict[str, RecipientStatus]:
        assert self.smart_host is not None
        host, port, literal = self.smart_host
        failures: list[RecipientStatus] = []
        hosts = [(host, [host] if literal else None)]
        found = await self.pool.deliver(
            self._mx_endpoints(hosts, failures, port, tls=self.smart_host_tls), sender, recipients, data
        )
        fallback = failures[-1] if failures else _temporary(f"no address found for smart host {host}")
        return {r: found.get(r, fallback) for r in recipients}

    async def _mx_endpoints(
        self,
        hosts: list[tuple[str, list[str] | None]],
        failures: list[RecipientStatus],
        port: int | None = None,
        *,
        tls: dict[str, Any] | None = None,
    ) -> AsyncGenerator[Endpoint, None]:
        """Each host's addresses in turn, looked up only when the hosts before failed."""
        for host, addresses in hosts:
            if addresses is None:
                try:
                    addresses = await self._addresses(host)
                except RouteError as exc:
                    # A broken MX host name is the domain's DNS to fix, not proof the mail cannot go.
                    failures.append(_temporary(f"mail server {host}: {exc.status.message}"))
                    log.info("%s; trying the next", failures[-1].message)
                    continue
                if not addresses:
                    failures.append(_temporary(f"mail server {host} has no address record"))
                    continue
            for address in addresses:
                yield Endpoint(host, port or self.port, address, **(tls or {}))

    async def _mx_hosts(self, domain: str) -> list[tuple[str, list[str] | None]]:
        """The domain's mail servers, best first (addresses looked up later), or RouteError."""
        import dns.name

        answer = await self._query(domain, "MX")
        if answer is None:
            # RFC 5321 §5.1: no MX record: the domain itself is the host (implicit MX).
            addresses = await self._addresses(domain)
            if not addresses:
                raise RouteError(_permanent(550, f"{domain} has neither an MX nor an address record", "5.4.4"))
            return [(domain, addresses)]
        real = [r for r in answer if r.exchange != dns.name.root]
        if not real:
            raise RouteError(_permanent(556, f"{domain} accepts no mail (null MX, RFC 7505)", "5.1.10"))
        by_preference: dict[int, list[str]] = {}
        for record in real:
            by_preference.setdefault(record.preference, []).append(record.exchange.to_text(omit_final_dot=True))
        hosts: list[tuple[str, list[str] | None]] = []
        for preference in sorted(by_preference):
            names = list(dict.fromkeys(by_preference[preference]))
            random.shuffle(names)  # RFC 5321 §5.1: spread load over equal preferences
            hosts += [(name, _literal_ip(name)) for name in names]
        return hosts

    async def _addresses(self, host: str) -> list[str]:
        """A then AAAA addresses of ``host``; [] when it has none; RouteError when DNS fails."""
        if is_ip(host):
            return [host]
        answers = await asyncio.gather(self._query(host, "A"), self._query(host, "AAAA"), return_exceptions=True)
        addresses: list[str] = []
        errors = [a for a in answers if isinstance(a, BaseException)]
        for answer in answers:
            if answer is not None and not isinstance(answer, BaseException):
                addresses += [r.address for r in answer if hasattr(r, "address")]
        if not addresses and errors:
            raise errors[0]
        return list(dict.fromkeys(addresses))

    async def _query(self, name: str, rdtype: str) -> Any:
        """The answer, None for no record of that type, RouteError for NXDOMAIN or a DNS failure."""
        import dns.exception
        import dns.name
        import dns.resolver

        resolver = self._get_resolver()
        try:
            return await asyncio.wait_for(resolver.resolve(name.rstrip(".") + ".", rdtype, search=False), self.dns_timeout + 1.0)
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN:
            raise RouteError(_permanent(550, f"domain {name} does not exist (NXDOMAIN)", "5.1.2")) from None
        except (dns.exception.Timeout, TimeoutError):
            raise RouteError(_temporary(f"DNS lookup of {name} {rdtype} timed out")) from None
        except dns.resolver.NoNameservers as exc:
            raise RouteError(
                _temporary(f"DNS lookup of {name} {rdtype} failed: no name server answered ({_first_line(exc)})")
            ) from None
        except (dns.name.LabelTooLong, dns.name.EmptyLabel, dns.name.NameTooLong) as exc:
            raise RouteError(_permanent(553, f"bad domain {name!r}: {exc}", "5.1.2")) from None
        except dns.exception.DNSException as exc:
            raise RouteError(_temporary(f"DNS lookup of {name} {rdtype} failed: {_first_line(exc)}")) from None

    def _get_resolver(self) -> Any:
        if self._resolver is None:
            import dns.asyncresolver

            if self.resolver_address:
                resolver = dns.asyncresolver.Resolver(configure=False)
                resolver.nameservers = [self.resolver_address[0]]
                resolver.port = self.resolver_address[1]
            else:
                resolver = dns.asyncresolver.Resolver()
            resolver.lifetime = self.dns_timeout
            resolver.timeout = min(resolver.timeout, self.dns_timeout)
            self._resolver = resolver
        return self._resolver

    async def close(self) -> None:
        """Close the sessions kept open for reuse."""
        await self.pool.close()


def _literal_ip(name: str) -> list[str] | None:
    """An MX that names an address (bad practice, but seen) needs no lookup."""
    return [name] if is_ip(name) else None


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


@hookimpl
def register_transports(register):
    register(MxTransport)
