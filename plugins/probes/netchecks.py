"""The service probes: ``http``, ``tcp``, ``smtp`` and ``dns``, each a list of named checks.

::

    [probes.http]
    checks = [
      { name = "shop", url = "https://shop.example.com/health", expect_status = [200], contains = "ok" },
    ]

    [probes.tcp]
    checks = [
      { name = "imap", host = "mail.example.com", port = 143, starttls = "imap" },
      { name = "ldaps", host = "ldap.example.com", port = 636, tls = true },
    ]

    [probes.smtp]
    checks = [{ name = "mx", host = "mail.example.com", port = 25, starttls = true }]

    [probes.dns]
    checks = [{ name = "www", query = "www.example.com", type = "A", server = "192.0.2.53", expect = ["192.0.2.80"] }]

This module only declares the probes and checks their lists: it imports nothing that
speaks to the network. The code that runs the checks (``http_check``, ``tcp_check``,
``smtp_check``, ``dns_check``, and with them httpx, ssl and dnspython) is imported the
first time a probe is given a check, so an agent that configures none loads none of it.

Every check reports ``<probe>.up`` (1 or 0) on every run. Why a check is down (connection
refused, certificate expired, name not found) is kept as the check's detail, which the
alert mail shows next to the value (``detail(metric, labels)``).
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from alertmail import MetricInfo, Sample, Settings, hookimpl, parse_duration, setting
from alertmail.plugins.probes.checklist import Key, parse_checks

# A check's timeout when its entry gives none. The probe's whole run is bounded by its
# [probes.NAME].timeout (default: its interval, 10 s by default): a check must give up
# well before that, or a hung server would cost every check of the run its samples.
DEFAULT_TIMEOUT = 5.0
# The detail kept for the mail, at most this long.
DETAIL_CHARS = 500

_LABEL = re.compile(r"^[^\x00-\x1f\x7f]+$")


def spec(kind: str, default: Any = None, *, required: bool = False, example: str = "", choices: tuple[str, ...] = ()) -> Key:
    """A key of a check entry of one ``kind``: "str", "int", "port", "bool", "duration", "path",
    "regex", "statuses", "headers", "strings" or "choice" (one of ``choices``)."""
    return Key(functools.partial(_convert, kind, choices), default, required, example)


def _convert(kind: str, choices: tuple[str, ...], value: Any) -> Any:
    """The checked value, or ValueError saying what was expected."""
    if kind in ("str", "path", "choice", "regex"):
        if not isinstance(value, str) or not value or not _LABEL.match(value):
            raise ValueError(f"expected a non-empty string without control characters, got {value!r}")
        if kind == "path" and not os.path.isfile(value):
            raise ValueError(f"no such file: {value!r}; give the path of a PEM file of trusted CA certificates")
        if kind == "choice" and value not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        if kind == "regex":
            try:
                return re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if kind in ("int", "port"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if kind == "port" and not 1 <= value <= 65535:
            raise ValueError(f"expected a port from 1 to 65535, got {value}")
        return value
    if kind == "duration":
        seconds = parse_duration(value)
        if not 0 < seconds <= 3600:
            raise ValueError(f'expected a duration above 0 and at most 1h, like "10s", got {value!r}')
        return seconds
    if kind == "statuses":
        codes = [value] if isinstance(value, int) and not isinstance(value, bool) else value
        if not isinstance(codes, list) or not codes or not all(isinstance(c, int) and 100 <= c <= 599 for c in codes):
            raise ValueError(f"expected an HTTP status or a list of them, like [200, 204], got {value!r}")
        return tuple(codes)
    if kind == "headers":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _LABEL.match(k) and _LABEL.match(v) for k, v in value.items()
        ):
            example = '{ Accept = "text/html" }'
            raise ValueError(f"expected a table of header names and string values, like {example}, got {value!r}")
        return dict(value)
    if kind == "strings":
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items or not all(isinstance(i, str) and i and _LABEL.match(i) for i in items):
            raise ValueError(f'expected a string or a list of strings, like ["192.0.2.80"], got {value!r}')
        return tuple(items)
    raise AssertionError(kind)


def _http_more(check: dict[str, Any]) -> list[str]:
    url = check["url"]
    if not re.match(r"^https?://[^/\s]+", url, re.IGNORECASE):
        return [f"url: expected an http:// or https:// URL with a host, got {url!r}"]
    return []


def _tcp_more(check: dict[str, Any]) -> list[str]:
    if check["tls"] and check["starttls"]:
        return ["starttls: tls = true already speaks TLS from the first byte; keep one of tls and starttls"]
    if check["ca_file"] and not (check["tls"] or check["starttls"]):
        return ['ca_file: only used with tls = true or starttls = "smtp" | "imap" | "pop3"']
    return []


def _dns_more(check: dict[str, Any]) -> list[str]:
    server = check["server"]
    if server is not None:
        host, port = split_server(server)
        if not host or port is None:
            example = '"192.0.2.53" or "[2001:db8::53]:5353"'
            return [f"server: expected an IP address with an optional port, like {example}, got {server!r}"]
    return []


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed connection, as a person reads it: "connection refused", "name not found"."""
    import socket

    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", -5)):
            return f"name not found ({exc.strerror})"
        return str(exc.strerror)
    if isinstance(exc, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


def split_server(text: str, default_port: int = 53) -> tuple[str, int | None]:
    """(host, port) of "192.0.2.53", "192.0.2.53:5353", "2001:db8::53" or "[2001:db8::53]:5353"; port None when bad."""
    import ipaddress

    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return "", None
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "", None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return host, None
    return host, int(port)


TIMEOUT = spec("duration", DEFAULT_TIMEOUT)
NAME = spec("str", required=True, example='the label value of this check, e.g. name = "shop"')

HTTP_KEYS = {
    "name": NAME,
    "url": spec("str", required=True, example='the address to fetch, e.g. url = "https://example.com/health"'),
    "method": spec("choice", "GET", choices=("GET", "HEAD", "POST", "PUT", "OPTIONS", "PATCH", "DELETE")),
    "headers": spec("headers", None),
    "expect_status": spec("statuses", None),
    "contains": spec("regex", None),
    "timeout": TIMEOUT,
    "ca_file": spec("path", None),
    "follow_redirects": spec("bool", False),
}
TCP_KEYS = {
    "name": NAME,
    "host": spec("str", required=True, example='a host name or address, e.g. host = "mail.example.com"'),
    "port": spec("port", required=True, example="e.g. port = 443"),
    "tls": spec("bool", False),
    "starttls": spec("choice", None, choices=("smtp", "imap", "pop3")),
    "ca_file": spec("path", None),
    "timeout": TIMEOUT,
}
SMTP_KEYS = {
    "name": NAME,
    "host": spec("str", required=True, example='a host name or address, e.g. host = "mail.example.com"'),
    "port": spec("port", 25),
    "starttls": spec("bool", False),
    "ehlo": spec("str", None),
    "ca_file": spec("path", None),
    "verify": spec("bool", True),
    "timeout": TIMEOUT,
}
DNS_KEYS = {
    "name": NAME,
    "query": spec("str", required=True, example='the name to look up, e.g. query = "www.example.com"'),
    "type": spec("choice", "A", choices=("A", "AAAA", "CNAME", "MX", "NS", "PTR", "SOA", "SRV", "TXT", "CAA")),
    "server": spec("str", None),
    "expect": spec("strings", None),
    "timeout": TIMEOUT,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ChecksSettings(Settings):
    """``[probes.http]``, ``[probes.tcp]``, ``[probes.smtp]``, ``[probes.dns]``: a list of named checks."""

    checks: list[Any] = setting(
        "any", [], help='list of check tables, each with its name = "LABEL" and the keys of its probe (docs/metrics.md)'
    )


def _nothing_more(check: dict[str, Any]) -> list[str]:
    return []


@dataclass(frozen=True)
class ServiceKind:
    """What one service probe checks: its name and metrics, the keys of a check, and the module that runs it.

    ``runner`` names the module (in this package) that runs the checks; it defines
    ``async def run(check) -> Result`` where Result has ``samples(check, stamp)`` and ``detail``.
    """

    name: str
    description: str
    runner: str
    keys: Mapping[str, Key]
    example: str
    prefixes: tuple[str, ...]  # the metrics whose alerts get this probe's detail
    metrics: tuple[MetricInfo, ...]
    more: Callable[[dict[str, Any]], list[str]] = _nothing_more  # problems no single key shows, as "key: problem" lines


class ServiceProbe:
    """A probe of one ``ServiceKind``: a checks list, a lazily imported runner, and each check's detail."""

    options: ClassVar[type[ChecksSettings]] = ChecksSettings
    interval: float | None = None
    configured_only = True  # no [probes.NAME] table: nothing to check, the probe does not run

    def __init__(self, kind: ServiceKind) -> None:
        self.kind = kind
        self.name = kind.name
        self.description = kind.description
        self.metrics = kind.metrics
        self.checks: list[dict[str, Any]] = []
        self.details: dict[str, str] = {}  # check name -> what its last run found
        self._run: Any = None

    def configure(self, settings: ChecksSettings) -> None:
        entries, problems = parse_checks(settings.checks, self.kind.keys, self.kind.example, self.kind.more)
        if problems:
            raise ValueError("\n".join(problems))
        checks = [check for _, check in entries]
        self.checks = checks
        self.details = {k: v for k, v in self.details.items() if any(c["name"] == k for c in checks)}
        if checks and self._run is None:
            self._run = importlib.import_module(f"{__package__}.{self.kind.runner}").run

    async def collect(self) -> list[Sample]:
        if not self.checks:
            return []
        results = await asyncio.gather(*(self._run(check) for check in self.checks))
        stamp = time.time()
        out: list[Sample] = []
        for check, result in zip(self.checks, results):
            self.details[check["name"]] = result.detail[:DETAIL_CHARS]
            out += result.samples(check, stamp)
        return out

    def detail(self, metric: str, labels: Mapping[str, str]) -> str | None:
        """What the check named by ``labels`` found on its last run (why it is down), for the alert mail."""
        if not metric.startswith(self.kind.prefixes):
            return None
        return self.details.get(labels.get("check", ""))

    def __repr__(self) -> str:
        return f"<probe {self.name}>"


CHECK = ("check",)


HTTP = ServiceKind(
    "http",
    "HTTP and HTTPS endpoints: status, body, response time, certificate",
    runner="http_check",
    keys=HTTP_KEYS,
    example='{ name = "shop", url = "https://shop.example.com/health" }',
    prefixes=("http.",),
    metrics=(
        MetricInfo("http.up", "", "1 when the answer came in time with an expected status (and body); else 0", CHECK),
        MetricInfo("http.status_code", "", "HTTP status of the answer (of the last one when redirects are followed)", CHECK),
        MetricInfo("http.response_seconds", "seconds", "from the start of the connection to the whole answer read", CHECK),
        MetricInfo("http.cert_days_left", "days", "days until the server certificate expires (https; below 0: expired)", CHECK),
    ),
    more=_http_more,
)
TCP = ServiceKind(
    "tcp",
    "TCP ports, optionally with TLS or STARTTLS: connect time, certificate validity",
    runner="tcp_check",
    keys=TCP_KEYS,
    example='{ name = "imap", host = "mail.example.com", port = 143, starttls = "imap" }',
    prefixes=("tcp.", "tls."),
    metrics=(
        MetricInfo("tcp.up", "", "1 when the port accepted the connection (and TLS started, with tls or starttls)", CHECK),
        MetricInfo("tcp.connect_seconds", "seconds", "time to open the TCP connection", CHECK),
        MetricInfo("tls.cert_days_left", "days", "days until the server certificate expires (below 0 when expired)", CHECK),
        MetricInfo("tls.cert_valid", "", "1 when the certificate chain is trusted and names the host; else 0", CHECK),
    ),
    more=_tcp_more,
)
SMTP = ServiceKind(
    "smtp",
    "SMTP servers: banner, EHLO, STARTTLS and QUIT answered in time",
    runner="smtp_check",
    keys=SMTP_KEYS,
    example='{ name = "mx", host = "mail.example.com", port = 25 }',
    prefixes=("smtp.",),
    metrics=(
        MetricInfo("smtp.up", "", "1 when the server answered banner, EHLO (STARTTLS) and QUIT as it should; else 0", CHECK),
        MetricInfo(
            "smtp.response_seconds",
            "seconds",
            "time one step took: step = banner (from connect), ehlo, starttls (with the TLS handshake), quit, total",
            ("check", "step"),
        ),
    ),
)
DNS = ServiceKind(
    "dns",
    "DNS answers: resolution, response time, expected records",
    runner="dns_check",
    keys=DNS_KEYS,
    example='{ name = "www", query = "www.example.com", type = "A" }',
    prefixes=("dns.",),
    metrics=(
        MetricInfo("dns.up", "", "1 when the server answered with records of the type asked for; else 0", CHECK),
        MetricInfo("dns.response_seconds", "seconds", "time to the answer", CHECK),
        MetricInfo("dns.answer_matches", "", "1 when every value of expect is in the answer, else 0 (with expect)", CHECK),
    ),
    more=_dns_more,
)
PROBES = (HTTP, TCP, SMTP, DNS)


@hookimpl
def register_probes(register):
    for kind in PROBES:
        register(ServiceProbe(kind))
