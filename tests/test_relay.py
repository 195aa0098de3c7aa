"""The relay's pure parts: address and data checks, status codes, trace header, pickup parsing, users, W3C log."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from alertmail.plugins.relay.policy import (
    RelayPolicy,
    address_problem,
    data_problem,
    has_bare_newline,
    has_routing,
    parse_networks,
    received_header,
    with_enhanced_code,
)
from alertmail.plugins.relay.service import RelayConfigError, check_route
from alertmail.plugins.relay.users import Users, UsersFileError, check_password, hash_password, parse_users, set_password
from alertmail.plugins.relay.w3c import W3CLog, w3c_value
from alertmail.plugins.relay.watcher import PickupError, parse_pickup


@pytest.mark.parametrize(
    "command, arg, problem",
    [
        ("MAIL", "FROM:<alice@example.test>", None),
        ("MAIL", "FROM:<> SIZE=100", None),
        ("MAIL", "FROM:<alice@example.test> AUTH=<>", None),
        ("RCPT", "TO:bob@example.test", None),
        ("RCPT", "TO:<bob@example.test", "unbalanced angle brackets in address"),
        ("RCPT", "TO:<<bob@example.test>", "unbalanced angle brackets in address"),
        ("RCPT", "TO:bob@example.test>", "unbalanced angle brackets in address"),
        ("RCPT", "TO:<bob@example.test>>", "unbalanced angle brackets in address"),
        ("RCPT", "TO:<bo\rb@example.test>", "CR or LF in address"),
        ("MAIL", "FROM:<a\nb@example.test>", "CR or LF in address"),
    ],
)
def test_address_problems_are_named(command, arg, problem):
    assert address_problem(command, arg) == problem


@pytest.mark.parametrize(
    "data, bare",
    [
        (b"Subject: a\r\n\r\nbody\r\n", False),
        (b"Subject: a\r\n\r\nline\n.\nMAIL FROM:<x@y>\r\n", True),
        (b"Subject: a\r\n\r\nline\r\n.\nmore\r\n", True),
        (b"Subject: a\r\n\r\nline\r.\r\n", True),
        (b"", False),
    ],
)
def test_bare_cr_or_lf_in_data_is_found(data, bare):
    assert has_bare_newline(data) is bare


@pytest.mark.parametrize(
    "reply, command, expected",
    [
        ("250 OK", "RSET", "250 2.0.0 OK"),
        ("250 OK", "MAIL", "250 2.1.0 OK"),
        ("552 Error: Too much mail data", "DATA", "552 5.3.4 Error: Too much mail data"),
        ("503 Error: need RCPT command", "DATA", "503 5.5.1 Error: need RCPT command"),
        ("554 5.7.1 <x@y>: Relay access denied", "RCPT", "554 5.7.1 <x@y>: Relay access denied"),
        ("250-relay.test", "EHLO", "250-relay.test"),
        ("354 End data with <CR><LF>.<CR><LF>", "DATA", "354 End data with <CR><LF>.<CR><LF>"),
        ("220 relay.test ESMTP", "", "220 relay.test ESMTP"),
    ],
)
def test_replies_get_an_enhanced_status_code_except_greeting_and_ehlo(reply, command, expected):
    assert with_enhanced_code(reply, command) == expected


def test_received_header_is_one_safe_trace_field():
    header = received_header(
        helo="evil\tname (x)",
        ip="::1",
        hostname="relay.test",
        protocol="ESMTPSA",
        txid="abc",
        recipients=["bob@example.test"],
        now=0,
    ).decode()
    assert header.startswith("Received: from evil_name__x_ ([IPv6:::1])\r\n\tby relay.test (alertmail) with ESMTPSA id abc")
    assert "for <bob@example.test>; Thu, 01 Jan 1970 00:00:00 +0000\r\n" in header
    assert header.count("\r\n") == 3 and all(line.startswith("\t") for line in header.split("\r\n")[1:-1])


def test_received_header_names_no_recipient_when_there_are_several():
    header = received_header(helo="h", ip="127.0.0.1", hostname="r", protocol="ESMTP", txid="i", recipients=["a@x", "b@x"])
    assert b" for " not in header and b"([127.0.0.1])" in header


def test_policy_allows_networks_and_ipv4_mapped_addresses():
    policy = RelayPolicy(hostname="r", allow=parse_networks(["127.0.0.0/8", "::1"]))
    assert policy.allowed("127.0.0.1") and policy.allowed("::1") and policy.allowed("::ffff:127.0.0.2")
    assert not policy.allowed("10.0.0.1") and not policy.allowed("::2") and not policy.allowed("garbage")
    with pytest.raises(ValueError, match="not an IP address"):
        parse_networks(["127.0.0.300"])


def test_pickup_envelope_comes_from_x_sender_and_x_receiver_lines():
    data = b"X-Sender: app@example.test\nX-Receiver: a@example.test\nX-Receiver: <b@example.test>\nSubject: s\n\nbody\n"
    envelope, message = parse_pickup(data)
    assert envelope.sender == "app@example.test" and envelope.recipients == ("a@example.test", "b@example.test")
    assert message == b"Subject: s\r\n\r\nbody\r\n"


def test_pickup_envelope_from_headers_drops_the_bcc_header():
    data = (
        b"From: App <app@example.test>\r\nTo: a@example.test,\r\n b@example.test\r\nBcc: hidden@example.test\r\n"
        b"Subject: s\r\n\r\nBcc: this is the body\r\n"
    )
    envelope, message = parse_pickup(data)
    assert envelope.sender == "app@example.test"
    assert envelope.recipients == ("a@example.test", "b@example.test", "hidden@example.test")
    assert b"hidden" not in message and message.endswith(b"\r\n\r\nBcc: this is the body\r\n")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty"),
        (b"\x00\x01\x02garbage\xff", "header line 1"),
        (b"Subject: no recipients\r\n\r\nbody\r\n", "no recipients"),
        (b"To: a@example.test\r\nthis is not a header\r\n", "header line 2"),
        (b"X-Receiver: not an address\r\nSubject: s\r\n\r\n", "not a mail address"),
    ],
)
def test_pickup_files_that_are_not_messages_are_refused_with_a_reason(data, reason):
    with pytest.raises(PickupError, match=reason):
        parse_pickup(data)


def test_password_hash_verifies_only_the_right_password():
    stored = hash_password("s3cret", n=2**10)
    assert stored.startswith("scrypt$1024$8$1$")
    assert check_password(b"s3cret", stored) and not check_password(b"S3cret", stored)
    assert not check_password(b"s3cret", "scrypt$garbage")


def test_set_password_adds_then_replaces_one_line(tmp_path):
    path = tmp_path / "users"
    assert set_password(path, "alice", "one") is True
    assert set_password(path, "bob", "two") is True
    assert set_password(path, "alice", "three") is False
    users = Users.load(path)
    assert sorted(users.users) == ["alice", "bob"]
    assert users.verify("alice", b"three") and not users.verify("alice", b"one") and not users.verify("carol", b"x")
    assert path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(UsersFileError):
        set_password(path, "bad:name", "x")


def test_users_file_errors_name_the_line():
    with pytest.raises(UsersFileError, match="users:2"):
        parse_users("# comment\nalice:plaintext\n", source="users")


def test_w3c_values_never_contain_spaces_or_line_breaks():
    assert w3c_value("MAIL FROM:<a@b> SIZE=1") == "MAIL+FROM:<a@b>+SIZE=1"
    assert w3c_value("x\r\ny\t%") == "x%0D%0Ay%09%25"
    assert w3c_value("") == "-" and w3c_value(None) == "-"


def test_w3c_log_writes_directives_and_rolls_over_by_utc_date(tmp_path):
    log = W3CLog(tmp_path, "alertmail 1.0")
    day1 = time.mktime((2026, 3, 1, 23, 59, 0, 0, 0, 0)) - time.timezone
    common = {
        "client_ip": "127.0.0.1",
        "username": None,
        "server_ip": "127.0.0.1",
        "server_port": 2525,
        "status": 250,
        "sent": 10,
        "received": 20,
        "taken_ms": 3,
    }
    log.record(method="EHLO", query="client name", now=day1, **common)
    log.record(method="QUIT", query="", now=day1 + 120, **common)
    log.close()
    first = (tmp_path / "relay20260301.log").read_text().splitlines()
    second = (tmp_path / "relay20260302.log").read_text().splitlines()
    assert first[:2] == ["#Software: alertmail 1.0", "#Version: 1.0"] and first[2].startswith("#Date: 2026-03-01 23:59")
    assert (
        first[3]
        == "#Fields: date time c-ip cs-username s-ip s-port cs-method cs-uri-query sc-status sc-bytes cs-bytes time-taken"
    )
    assert first[4] == "2026-03-01 23:59:00 127.0.0.1 - 127.0.0.1 2525 EHLO client+name 250 10 20 3"
    assert second[0].startswith("#Software") and second[4].startswith("2026-03-02 00:01:00 ") and " QUIT - 250 " in second[4]


def test_route_must_be_configured_and_must_not_loop_into_pickup(tmp_path):
    transports = {"mx": {}, "pickup": {"directory": None}}
    check_route(transports, ["mx"], tmp_path)
    with pytest.raises(RelayConfigError, match=r"no \[transports.smtp\]"):
        check_route(transports, ["smtp"], tmp_path)
    with pytest.raises(RelayConfigError, match="loop"):
        check_route(transports, ["pickup"], tmp_path)
    check_route({"pickup": {"directory": Path("/elsewhere")}}, ["pickup"], tmp_path)


def test_relay_module_does_not_import_aiosmtpd():
    import subprocess
    import sys

    code = "import sys, alertmail.plugins.relay; print('aiosmtpd' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_pickup_takes_a_file_written_in_place_only_once_it_is_stable(tmp_path):
    import os

    from alertmail.plugins.relay.watcher import PickupWatcher

    watcher = PickupWatcher(tmp_path, queue=None, badmail=None, hostname="relay.test", interval=1.0)
    now = time.time_ns()
    old, growing, hidden = tmp_path / "old.eml", tmp_path / "growing.eml", tmp_path / ".incoming.eml"
    for path in (old, growing, hidden, tmp_path / "part.tmp"):
        path.write_bytes(b"To: a@example.test\r\n\r\n")
    os.utime(old, ns=(now - 5 * 10**9, now - 5 * 10**9))
    os.utime(growing, ns=(now, now))
    assert watcher._ready(now) == [old]  # fresh files wait; dot-names and *.tmp are never taken
    growing.write_bytes(b"To: a@example.test\r\n\r\nmore")
    os.utime(growing, ns=(now + 10**8, now + 10**8))
    assert watcher._ready(now + 2 * 10**8) == [old]  # it changed since the last scan: still being written
    assert watcher._ready(now + 4 * 10**8) == [growing, old]  # unchanged for one scan: taken


@pytest.mark.parametrize(
    "address, routed",
    [
        ("user@local.example", False),
        ("first.last+tag@local.example", False),
        ("user%evil.example@local.example", True),
        ('"user@evil.example"@local.example', True),
        ("evil.example!user@local.example", True),
        ("@hop.example:user@local.example", True),
    ],
)
def test_sender_specified_routing_is_recognised(address, routed):
    assert has_routing(address) is routed


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"Subject: a\r\n\r\nbody\r\n", None),
        (b"Subject: a\r\n\r\nbe\x00fore\r\n", "NUL byte in message data"),
        (b"Subject: a\r\n\r\nline\n", "Bare CR or LF in message data; lines must end with CRLF"),
    ],
)
def test_message_data_problems_are_named(data, problem):
    assert data_problem(data) == problem


def test_w3c_log_that_cannot_be_written_never_raises_and_recovers(tmp_path, capsys, caplog):
    folder = tmp_path / "logs"
    folder.write_text("a file where the folder should be")  # mkdir and open fail, as on a full or read-only disk
    log = W3CLog(folder, "alertmail 1.0")
    common = {
        "client_ip": "127.0.0.1",
        "username": None,
        "server_ip": "127.0.0.1",
        "server_port": 2525,
        "sent": 1,
        "received": 1,
        "taken_ms": 0,
    }
    for _ in range(3):
        log.record(method="MAIL", query="FROM:<a@b>", status=250, **common)
        log.flush()
    assert capsys.readouterr().err.count("w3c: ") == 3  # the lines went to stderr
    assert sum("cannot write the W3C log" in r.getMessage() for r in caplog.records) == 1  # one warning, not three
    folder.unlink()
    log.record(method="RCPT", query="TO:<c@d>", status=250, **common)
    log.close()
    (written,) = folder.glob("relay*.log")
    lines = written.read_text().splitlines()
    assert lines[0].startswith("#Software") and lines[-1].endswith("RCPT TO:<c@d> 250 1 1 0")
    assert any("is written again" in r.getMessage() for r in caplog.records)
