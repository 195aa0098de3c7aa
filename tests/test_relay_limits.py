"""Connection caps, session lifetime, command caps and the failed-AUTH limit, against a real relay process.

Clients come from many loopback addresses (127.0.0.x): 127.0.0.1 is in ``allow``, the
others play outside clients.
"""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
import socket
import ssl
import time

import aiosmtplib
import pytest

from tests.peers import SmtpSink
from tests.relay_peers import message_id, private_folder, received, self_signed, start_relay, swaks_to, users_file

pytestmark = pytest.mark.peers

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-limits-sink-") / "dump") as sink:
        yield sink


@pytest.fixture
def relay(tmp_path, sink):
    """127.0.0.1 may relay; 127.0.0.2 and .3 play outside clients; small caps."""
    cert, key = self_signed(tmp_path)
    users = users_file(tmp_path, {"alice": PASSWORD})
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users),
        "allow": ["127.0.0.1/32"],
        "max_connections": 6,
        "max_connections_per_client": 3,
        "max_auth_failures": 3,
    }
    process = start_relay(tmp_path / "relay", sink, options)
    yield process
    assert process.stop() == 0


def connect(port: int, source: str) -> tuple[socket.socket, bytes]:
    """A connection and its first reply line (the banner, or a refusal)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    return conn, conn.makefile("rb").readline()


def test_connections_per_client_are_capped_with_421(relay):
    held = []
    try:
        for _ in range(3):
            conn, banner = connect(relay.port, "127.0.0.2")
            held.append(conn)
            assert banner.startswith(b"220 "), banner
        conn, reply = connect(relay.port, "127.0.0.2")
        held.append(conn)
        assert reply.startswith(b"421 4.7.0"), reply
        assert conn.recv(100) == b""  # and closed
        other, banner = connect(relay.port, "127.0.0.3")  # another client is not affected
        held.append(other)
        assert banner.startswith(b"220 "), banner
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    conn, banner = connect(relay.port, "127.0.0.2")  # closed connections free their places
    conn.close()
    assert banner.startswith(b"220 "), banner


def test_total_connections_are_capped_with_421(relay):
    held = []
    try:
        for _ in range(6):
            conn, banner = connect(relay.port, "127.0.0.1")  # allowed clients: only the total cap
            held.append(conn)
            assert banner.startswith(b"220 "), banner
        for source in ("127.0.0.1", "127.0.0.3"):
            conn, reply = connect(relay.port, source)
            held.append(conn)
            assert reply.startswith(b"421 4.7.0"), reply
    finally:
        for conn in held:
            conn.close()
    time.sleep(0.3)
    with smtplib.SMTP("127.0.0.1", relay.port, timeout=10) as client:
        assert client.noop()[0] == 250


def login(port: int, source: str, password: str) -> tuple[int, bytes]:
    """One AUTH PLAIN over STARTTLS (smtplib's login() would try a second mechanism)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=20, source_address=(source, 0))
    try:
        client.starttls(context=context)
        client.ehlo()
        token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")
    finally:
        try:
            client.close()
        except OSError:
            pass


def test_failed_auth_is_rate_limited_per_client(relay):
    codes = [login(relay.port, "127.0.0.2", f"guess {i}")[0] for i in range(3)]
    assert codes == [535, 535, 421], codes
    code, reply = login(relay.port, "127.0.0.2", PASSWORD)  # even the right password, for now
    assert code == 421 and reply.startswith(b"4.7.0"), (code, reply)
    assert login(relay.port, "127.0.0.3", PASSWORD)[0] == 235  # another client is not affected


# -- sessions reserved for `allow` clients -----------------------------------------


async def open_sessions(port: int, sources: list[str]) -> tuple[list[aiosmtplib.SMTP], list[str]]:
    """A session from each of ``sources`` at once; the open ones, and the source of each refused one."""
    clients = [aiosmtplib.SMTP(hostname="127.0.0.1", port=port, source_address=(s, 0), timeout=10) for s in sources]
    results = await asyncio.gather(*(c.connect() for c in clients), return_exceptions=True)
    refused = []
    for source, result in zip(sources, results, strict=True):
        if isinstance(result, BaseException):
            assert isinstance(result, aiosmtplib.SMTPConnectResponseError) and result.code == 421, result
            refused.append(source)
    return [c for c, r in zip(clients, results, strict=True) if not isinstance(r, BaseException)], refused


@pytest.mark.parametrize("workers", [0, 2])
def test_outside_clients_cannot_take_the_sessions_reserved_for_allow_clients(tmp_path, sink, workers):
    options = {
        "allow": ["127.0.0.1/32"],
        "max_connections": 12,
        "reserved_connections": 4,
        "max_connections_per_client": 3,
        "workers": workers,
    }
    relay = start_relay(tmp_path / "relay", sink, options)

    async def scenario() -> None:
        # six outside addresses, three sessions each: 18 asked, 8 (12 - 4 reserved) given
        outside = [f"127.0.0.{2 + i // 3}" for i in range(18)]
        held, refused = [], []
        for source in outside:  # one at a time: which ones are refused is then known
            opened, no = await open_sessions(relay.port, [source])
            held += opened
            refused += no
        assert len(held) == 8 and len(refused) == 10, (len(held), refused)
        local, refused_local = await open_sessions(relay.port, ["127.0.0.1"] * 4)
        assert refused_local == [] and len(local) == 4
        for client in local:
            assert (await client.noop())[0] == 250
        more, refused_more = await open_sessions(relay.port, ["127.0.0.1"])
        assert more == [] and refused_more == ["127.0.0.1"]  # max_connections still holds for everyone
        for client in held + local:
            client.close()

    try:
        asyncio.run(scenario())
    finally:
        assert relay.stop() == 0


def test_with_the_default_caps_six_outside_addresses_leave_fifty_sessions_to_local_programs(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"allow": ["127.0.0.1/32"]})

    async def scenario() -> None:
        held, refused = [], []
        for n in range(2, 8):  # 127.0.0.2 .. 127.0.0.7, 50 sessions each (max_connections_per_client)
            opened, no = await open_sessions(relay.port, [f"127.0.0.{n}"] * 50)
            held += opened
            refused += no
        assert len(held) == 250 and len(refused) == 50, (len(held), len(refused))  # 300 - 50 reserved
        local, refused_local = await open_sessions(relay.port, ["127.0.0.1"] * 50)
        assert refused_local == [] and len(local) == 50
        client = local[0]
        await client.ehlo()
        await client.sendmail("app@client.test", ["bob@example.test"], f"Message-Id: {mid}\r\n\r\nstill served\r\n")
        for client in held + local:
            client.close()

    mid = message_id()
    try:
        asyncio.run(scenario())
        assert len(received(sink, mid)) == 1
    finally:
        assert relay.stop() == 0


# -- session lifetime and commands without progress ------------------------------


@pytest.fixture
def short_lived(tmp_path, sink):
    """Sessions last 2 s at most, and 3 s more for a transaction in progress then."""
    relay = start_relay(tmp_path / "relay", sink, {"allow": ["127.0.0.1/32"], "max_session_time": "2s", "timeout": "3s"})
    yield relay
    assert relay.stop() == 0


@pytest.fixture
def few_commands(tmp_path, sink):
    """5 commands that move no mail end a session."""
    relay = start_relay(tmp_path / "relay", sink, {"allow": ["127.0.0.1/32"], "max_commands": 5})
    yield relay
    assert relay.stop() == 0


def reply(reader) -> bytes:
    """One whole reply (all the lines of a multi-line one)."""
    lines = [reader.readline()]
    while lines[-1][3:4] == b"-":
        lines.append(reader.readline())
    return b"".join(lines)


def test_a_session_that_only_keeps_alive_ends_at_max_session_time(short_lived):
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 8:  # a NOOP every 0.5 s, well within the 3 s idle timeout
            try:
                conn.sendall(b"NOOP\r\n")
            except OSError:
                break
            line = reader.readline()
            answers.append(line)
            if not line.startswith(b"250"):
                break
            time.sleep(0.5)
        assert answers[-1].startswith(b"421 4.4.2"), answers
        assert reader.read() == b""  # and closed
        assert 1.5 < time.monotonic() - started < 6


def test_a_transaction_in_progress_at_max_session_time_is_accepted_then_the_session_ends(short_lived, sink):
    mid = message_id()
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        for line in (b"EHLO client.test", b"MAIL FROM:<app@client.test>", b"RCPT TO:<bob@example.test>"):
            conn.sendall(line + b"\r\n")
            assert reply(reader).startswith(b"250")
        time.sleep(1.2)
        conn.sendall(b"DATA\r\n")
        assert reader.readline().startswith(b"354")
        conn.sendall(f"Message-Id: {mid}\r\nSubject: slow\r\n\r\n".encode())
        for _ in range(3):  # the data ends at 2.7 s: past max_session_time, within the grace of `timeout`
            time.sleep(0.5)
            conn.sendall(b"a line\r\n")
        conn.sendall(b".\r\n")
        assert reader.readline().startswith(b"250 2.0.0 OK queued as")
        assert reader.readline().startswith(b"421 4.4.2")
        assert reader.read() == b""
    assert len(received(sink, mid)) == 1


def test_a_transaction_kept_open_past_the_grace_is_cut_off(short_lived):
    with socket.create_connection(("127.0.0.1", short_lived.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        for line in (b"EHLO client.test", b"MAIL FROM:<app@client.test>", b"RCPT TO:<bob@example.test>"):
            conn.sendall(line + b"\r\n")
            assert reply(reader).startswith(b"250")
        started = time.monotonic()
        answers = []
        while time.monotonic() - started < 12:  # NOOPs inside the transaction, never idle for `timeout`
            try:
                conn.sendall(b"NOOP\r\n")
            except OSError:
                break
            answers.append(reader.readline())
            if not answers[-1].startswith(b"250"):
                break
            time.sleep(0.5)
        assert answers[-1].startswith(b"421 4.4.2"), answers  # at max_session_time + `timeout`: 5 s
        assert 4 < time.monotonic() - started < 9


def test_transactions_given_up_count_against_max_commands(few_commands, sink):
    with socket.create_connection(("127.0.0.1", few_commands.port), timeout=10) as conn:
        reader = conn.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        conn.sendall(b"EHLO client.test\r\n")
        assert reply(reader).startswith(b"250")  # 1 of the 5
        answers = []
        for _ in range(5):  # MAIL, RCPT, RSET: each round moves no mail
            for line in (b"MAIL FROM:<app@client.test>", b"RCPT TO:<bob@example.test>", b"RSET"):
                conn.sendall(line + b"\r\n")
                answers.append(reader.readline())
                if answers[-1].startswith(b"421"):
                    break
            if answers[-1].startswith(b"421"):
                break
        # with the EHLO, two rounds count 7 of the 5 allowed; the third round's MAIL is refused
        assert len(answers) == 7 and answers[-1].startswith(b"421 4.7.0"), answers
    # an accepted message is progress: a session sending mail goes on, RSETs and all
    mids = [message_id() for _ in range(8)]
    with smtplib.SMTP("127.0.0.1", few_commands.port, local_hostname="client.test", timeout=10) as client:
        for mid in mids:  # 8 messages, 3 commands each, with a RSET before each: 32 commands
            client.rset()
            client.sendmail("app@client.test", ["bob@example.test"], f"Message-Id: {mid}\r\n\r\nhi\r\n")
    for mid in mids:
        assert len(received(sink, mid)) == 1


# -- AUTH: everyone is locked out, warnings are counted -------------------------


def swaks_auth(port: int, password: str, source: str = "127.0.0.1") -> str:
    return swaks_to(
        port,
        "--to",
        "bob@example.test",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        password,
        "--quit-after",
        "AUTH",
        source=source,
    )


def test_allowed_clients_are_locked_out_after_max_auth_failures_too(relay):
    transcripts = [swaks_auth(relay.port, f"guess {i}") for i in range(3)]
    assert "535 5.7.8" in transcripts[0] and "535 5.7.8" in transcripts[1], transcripts[:2]
    assert "421 4.7.0" in transcripts[2], transcripts[2]
    assert "421 4.7.0" in swaks_auth(relay.port, PASSWORD)  # the right password too, for now
    assert "235 2.7.0" in swaks_auth(relay.port, PASSWORD, source="127.0.0.3")  # not another client


def test_failed_auth_warnings_are_rate_limited_and_counted(tmp_path, sink):
    cert, key = self_signed(tmp_path)
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users_file(tmp_path, {"alice": PASSWORD})),
        "max_auth_failures": 100,  # no lockout here: every guess is checked and fails
        "max_auth_warnings": 3,
        "rate_window": "3s",
        "workers": 1,
    }
    relay = start_relay(tmp_path / "relay", sink, options)
    try:
        guesses = 0
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"):
            for i in range(4):
                assert login(relay.port, source, f"guess {i}")[0] == 535
                guesses += 1
        deadline = time.monotonic() + 15
        while True:  # the count of what was not written comes once its window is over
            output = relay.output()
            one_by_one = output.count("failed AUTH from")
            counted = sum(int(n) for n in re.findall(r"(\d+) more failed AUTH not logged one by one", output))
            if one_by_one + counted == guesses or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert one_by_one + counted == guesses, output
        assert counted > 0 and one_by_one <= 3 * 6, output  # at most 3 a window, however long the guessing took
    finally:
        assert relay.stop() == 0
