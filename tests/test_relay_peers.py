"""The relay against real clients and peers over loopback: swaks, smtplib, raw sockets, smtp-sink."""

from __future__ import annotations

import base64
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.peers import SmtpSink, free_port
from tests.relay_peers import (
    REPO,
    RelayProcess,
    message_id,
    private_folder,
    received,
    self_signed,
    start_relay,
    swaks_to,
    users_file,
)
from tests.test_agent_e2e import wait_for

pytestmark = pytest.mark.peers

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-sink-") / "dump") as sink:
        yield sink


@pytest.fixture(scope="module")
def relay(tmp_path_factory, sink):
    """A relay with STARTTLS, one user (alice), small limits and a fast pickup scan."""
    folder = tmp_path_factory.mktemp("relay")
    cert, key = self_signed(folder)
    users = users_file(folder, {"alice": PASSWORD})
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users),
        "allow": ["127.0.0.1/32", "::1"],  # 127.0.0.2 plays a client from elsewhere
        "also_listen": [f"[::1]:{free_port('::1')}"],
        "max_size": "20KB",
        "max_recipients": 3,
        "max_commands": 5,
        "local_domains": ["local.test"],
        "local_recipients": ["postmaster@local.test"],
    }
    process = start_relay(folder, sink, options)
    yield process
    assert process.stop() == 0


def send(relay: RelayProcess, *args: str, mid: str | None = None, source: str = "127.0.0.1") -> str:
    """swaks to the relay; the whole transcript."""
    return swaks_to(relay.port, *args, mid=mid, source=source)


def test_allowed_client_relays_through_the_smart_host(relay, sink):
    mid = message_id()
    out = send(relay, "--to", "bob@example.test", mid=mid)
    assert "250 2.0.0 OK queued as" in out, out
    (copy,) = received(sink, mid)
    assert copy.recipients == ["bob@example.test"] and copy.sender == "app@client.test"
    trace = copy.message.get_all("Received")[-1]
    assert "from client.test ([127.0.0.1])" in trace and "by relay.test (alertmail) with ESMTP id" in trace


def test_banner_and_ehlo_announce_the_hostname_and_extensions(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
        code, banner = client.ehlo()
        assert code == 250 and banner.startswith(b"relay.test")
        for extension in ("size", "8bitmime", "pipelining", "enhancedstatuscodes", "starttls"):
            assert client.has_extn(extension), extension
        assert client.esmtp_features["size"] == "20000"
        assert not client.has_extn("smtputf8") and not client.has_extn("auth")  # AUTH only after STARTTLS


def test_relay_listens_on_ipv6_loopback_too(relay, sink):
    port = int(relay.output().split("relay listening on ", 1)[1].split("[::1]:", 1)[1].split()[0])
    mid = message_id()
    with smtplib.SMTP("::1", port, local_hostname="client.test", timeout=10) as client:
        client.sendmail("app@client.test", ["bob@example.test"], f"Message-Id: {mid}\r\n\r\nover IPv6\r\n")
    (copy,) = received(sink, mid)
    assert "([IPv6:::1])" in copy.message.get_all("Received")[-1]


def test_pipelined_transaction_is_accepted(relay, sink):
    mid = message_id()
    out = send(relay, "--pipeline", "--to", "carol@example.test", mid=mid)
    assert "250 2.0.0 OK queued as" in out, out
    assert len(received(sink, mid)) == 1


def test_client_outside_allow_without_auth_is_refused_at_rcpt(relay, sink):
    mid = message_id()
    out = send(relay, "--to", "bob@example.test", mid=mid, source="127.0.0.2")
    assert "554 5.7.1 <bob@example.test>: Relay access denied" in out, out
    assert received(sink, mid, timeout=1.0) == []


def test_client_outside_allow_may_send_to_a_local_domain(relay, sink):
    mid = message_id()
    out = send(relay, "--to", "postmaster@local.test", mid=mid, source="127.0.0.2")
    assert "250 2.0.0 OK queued as" in out, out


def test_auth_over_starttls_lets_an_outside_client_relay(relay, sink):
    mid = message_id()
    out = send(
        relay,
        "--to",
        "bob@example.test",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        PASSWORD,
        mid=mid,
        source="127.0.0.2",
    )
    assert "235 2.7.0 Authentication successful" in out and "250 2.0.0 OK queued as" in out, out
    (copy,) = received(sink, mid)
    assert "with ESMTPSA id" in copy.message.get_all("Received")[-1]


def test_auth_login_with_smtplib_over_starttls(relay):
    import ssl

    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with smtplib.SMTP(
        "127.0.0.1", relay.port, local_hostname="client.test", timeout=10, source_address=("127.0.0.2", 0)
    ) as client:
        client.starttls(context=context)
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "wrong password")
        assert refused.value.smtp_code == 535
        client.login("alice", PASSWORD)


def test_auth_without_tls_is_refused(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        secret = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
        code, reply = client.docmd("AUTH", f"PLAIN {secret}")
        assert code == 538 and reply.startswith(b"5.7.11")


def test_w3c_log_has_its_directives_and_no_secret(relay):
    test_auth_without_tls_is_refused(relay)

    def log_text() -> str:
        return "".join(p.read_text() for p in (relay.state_dir / "logs").glob("relay*.log"))

    # The log reaches the file within a second; a busy machine may take longer.
    text = wait_for(lambda: " AUTH PLAIN 538 " in log_text() and log_text(), timeout=30, what="the AUTH line in the W3C log")
    assert "#Software: alertmail" in text and "#Version: 1.0" in text and "#Date: " in text
    assert "#Fields: date time c-ip cs-username s-ip s-port cs-method cs-uri-query sc-status" in text
    assert " AUTH PLAIN 538 " in text
    secret = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    assert secret not in text and "horse" not in text and "YWxpY2U" not in text


def test_w3c_log_has_a_line_per_delivery_attempt(relay, sink):
    import uuid

    tag = uuid.uuid4().hex[:8]
    rcpts = [f"bob-{tag}@example.test", f"carol-{tag}@example.test"]
    mid = message_id()
    assert "250 2.0.0" in send(relay, "--to", ",".join(rcpts), mid=mid)
    assert len(received(sink, mid)) == 1

    def deliveries() -> list[str]:
        text = "".join(p.read_text() for p in (relay.state_dir / "logs").glob("relay*.log"))
        return [line for line in text.splitlines() if " DELIVER " in line and tag in line]

    deadline = time.monotonic() + 10
    while len(deliveries()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    lines = sorted(deliveries(), key=lambda line: "carol" in line)
    assert len(lines) == 2, lines
    for rcpt, line in zip(rcpts, lines):
        fields = line.split(" ")
        assert fields[6] == "DELIVER" and fields[7].endswith(f"&to={rcpt}&status=delivered") and fields[8] == "250", line


def test_bare_lf_smuggling_produces_no_second_message(relay, sink, tmp_path):
    smuggled = message_id()
    data = tmp_path / "data"
    data.write_bytes(
        b"Subject: carrier\r\n\r\nhello\n.\nMAIL FROM:<evil@client.test>\nRCPT TO:<victim@example.test>\nDATA\n"
        b"Message-Id: " + smuggled.encode() + b"\nSubject: smuggled\n\nhi\n.\r\n."
    )
    out = send(relay, "--to", "bob@example.test", "--data", str(data), "--no-data-fixup")
    assert "554 5.6.0" in out, out
    follow = message_id()
    assert "250 2.0.0" in send(relay, "--to", "bob@example.test", mid=follow)
    assert len(received(sink, follow)) == 1
    assert received(sink, smuggled, timeout=0.5) == []
    assert not [m for m in sink.messages() if m.message["Subject"] in ("carrier", "smuggled")]


def test_dot_stuffed_lines_and_a_terminator_split_across_packets_arrive_intact(relay, sink):
    mid = message_id()
    body = b"a sentence ending in a dot.\r\n..leading dot\r\n..\r\nnot the end\r\n" + b"x" * 3000 + b"\r\n."
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        conn.sendall(b"EHLO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        while not reader.readline().startswith(b"354"):
            pass
        conn.sendall(f"Message-Id: {mid}\r\n\r\n".encode() + body)
        time.sleep(0.2)
        conn.sendall(b"\r")
        time.sleep(0.2)
        conn.sendall(b"\n")
        assert reader.readline().startswith(b"250 2.0.0")
    (copy,) = received(sink, mid)
    # The 3,000-octet line cannot go on as it is (RFC 5321 §4.5.3.1.6): it arrives quoted-printable.
    text = copy.message.get_content()
    lines = text.replace("\r\n", "\n").split("\n")
    assert lines[:5] == ["a sentence ending in a dot.", ".leading dot", ".", "not the end", "x" * 3000], text[:120]


def test_command_ended_by_bare_lf_closes_the_session(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
        assert conn.recv(200).startswith(b"220 ")
        conn.sendall(b"EHLO client.test\n")
        assert conn.recv(200).startswith(b"521 5.5.2")
        assert conn.recv(200) == b""


def test_oversize_message_is_refused_with_552(relay, sink):
    mid = message_id()
    out = send(relay, "--to", "bob@example.test", "--body", "x" * 70 + ("\n" + "x" * 70) * 400, mid=mid)
    assert "552 5.3.4" in out, out
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        code, reply = client.docmd("MAIL", "FROM:<app@client.test> SIZE=30000")
        assert code == 552 and reply.startswith(b"5.3.4")
    assert received(sink, mid, timeout=0.5) == []


@pytest.mark.parametrize("address", ["bo\rb@example.test", "<bob@example.test", "bob@example.test>"])
def test_address_with_cr_or_unbalanced_bracket_gets_501(relay, address):
    out = send(relay, "--to", address)
    assert "501 5.1.3 Bad address syntax" in out, out


def test_recipients_beyond_the_limit_get_452(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        client.mail("app@client.test")
        codes = [client.rcpt(f"r{i}@example.test")[0] for i in range(4)]
    assert codes == [250, 250, 250, 452]


def test_junk_commands_beyond_the_limit_end_the_session(relay):
    with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
        codes = [client.noop()[0] for _ in range(5)]
        code, reply = client.noop()
    assert codes == [250] * 5 and code == 421 and reply.startswith(b"4.7.0")


def test_early_talker_is_dropped(relay):
    with socket.create_connection(("127.0.0.1", relay.port), timeout=5, source_address=("127.0.0.2", 0)) as conn:
        conn.sendall(b"EHLO hasty.test\r\n")
        reply = conn.recv(200)
        assert reply.startswith(b"554 5.5.0"), reply
        assert conn.recv(200) == b""


def drop(folder: Path, name: str, data: bytes) -> None:
    """Write as a well-behaved application does: a dot-name first, then rename into place."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}").write_bytes(data)
    os.rename(folder / f".{name}", folder / name)


def test_pickup_file_is_delivered_and_removed(relay, sink):
    mid = message_id()
    pickup = relay.state_dir / "pickup"
    drop(
        pickup,
        "alert.eml",
        (
            f"X-Sender: app@client.test\r\nX-Receiver: ops@example.test\r\n"
            f"From: app@client.test\r\nTo: someone-else@example.test\r\nMessage-Id: {mid}\r\nSubject: pickup\r\n\r\nbody\r\n"
        ).encode(),
    )
    (copy,) = received(sink, mid)
    assert copy.recipients == ["ops@example.test"] and copy.sender == "app@client.test"
    assert "(alertmail pickup)" in copy.message.get_all("Received")[-1]
    assert "X-Receiver" not in copy.message
    assert not (pickup / "alert.eml").exists()


def test_pickup_file_without_envelope_lines_uses_the_headers(relay, sink):
    mid = message_id()
    drop(
        relay.state_dir / "pickup",
        "plain.eml",
        (
            f"From: App <app@client.test>\nTo: a@example.test\nBcc: hidden@example.test\nMessage-Id: {mid}\nSubject: s\n\nbody\n"
        ).encode(),
    )
    (copy,) = received(sink, mid)
    assert sorted(copy.recipients) == ["a@example.test", "hidden@example.test"]
    assert "Bcc" not in copy.message


def test_garbage_pickup_file_lands_in_badmail_with_the_reason(relay):
    drop(relay.state_dir / "pickup", "garbage.eml", b"\x00\x01 this is not a message\r\n")
    badmail = relay.state_dir / "badmail"
    deadline = time.monotonic() + 10
    while not list(badmail.glob("*.bdr")) and time.monotonic() < deadline:
        time.sleep(0.1)
    (reason,) = [p.read_text() for p in badmail.glob("*.bdr")]
    assert "garbage.eml" in reason and "header line 1" in reason
    (bad,) = badmail.glob("*.bad")
    assert bad.read_bytes().endswith(b"\x00\x01 this is not a message\r\n")
    assert not (relay.state_dir / "pickup" / "garbage.eml").exists()


def test_sigterm_finishes_the_transaction_in_flight_and_exits_0(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"event_loop": "asyncio"})  # the others use uvloop when installed
    mid = message_id()
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220")
        conn.sendall(b"EHLO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        replies = [reader.readline()]
        while not replies[-1].startswith((b"354", b"4", b"5")):
            replies.append(reader.readline())
        assert replies[-1].startswith(b"354"), replies
        conn.sendall(f"Message-Id: {mid}\r\nSubject: in flight\r\n\r\n".encode())
        relay.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", relay.port), timeout=2).close()  # no longer accepting
        conn.sendall(b"the end\r\n.\r\n")
        assert reader.readline().startswith(b"250 2.0.0 OK queued as")
    assert relay.stop() == 0
    assert len(received(sink, mid)) == 1


def test_require_tls_refuses_mail_before_starttls(tmp_path, sink):
    import ssl

    cert, key = self_signed(tmp_path)
    relay = start_relay(tmp_path / "relay", sink, {"tls_cert": str(cert), "tls_key": str(key), "require_tls": True})
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            code, reply = client.docmd("MAIL", "FROM:<app@client.test>")
            assert code == 530 and reply.startswith(b"5.7.0")
            client.starttls(context=context)
            client.ehlo()
            assert client.mail("app@client.test")[0] == 250
    finally:
        assert relay.stop() == 0


def test_queue_write_failure_answers_452_and_keeps_nothing(tmp_path, sink):
    """A file-size limit on the relay process makes writing a 100 KB queue file fail (EFBIG), as a full disk would."""
    import resource

    relay = start_relay(tmp_path / "relay", sink)
    writers = relay.pids()  # the agent's process and the receiving processes, which commit what they receive
    limits = resource.prlimit(relay.proc.pid, resource.RLIMIT_FSIZE)
    for pid in writers:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (64_000, limits[1]))
    try:
        mid = message_id()
        out = send(relay, "--to", "bob@example.test", "--body", ("x" * 70 + "\n") * 1400, mid=mid)
        assert "452 4.3.1" in out, out
    finally:
        for pid in writers:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, limits)
    queue = relay.state_dir / "queue"
    assert not [p for p in queue.iterdir() if p.suffix == ".seg" or p.name.endswith(".tmp")], "nothing half-written is kept"
    after = message_id()
    assert "250 2.0.0" in send(relay, "--to", "bob@example.test", mid=after)
    assert len(received(sink, after)) == 1 and received(sink, mid, timeout=0.5) == []
    assert relay.stop() == 0


def test_acknowledged_messages_survive_kill_9_under_load():
    """bench/relay_crash.py: kill -9 each receiving process, then the agent, under load; every 250 reaches the sink."""
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "relay_crash.py"),
            "--messages",
            "400",
            "--clients",
            "6",
            "--kill-after",
            "100",
            "--kill-every",
            "80",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "missing 0" in result.stdout
    assert result.stdout.count("killed -9 receiving process") == 2 and "killed -9 the agent" in result.stdout, result.stdout
    assert "receiving processes started again by the agent: 2" in result.stdout, result.stdout
