"""The relay's encoders against plain reference definitions: W3C escaping, the data check,
enhanced codes, the Received date and the allow list, whatever their fast paths take."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from alertmail.plugins.relay import policy
from alertmail.plugins.relay.policy import RelayPolicy, data_problem, parse_networks, received_header, with_enhanced_code
from alertmail.plugins.relay.w3c import w3c_value


def escaped(text: str) -> str:
    """W3C escaping as the log's docstring states it, one character at a time."""
    if not text:
        return "-"
    return "".join("+" if c == " " else f"%{ord(c):02X}" if ord(c) < 0x20 or c in "\x7f%" else c for c in text)


@given(st.text(alphabet=st.characters(max_codepoint=0x3000)))
def test_w3c_values_escape_spaces_controls_and_percent_and_nothing_else(text):
    assert w3c_value(text) == escaped(text)


def test_w3c_values_escape_non_breaking_and_unicode_separators_only_as_the_table_says():
    for text in ("a\u00a0b", "x\u2028y", "\u0085", "é", "a\x7fb", "100%", "[127.0.0.1]"):
        assert w3c_value(text) == escaped(text)


def first_problem(data: bytes) -> str | None:
    """The first NUL, bare CR or bare LF in ``data``, scanning byte by byte."""
    for i, byte in enumerate(data):
        if byte == 0:
            return "NUL byte in message data"
        if byte == 13 and data[i + 1 : i + 2] != b"\n":
            return "Bare CR or LF in message data; lines must end with CRLF"
        if byte == 10 and data[i - 1 : i] != b"\r":
            return "Bare CR or LF in message data; lines must end with CRLF"
    return None


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\x00", b"\r\n", b".", b"\r\n\r\n"]), max_size=40).map(b"".join))
def test_data_problem_names_the_first_bare_cr_lf_or_nul(data):
    assert data_problem(data) == first_problem(data)


def test_enhanced_codes_stay_right_past_the_size_of_their_cache():
    for i in range(policy.CACHE_MAX + 50):
        assert with_enhanced_code(f"550 no such user {i}", "RCPT") == f"550 5.0.0 no such user {i}"
        assert with_enhanced_code("250 OK", "RCPT") == "250 2.1.5 OK"
        assert with_enhanced_code("250 OK", "MAIL") == "250 2.1.0 OK"


def test_received_date_follows_the_clock_second_by_second():
    start = 1_790_000_000.25
    for offset in (0, 0.5, 1, 61, 86_400):
        when = start + offset
        header = received_header(helo="h", ip="127.0.0.1", hostname="r", protocol="ESMTP", txid="1", recipients=[], now=when)
        assert header.decode().endswith(f"; {format_datetime(datetime.fromtimestamp(int(when), UTC))}\r\n")


def test_allow_list_answers_stay_right_for_more_clients_than_it_remembers():
    relay = RelayPolicy(hostname="r", allow=parse_networks(["10.0.0.0/9", "::1"]))
    for i in range(policy.CACHE_MAX + 100):
        ip = str(ipaddress.ip_address(0x0A000000 + i * 4099))
        assert relay.allowed(ip) == (ipaddress.ip_address(ip) in ipaddress.ip_network("10.0.0.0/9"))
    assert relay.allowed("::ffff:10.1.2.3") and relay.allowed("::1") and not relay.allowed("not an ip")
