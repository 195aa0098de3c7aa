"""Basic authentication for the exporter's server, against web.yml's ``basic_auth_users`` (bcrypt).

As exporter-toolkit does it: a user not in the file is checked against a fixed hash, so a
wrong name costs as long as a wrong password; one bcrypt check runs at a time; a
(user, hash, password) found right is remembered (``CACHE_SIZE`` of them, keyed by a
SHA-256 digest, never the password itself), so a scraper that sends the same credentials
every 15 s costs one bcrypt check, not one per scrape. The check runs in a worker thread:
at cost 10 it takes about 100 ms the event loop must not wait for.

Unlike exporter-toolkit, wrong credentials are counted per client address: after
``FAILURES`` in ``WINDOW`` seconds that address is answered 429 Too Many Requests (with
Retry-After) until the oldest failure leaves the window, without a bcrypt check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

FAILURES = 5  # wrong credentials from one address within WINDOW before it is answered 429
WINDOW = 60.0  # seconds
CACHE_SIZE = 100  # (user, hash, password) triples remembered as right
MAX_ADDRESSES = 4096  # addresses whose failures are tracked at once; the oldest is forgotten first
# exporter-toolkit's hash of "fakepassword": checked for a user not in the file, so timing tells no names.
FAKE_HASH = b"$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"


@dataclass(frozen=True)
class Verdict:
    """``user`` when the credentials are right; else ``status`` 401 or 429 and, for 429, ``retry_after``."""

    user: str | None
    status: int = 200
    retry_after: int = 0
    failed: bool = False  # credentials were given and were wrong (logged; counted towards the limit)
    held_back: int = 0  # this failure was the one too many: the address is answered 429 for this many seconds


def credentials(header: str | None) -> tuple[str, bytes] | None:
    """(user, password) from an ``Authorization: Basic ...`` value, or None."""
    if not header:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _check(hashed: bytes, password: bytes) -> bool:
    import bcrypt

    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # longer than bcrypt's 72 bytes, or a hash bcrypt cannot read
        return False


class BasicAuth:
    """Checks ``Authorization`` headers against ``users`` (user -> bcrypt hash)."""

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        failures: int = FAILURES,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.users = {user: hashed.encode() for user, hashed in users.items()}
        self.failures = failures
        self.window = window
        self._clock = clock
        self._right: dict[bytes, None] = {}  # digests of (user, hash, password) found right, oldest first
        self._failed: dict[str, deque[float]] = {}  # address -> times of its recent failures
        self._one_at_a_time = asyncio.Lock()

    def _limited(self, address: str, now: float) -> int:
        """Seconds until ``address`` may try again; 0 when it may now."""
        times = self._failed.get(address)
        if not times:
            return 0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._failed[address]
            return 0
        if len(times) < self.failures:
            return 0
        return max(1, int(times[0] + self.window - now + 0.999))

    def _fail(self, address: str, now: float) -> None:
        times = self._failed.pop(address, None) or deque(maxlen=self.failures)
        times.append(now)
        self._failed[address] = times  # to the end: the least recent failing address is first
        while len(self._failed) > MAX_ADDRESSES:
            del self._failed[next(iter(self._failed))]

    async def check(self, header: str | None, address: str) -> Verdict:
        now = self._clock()
        wait = self._limited(address, now)
        if wait:
            return Verdict(None, 429, retry_after=wait)
        given = credentials(header)
        if given is None:
            return Verdict(None, 401)
        user, password = given
        hashed = self.users.get(user)
        known = hashed is not None
        hashed = hashed if hashed is not None else FAKE_HASH
        digest = hashlib.sha256(b"\0".join((user.encode(), hashed, password))).digest()
        if known and digest in self._right:
            return Verdict(user)
        async with self._one_at_a_time:
            right = await asyncio.to_thread(_check, hashed, password)
        if right and known:
            self._right[digest] = None
            while len(self._right) > CACHE_SIZE:
                del self._right[next(iter(self._right))]
            return Verdict(user)
        now = self._clock()
        self._fail(address, now)
        return Verdict(None, 401, failed=True, held_back=self._limited(address, now))


class TokenBucket:
    """web.yml's ``rate_limit``: one request each ``interval`` seconds, ``burst`` at once (Go's rate.Limiter)."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval, self.burst = interval, burst
        self._tokens = float(burst)
        self._at = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) / self.interval)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False
