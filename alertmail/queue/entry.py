"""One queued message's metadata: the Entry, where each of its recipients stands, and message ids.

Entries are written as one line of JSON (in a segment, then as ``<id>.json``); the
queue (``alertmail.queue.spool``), badmail and delivery reports all read them.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from alertmail.model import Envelope, RecipientStatus, Status

ID_PATTERN = re.compile(r"^[0-9a-f]{12,40}$")


def new_id() -> str:
    """A message id that sorts by creation time: milliseconds in hex, then randomness."""
    return f"{time.time_ns() // 1_000_000:011x}{os.urandom(4).hex()}"


def valid_id(text: str) -> bool:
    return bool(ID_PATTERN.match(text))


# The config keys that name a route; a queued message records which one it follows.
ROUTE_KEYS = ("mail.route", "mail.also_route", "relay.route")


def relayed(origin: str) -> bool:
    """True for mail the relay took in (SMTP or the pickup folder): it follows relay.route."""
    return origin == "pickup" or origin.startswith("relay")


def route_key_for(route: Sequence[str] | None, origin: str, routes: Mapping[str, Sequence[str]]) -> str:
    """The config key whose route a message queued with ``route`` by ``origin`` follows ("" for none).

    The agent's mail follows [mail].route (or also_route, when it was queued on that one);
    relayed and picked-up mail follows [relay].route; a message with no route follows
    [mail].route anyway (the default); any other route is kept as it was given.
    """
    if not route:
        return ""
    if relayed(origin):
        return "relay.route"
    if origin == "agent":
        for key in ("mail.route", "mail.also_route"):
            if key in routes and list(routes[key]) == list(route):
                return key
    return ""


@dataclass
class RecipientState:
    """Where one recipient of a queued message stands."""

    status: str = "pending"  # "pending" | "delivered" | "failed"
    code: int = 0
    message: str = ""
    enhanced: str = ""
    remote: str = ""
    transport: str = ""  # the transport that gave the last result
    time: float = 0.0  # of the last result
    reported: bool = False  # a DSN about its failure has gone out (or was not due)

    def record(self, result: RecipientStatus, transport: str, when: float) -> None:
        self.status = _STATE_OF.get(result.status, "pending")
        self.code, self.message, self.enhanced, self.remote = result.code, result.message, result.enhanced, result.remote
        self.transport, self.time = transport, when

    @property
    def reply(self) -> str:
        """The last reply as one line, e.g. ``550 5.1.1 no such user``."""
        parts = [str(self.code) if self.code else "", self.enhanced, self.message]
        return " ".join(p for p in parts if p)


@dataclass
class Entry:
    """The metadata of one queued message."""

    id: str
    created: float
    sender: str
    recipients: dict[str, RecipientState]
    route: list[str] | None = None  # None: the configured default route
    # The config key whose route the message follows ("mail.route", "mail.also_route", "relay.route"),
    # resolved again at each attempt; "" for a route given as such (``route`` is then kept as it is).
    route_key: str = ""
    origin: str = "agent"  # "agent", "relay", "pickup", "dsn", "resend"
    size: int = 0
    attempts: int = 0
    next_try: float = 0.0
    last_try: float = 0.0
    last_error: str = ""
    delay_notified: bool = False
    segment: str = ""  # the segment holding the message; set when it is read back
    offset: int = 0  # where its bytes start in the segment
    crc: int | None = None  # zlib.crc32 of the message bytes; None in segments written before checksums
    held: str = ""  # why no attempt can be made (its route names a transport the config lacks); "" when none
    held_since: float = 0.0  # when it was first found so

    @property
    def envelope(self) -> Envelope:
        return Envelope(self.sender, tuple(self.recipients))

    @property
    def pending(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "pending"]

    @property
    def failed(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "failed"]

    @property
    def delivered(self) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status == "delivered"]

    def to_json(self) -> bytes:
        # The same JSON as dataclasses.asdict would give, built without its deep copy (a third of a put's CPU).
        data = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        data["recipients"] = {r: {name: getattr(s, name) for name in _STATE_FIELDS} for r, s in self.recipients.items()}
        return _ENCODE(data).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> Entry:
        data: dict[str, Any] = json.loads(raw)
        fields = RecipientState.__dataclass_fields__
        data["recipients"] = {
            r: RecipientState(**{k: v for k, v in s.items() if k in fields}) for r, s in data["recipients"].items()
        }
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


_STATE_OF = {Status.DELIVERED: "delivered", Status.PERMANENT: "failed"}
_ENTRY_FIELDS = tuple(f.name for f in fields(Entry))
_STATE_FIELDS = tuple(f.name for f in fields(RecipientState))
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
