"""Runs one ``dns`` check with dnspython's async resolver.

With ``server`` the question goes to that server only; without, to the resolvers of
this host's resolv.conf (read once). Values of ``expect`` are compared with the answer's
records as text, without the final dot and without case (TXT records: their text joined).
Imported by ``netchecks`` only when a ``dns`` check is configured.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.rdatatype
import dns.resolver

from alertmail import Sample
from alertmail.plugins.probes.netchecks import split_server

# server (None: this host's resolvers) -> resolver; reading resolv.conf is file I/O, done once.
_RESOLVERS: dict[str | None, dns.asyncresolver.Resolver] = {}


@dataclass
class Result:
    up: bool
    detail: str
    seconds: float | None = None
    matches: bool | None = None

    def samples(self, check: dict[str, Any], stamp: float) -> list[Sample]:
        labels = {"check": check["name"]}
        out = [Sample("dns.up", 1.0 if self.up else 0.0, labels, stamp)]
        if self.seconds is not None:
            out.append(Sample("dns.response_seconds", self.seconds, labels, stamp))
        if check["expect"] is not None:
            out.append(Sample("dns.answer_matches", 1.0 if self.matches else 0.0, labels, stamp))
        return out


def _resolver(server: str | None) -> dns.asyncresolver.Resolver:
    resolver = _RESOLVERS.get(server)
    if resolver is None:
        if server is None:
            resolver = dns.asyncresolver.Resolver()
        else:
            host, port = split_server(server)
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [host]
            resolver.port = port or 53
        resolver.cache = None
        _RESOLVERS[server] = resolver
    return resolver


def normal(text: str) -> str:
    return text.strip().rstrip(".").lower()


def _value(rdata: Any) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return rdata.to_text()


async def run(check: dict[str, Any]) -> Result:
    """One run of one check; never raises for what the server does."""
    query, kind = check["query"], check["type"]
    where = f"{query} {kind}" + (f" at {check['server']}" if check["server"] else "")
    start = time.perf_counter()
    try:
        answer = await _resolver(check["server"]).resolve(query, kind, search=False, lifetime=check["timeout"])
    except dns.resolver.NXDOMAIN:
        return Result(False, f"{where}: name not found (NXDOMAIN)", time.perf_counter() - start)
    except dns.resolver.NoAnswer:
        return Result(False, f"{where}: the name exists but has no {kind} record", time.perf_counter() - start)
    except dns.resolver.LifetimeTimeout:
        return Result(False, f"{where}: no answer within {check['timeout']:g}s")
    except dns.resolver.NoNameservers as exc:
        return Result(False, f"{where}: no server answered it: {exc}")
    except dns.exception.DNSException as exc:
        return Result(False, f"{where}: {exc}")
    seconds = time.perf_counter() - start
    values = [_value(r) for r in answer]
    shown = ", ".join(values[:10]) + (f" (and {len(values) - 10} more)" if len(values) > 10 else "")
    detail = f"{where}: {shown} in {seconds * 1000:.0f} ms"
    matches = None
    if check["expect"] is not None:
        have = {normal(v) for v in values}
        missing = [e for e in check["expect"] if normal(e) not in have]
        matches = not missing
        if missing:
            detail += f"; expected {', '.join(missing)} is not in the answer"
    return Result(True, detail, seconds, matches)
