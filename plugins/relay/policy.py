"""The relay's rules as pure functions: who may relay, what an address or a message may hold.

No I/O here and no aiosmtpd: the session (server.py) and its handler (handler.py) apply
these, and the unit tests check them directly.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path

from alertmail.plugins.relay.users import Users

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?: |$)")
_ENHANCED_BY_CODE = {
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    252: "2.0.0",
    421: "4.3.2",
    451: "4.3.0",
    452: "4.5.3",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    535: "5.7.8",
    538: "5.7.11",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_ENHANCED_250 = {"MAIL": "2.1.0", "RCPT": "2.1.5", "DATA": "2.0.0"}
# Entries kept by the small caches below (client IPs, replies, the Received date) before they start over.
CACHE_MAX = 4096
_with_enhanced: dict[tuple[str, str], str] = {}
_date: list = [None, ""]  # the second and its RFC 5322 date, for Received
_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_BAD_DATA = re.compile(rb"\r(?!\n)|(?<!\r)\n|\x00")
# Characters that route mail onwards when they appear in a local part (user%host@relay,
# host!user@relay, "user@host"@relay) or a leading source route (@hop:user@relay).
_ROUTING = re.compile(r"[%!@:]")
_HELO_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_ADDRESS_UNSAFE = re.compile(r"[^!-~]|[()<>;\\\"]")


@dataclass(frozen=True)
class RelayPolicy:
    """Who may relay, and the limits of a session."""

    hostname: str
    allow: tuple[IPNetwork, ...] = ()
    users: Users | None = None
    local_domains: frozenset[str] = frozenset()
    # Addresses of local_domains that exist, lowercased; "@domain" takes every address of the domain.
    local_recipients: frozenset[str] = frozenset()
    max_size: int = 10_000_000
    max_recipients: int = 100
    max_commands: int = 100
    max_connections: int = 300
    max_connections_per_client: int = 50
    # sessions of max_connections that only `allow` clients may take
    reserved_connections: int = 50
    max_auth_failures: int = 10
    rate_window: float = 60.0
    # failed-AUTH warnings written per rate_window (per process); the rest are counted in one line
    max_auth_warnings: int = 10
    # IPv6 clients are counted per network of this prefix length (as Postfix's anvil aggregates them)
    ipv6_prefix: int = 64
    # longest session, whatever it does; then 421 at the end of the transaction in progress
    max_session_time: float = 1800.0
    require_tls: bool = False
    greet_pause: float = 0.0
    route: tuple[str, ...] | None = None
    timeout: float = 300.0
    # [relay] dkim: mail from `allow` clients is signed with the [mail.dkim] keys (AUTH and local mail are not)
    dkim: bool = False
    # where message data past the memory bound goes (state_dir/relay-data); None: the system's temporary folder
    data_folder: Path | None = None
    # What allowed() answered, per client IP: parsing an address costs more than a whole EHLO.
    _allowed: dict[str, bool] = field(default_factory=dict, init=False, repr=False, compare=False)
    # What client_key() answered, per client IP.
    _keys: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def outside_connections(self) -> int:
        """Sessions at once that clients outside ``allow`` may hold, all of them together."""
        return max(0, self.max_connections - self.reserved_connections)

    def client_key(self, ip: str) -> str:
        """What the per-client limits count ``ip`` as: an IPv4 address, or its IPv6 network of ``ipv6_prefix`` bits.

        One IPv6 host usually holds a whole /64 and picks any address in it, so counting
        single IPv6 addresses would cap nothing. An IPv4-mapped address is its IPv4 address.
        """
        known = self._keys.get(ip)
        if known is None:
            if len(self._keys) >= CACHE_MAX:
                self._keys.clear()
            known = self._keys[ip] = client_key(ip, self.ipv6_prefix)
        return known

    def allowed(self, ip: str) -> bool:
        """True when ``ip`` may relay without AUTH."""
        known = self._allowed.get(ip)
        if known is None:
            if len(self._allowed) >= CACHE_MAX:
                self._allowed.clear()
            known = self._allowed[ip] = self._allowed_uncached(ip)
        return known

    def _allowed_uncached(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if addr.version == 6 and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.allow)

    def local(self, address: str) -> bool:
        return address.rpartition("@")[2].lower().rstrip(".") in self.local_domains

    def known_local(self, address: str) -> bool:
        """True when ``address``, in a local domain, is listed in local_recipients (postmaster always is)."""
        local_part, _, domain = address.lower().rpartition("@")
        domain = domain.rstrip(".")
        return (
            local_part == "postmaster"
            or f"{local_part}@{domain}" in self.local_recipients
            or f"@{domain}" in self.local_recipients
        )


def client_key(ip: str, ipv6_prefix: int) -> str:
    """``ip`` as the per-client limits count it: ``192.0.2.7``, ``2001:db8:1:2::/64``."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip.replace(" ", "_") or "unknown"
    if addr.version == 6 and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    if addr.version == 6 and ipv6_prefix < 128:
        return str(ipaddress.IPv6Network((addr, ipv6_prefix), strict=False))
    return str(addr)


def has_routing(address: str) -> bool:
    """True when ``address`` asks the next hop to route it further (sender-specified routing).

    ``user%other@local``, ``"user@other"@local``, ``other!user@local`` and ``@hop:user@local``
    would leave through a local domain towards another; Postfix refuses them from clients
    that may not relay (``allow_untrusted_routing = no``), and so does the relay.
    """
    return address.startswith("@") or bool(_ROUTING.search(address.rpartition("@")[0]))


def parse_networks(items: Iterable[str]) -> tuple[IPNetwork, ...]:
    """``["127.0.0.0/8", "::1"]`` as networks; ValueError names the bad item."""
    out = []
    for item in items:
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP address or CIDR network: {item!r}") from None
    return tuple(out)


def address_problem(command: str, arg: str) -> str | None:
    """Why the path of a MAIL/RCPT argument is refused, or None when it is acceptable."""
    keyword = "FROM:" if command == "MAIL" else "TO:"
    if arg[: len(keyword)].upper() != keyword:
        return None  # aiosmtpd answers the syntax error
    path = arg[len(keyword) :].lstrip()
    if path.startswith("<"):
        end = path.find(">")
        rest = "" if end < 0 else path[end + 1 :]
        path = path if end < 0 else path[: end + 1]
        if path.count("<") != 1 or path.count(">") != 1 or rest[:1] not in ("", " "):
            return "unbalanced angle brackets in address"
    else:
        path = path.split(" ", 1)[0]
        if "<" in path or ">" in path:
            return "unbalanced angle brackets in address"
    if "\r" in path or "\n" in path:
        return "CR or LF in address"
    return None


def has_bare_newline(data: bytes) -> bool:
    """True when ``data`` holds a CR or LF that is not part of a CRLF pair."""
    return _BARE_NEWLINE.search(data) is not None


def data_problem(data: bytes) -> str | None:
    """Why message data is refused (a bare CR or LF, a NUL byte), or None when it may pass on."""
    # Every CR and every LF belongs to a CRLF exactly when the three counts agree; counting
    # bytes is several times faster than the regular expression, which names the first problem.
    pairs = data.count(b"\r\n")
    if data.count(b"\r") == pairs and data.count(b"\n") == pairs and b"\x00" not in data:
        return None
    found = _BAD_DATA.search(data)
    if found is None:
        return None
    if found.group() == b"\x00":
        return "NUL byte in message data"
    return "Bare CR or LF in message data; lines must end with CRLF"


def with_enhanced_code(reply: str, command: str) -> str:
    """``reply`` with an RFC 3463 status code after the reply code when it has none."""
    # The same few replies come back for every message; the answer for each is kept.
    key = (reply, command)
    known = _with_enhanced.get(key)
    if known is None:
        if len(_with_enhanced) >= CACHE_MAX:
            _with_enhanced.clear()
        known = _with_enhanced[key] = _with_enhanced_code(reply, command)
    return known


def _with_enhanced_code(reply: str, command: str) -> str:
    if len(reply) < 4 or not reply[:3].isdigit() or _ENHANCED.match(reply):
        return reply
    code = int(reply[:3])
    if code in (220, 334, 354) or command in ("EHLO", "HELO"):
        return reply  # greeting, challenges and HELO/EHLO replies carry none (RFC 2034 section 4)
    enhanced = _ENHANCED_250.get(command, "2.0.0") if code == 250 else _ENHANCED_BY_CODE.get(code, f"{code // 100}.0.0")
    return f"{reply[:4]}{enhanced} {reply[4:]}"


def received_header(
    *, helo: str, ip: str, hostname: str, protocol: str, txid: str, recipients: list[str], now: float | None = None
) -> bytes:
    """A ``Received:`` trace field (RFC 5321 section 4.4); untrusted parts are made safe."""
    helo = _HELO_UNSAFE.sub("_", helo or "unknown")[:64]
    literal = f"IPv6:{ip}" if ":" in ip else ip
    line = f"Received: from {helo} ([{literal}])\r\n\tby {hostname} (alertmail) with {protocol} id {txid}"
    if len(recipients) == 1 and not _ADDRESS_UNSAFE.search(recipients[0]):
        line += f"\r\n\tfor <{recipients[0]}>"
    return f"{line}; {_rfc5322_date(time.time() if now is None else now)}\r\n".encode("ascii", "replace")


def _rfc5322_date(now: float) -> str:
    """``now`` as an RFC 5322 date in UTC, formatted once per second."""
    second = int(now)
    if _date[0] != second:
        _date[:] = [second, format_datetime(datetime.fromtimestamp(second, UTC))]
    return str(_date[1])
