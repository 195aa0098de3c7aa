"""The relay's users file: who may relay after AUTH, with scrypt password hashes.

One user per line, ``#`` starts a comment::

    alice:scrypt$16384$8$1$<salt, base64>$<hash, base64>

The fields after ``scrypt`` are the cost parameters N, r and p (RFC 7914), a random
16-byte salt and the 32-byte derived key. ``alertmail relay passwd USER`` writes lines
of this form; the file is rewritten atomically with mode 0600.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
from pathlib import Path

from alertmail import AlertmailError, write_atomic

SCHEME = "scrypt"
# Interactive-login strength (about 50 ms and 16 MiB per check); checks run in a thread.
N, R, P = 2**14, 8, 1
KEY_LEN = 32
MAXMEM = 64 * 1024 * 1024


class UsersFileError(AlertmailError, ValueError):
    """A line of the users file is not ``user:scrypt$N$r$p$salt$hash``."""


def hash_password(password: str, *, n: int = N, r: int = R, p: int = P, salt: bytes | None = None) -> str:
    """The stored form of ``password``: ``scrypt$N$r$p$salt$hash``."""
    salt = salt if salt is not None else os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=KEY_LEN, maxmem=MAXMEM)
    b64 = base64.b64encode
    return f"{SCHEME}${n}${r}${p}${b64(salt).decode()}${b64(key).decode()}"


def check_password(password: bytes, stored: str) -> bool:
    """True when ``password`` matches ``stored`` (blocking: tens of milliseconds)."""
    try:
        scheme, n, r, p, salt, key = stored.split("$")
        if scheme != SCHEME:
            return False
        expected = base64.b64decode(key, validate=True)
        derived = hashlib.scrypt(
            password,
            salt=base64.b64decode(salt, validate=True),
            n=int(n),
            r=int(r),
            p=int(p),
            dklen=len(expected),
            maxmem=MAXMEM,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, expected)


def parse_users(text: str, *, source: str = "users file") -> dict[str, str]:
    """user -> stored hash; raises UsersFileError naming the line."""
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored.startswith(SCHEME + "$") or stored.count("$") != 5:
            raise UsersFileError(f"{source}:{number}: expected user:scrypt$N$r$p$salt$hash")
        users[user] = stored
    return users


@functools.cache
def _dummy_hash() -> str:
    return hash_password("", salt=bytes(16))


class Users:
    """The users allowed to AUTH; loaded once when the relay starts."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = dict(users)

    @classmethod
    def load(cls, path: Path) -> Users:
        return cls(parse_users(Path(path).read_text(encoding="utf-8"), source=str(path)))

    def __len__(self) -> int:
        return len(self.users)

    def verify(self, user: str, password: bytes) -> bool:
        """True when ``user`` exists and ``password`` is right (blocking)."""
        stored = self.users.get(user)
        # An unknown name is checked against a dummy hash, so it costs as long as a wrong password.
        ok = check_password(password, stored or _dummy_hash())
        return ok and stored is not None


def set_password(path: Path, user: str, password: str) -> bool:
    """Add or replace ``user`` in the users file; True when the user was new."""
    if not user or any(c in user for c in ":\r\n#") or user != user.strip():
        raise UsersFileError(f"bad user name {user!r}: no ':', '#', spaces at the ends or line breaks")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    entry = f"{user}:{hash_password(password)}"
    new = True
    for i, line in enumerate(lines):
        if line.strip().partition(":")[0] == user and not line.lstrip().startswith("#"):
            lines[i] = entry
            new = False
    if new:
        lines.append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"), mode=0o600)
    return new
