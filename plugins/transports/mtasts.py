"""MTA-STS (RFC 8461) for the mx transport: a recipient domain's policy, fetched and cached.

A domain announces a policy with a TXT record ``_mta-sts.<domain>`` (``v=STSv1; id=…``)
and publishes it at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``:

    version: STSv1
    mode: enforce
    mx: mail.example.com
    mx: *.example.net
    max_age: 604800

In ``enforce`` mode only MX hosts matching an ``mx`` pattern are used, and only over TLS
with a certificate that chains to a trusted CA and names the MX host; ``testing`` mode
delivers as without a policy and logs what enforce would have refused; ``none`` is no
policy. How a policy is found (§3.3, §5):

- the TXT record is looked up for each delivery (through the transport's resolver);
- a cached, unexpired policy whose id the record still names is used as it is;
- a new id (or no cached policy) fetches the policy over HTTPS: certificate checked for
  ``mta-sts.<domain>``, no redirect followed, ``200`` and ``text/plain`` only, at most
  64 KiB; the fetched policy is cached for its ``max_age``;
- no TXT record, or no answer from DNS, or a failed fetch: the cached policy while it is
  unexpired, otherwise no policy (delivery as without MTA-STS). A failed fetch is not
  tried again for the same id for ``RETRY_FETCH_AFTER`` seconds.

The cache is one JSON file in the state folder, written atomically, so it survives
restarts; a damaged file is set aside with a warning and the cache starts empty.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alertmail import AlertmailError, write_atomic

POLICY_PATH = "/.well-known/mta-sts.txt"
MAX_POLICY_SIZE = 64 * 1024  # RFC 8461 §3.3: senders may limit the body to 64 KiB
MAX_AGE_LIMIT = 31_557_600  # §3.2: at most one year
RETRY_FETCH_AFTER = 300.0
_TXT_ID = re.compile(r"[A-Za-z0-9]{1,32}")


class PolicyError(AlertmailError):
    """A policy could not be fetched or read."""


@dataclass(frozen=True)
class Policy:
    """One domain's MTA-STS policy as fetched, with the TXT id it was fetched for."""

    id: str
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]
    max_age: int
    fetched: float  # wall clock, seconds since the epoch

    def expired(self, now: float) -> bool:
        return now >= self.fetched + self.max_age

    def allows(self, host: str) -> bool:
        """Whether ``host`` matches one of the policy's ``mx`` patterns (§4.1)."""
        return any(mx_matches(pattern, host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: a literal name, or ``*.`` standing for exactly one leftmost label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label and dot) and rest == pattern[2:]
    return host == pattern


def parse_txt(strings: list[bytes]) -> str | None:
    """The id of an ``v=STSv1`` TXT record's strings, or None when it is not a valid one (§3.1)."""
    try:
        text = b"".join(strings).decode("ascii")
    except UnicodeDecodeError:
        return None
    fields: dict[str, str] = {}
    for part in text.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq:
            fields.setdefault(key.strip(), value.strip())
    if not text.startswith("v=STSv1") or fields.get("v") != "STSv1":
        return None
    ident = fields.get("id", "")
    return ident if _TXT_ID.fullmatch(ident) else None


def parse_policy(text: str, ident: str, now: float) -> Policy:
    """The policy a body describes; PolicyError when it is not a valid STSv1 policy (§3.2)."""
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise PolicyError(f"version is {fields.get('version')}, not STSv1")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise PolicyError(f"max_age {fields.get('max_age')} is not a number of seconds") from None
    if not 0 <= max_age <= MAX_AGE_LIMIT:
        raise PolicyError(f"max_age {max_age} is outside 0-{MAX_AGE_LIMIT}")
    mx = tuple(p for p in fields.get("mx", []) if p)
    if mode != "none" and not mx:
        raise PolicyError(f"mode {mode} without any mx line")
    return Policy(ident, mode, mx, max_age, now)


@dataclass
class MtaSts:
    """Finds and caches the MTA-STS policies of recipient domains.

    ``query(name, "TXT")`` and ``addresses(host)`` are the mx transport's DNS lookups (its
    resolver, its timeouts); ``port`` is the HTTPS port, 443 except in tests.
    """

    path: Path
    query: Callable[[str, str], Awaitable[Any]]
    addresses: Callable[[str], Awaitable[list[str]]]
    timeout: float = 20.0
    port: int = 443
    ca_file: str | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("alertmail.transport.mx"))
    _cache: dict[str, Policy] | None = None
    _failed: dict[tuple[str, str], float] = field(default_factory=dict)
    _context: Any = None
    _pending: dict[str, asyncio.Future[Policy | None]] = field(default_factory=dict)

    async def policy(self, domain: str) -> Policy | None:
        """The policy to apply to ``domain`` now, or None (deliver as without MTA-STS).

        Deliveries to one domain at the same time share one lookup (and at most one fetch)."""
        task = self._pending.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._policy(domain))
            self._pending[domain] = task
            task.add_done_callback(lambda _: self._pending.pop(domain, None))
        return await asyncio.shield(task)

    async def _policy(self, domain: str) -> Policy | None:
        cache = self._load()
        now = time.time()
        cached = cache.get(domain)
        if cached is not None and cached.expired(now):
            cached = None
        ident = await self._txt_id(domain)
        if ident is None or (cached is not None and cached.id == ident):
            return cached
        failed_at = self._failed.get((domain, ident))
        if failed_at is not None and time.monotonic() - failed_at < RETRY_FETCH_AFTER:
            return cached
        try:
            fetched = await self._fetch(domain, ident)
        except PolicyError as exc:
            self._failed[(domain, ident)] = time.monotonic()
            kept = f"keeping the cached policy (mode {cached.mode})" if cached else "delivering as without MTA-STS"
            self.log.warning("MTA-STS policy of %s (id %s) cannot be fetched: %s; %s", domain, ident, exc, kept)
            return cached
        self._failed.pop((domain, ident), None)
        self.log.info("MTA-STS policy of %s: mode %s, mx %s, max_age %ds", domain, fetched.mode, fetched.mx, fetched.max_age)
        cache[domain] = fetched
        self._save(cache)
        return fetched

    async def _txt_id(self, domain: str) -> str | None:
        """The id of the domain's one valid STSv1 record; None for none, several, or no DNS answer."""
        try:
            answer = await self.query(f"_mta-sts.{domain}", "TXT")
        except AlertmailError as exc:  # NXDOMAIN, or DNS trouble: the cache decides (§5)
            self.log.debug("MTA-STS TXT of %s: %s", domain, exc)
            return None
        if answer is None:
            return None
        records = [r.strings for r in answer if hasattr(r, "strings")]
        announced = [r for r in records if b"".join(r).startswith(b"v=STSv1")]
        if len(announced) != 1:  # §3.1: more than one record is as good as none
            return None
        return parse_txt(list(announced[0]))

    async def _fetch(self, domain: str, ident: str) -> Policy:
        host = f"mta-sts.{domain}"
        try:
            addresses = await self.addresses(host)
        except AlertmailError as exc:
            raise PolicyError(f"{host}: {exc}") from None
        if not addresses:
            raise PolicyError(f"{host} has no address")
        errors = []
        for address in addresses:
            try:
                body = await asyncio.wait_for(asyncio.to_thread(self._get, host, address), self.timeout)
            except TimeoutError:
                errors.append(f"{address}: no answer within {self.timeout:g}s")
            except PolicyError as exc:
                errors.append(f"{address}: {exc}")
            else:
                return parse_policy(body, ident, time.time())
        raise PolicyError(f"https://{host}{POLICY_PATH}: " + "; ".join(errors))

    def _get(self, host: str, address: str) -> str:
        """One HTTPS GET of the policy from ``address``, blocking (run in a thread)."""
        import http.client
        import ssl

        context = self._tls_context()

        class Pinned(http.client.HTTPSConnection):
            """Connects to the address found through the transport's resolver; TLS checks ``host``."""

            def connect(self) -> None:
                sock = socket.create_connection((address, self.port), self.timeout)
                self.sock = context.wrap_socket(sock, server_hostname=host)

        connection = Pinned(host, self.port, timeout=self.timeout, context=context)
        try:
            connection.request("GET", POLICY_PATH, headers={"Accept": "text/plain", "Connection": "close"})
            response = connection.getresponse()
            if response.status != 200:  # §3.3: redirects are not followed
                raise PolicyError(f"HTTP {response.status} {response.reason}")
            media = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
            if media != "text/plain":
                raise PolicyError(f"Content-Type {media or 'missing'}, not text/plain")
            body = response.read(MAX_POLICY_SIZE + 1)
            if len(body) > MAX_POLICY_SIZE:
                raise PolicyError(f"policy larger than {MAX_POLICY_SIZE} bytes")
        except ssl.SSLError as exc:
            raise PolicyError(f"TLS: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PolicyError(f"{type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            raise PolicyError("policy is not UTF-8 text") from None

    def _tls_context(self) -> Any:
        if self._context is None:
            import ssl

            self._context = ssl.create_default_context(cafile=self.ca_file)
        return self._context

    def _load(self) -> dict[str, Policy]:
        if self._cache is None:
            self._cache = {}
            try:
                record = json.loads(self.path.read_bytes())
                self._cache = {d: Policy(**{**p, "mx": tuple(p["mx"])}) for d, p in record["policies"].items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                aside = self.path.with_name(self.path.name + ".damaged")
                self.log.warning("MTA-STS cache %s cannot be read (%s); moved to %s, starting empty", self.path, exc, aside)
                try:
                    self.path.replace(aside)
                except OSError:
                    pass
        return self._cache

    def _save(self, cache: dict[str, Policy]) -> None:
        now = time.time()
        live = {d: asdict(p) for d, p in sorted(cache.items()) if not p.expired(now)}
        try:
            write_atomic(self.path, json.dumps({"policies": live}, indent=1).encode(), mode=0o644)
        except OSError as exc:  # the policy still applies from memory; the next save may work
            self.log.warning("MTA-STS cache %s cannot be written: %s", self.path, exc)
