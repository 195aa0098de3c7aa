"""The relay's receiving processes ([relay].workers): supervised, stopped with the agent, caps counted across them."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time

import psutil
import pytest

from alertmail.plugins.relay.policy import RelayPolicy
from alertmail.plugins.relay.receivers import Anvil
from tests.peers import SmtpSink, free_port
from tests.relay_peers import RelayProcess, message_id, private_folder, received, relay_config, self_signed, start_relay

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-workers-sink-") / "dump") as sink:
        yield sink


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def send(port: int, mid: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10, source_address=(source, 0)) as client:
        client.ehlo()
        client.mail("app@client.test")
        client.rcpt("bob@example.test")
        return client.data(f"Message-Id: {mid}\r\nSubject: workers\r\n\r\nhello\r\n".encode())


def test_relay_receives_in_as_many_processes_as_workers_says(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 3})
    try:
        assert len(relay.pids()) == 4  # the agent, which delivers, and three receiving processes
        mids = [message_id() for _ in range(6)]
        for mid in mids:
            assert send(relay.port, mid)[0] == 250
        for mid in mids:
            assert len(received(sink, mid)) == 1
    finally:
        assert relay.stop() == 0


def test_a_killed_receiving_process_is_started_again_and_the_port_keeps_answering(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 2})
    try:
        first = relay.pids()[1:]
        os.kill(first[0], signal.SIGKILL)
        mid = message_id()
        assert send(relay.port, mid)[0] == 250  # the other one, or the backlog until the new one takes it
        assert len(received(sink, mid)) == 1
        assert wait_for(lambda: len(relay.pids()) == 3 and first[0] not in relay.pids()), relay.pids()
        assert "receiving process 0" in relay.output() or "receiving process 1" in relay.output()
        assert "was killed by SIGKILL; starting it again" in relay.output()
        for pid in relay.pids()[1:]:
            os.kill(pid, signal.SIGKILL)  # all of them at once: the port still answers once one is back
        after = message_id()
        assert send(relay.port, after)[0] == 250
        assert len(received(sink, after)) == 1
    finally:
        assert relay.stop() == 0


def test_sigterm_stops_the_agent_with_every_receiving_process(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 2})
    children = relay.pids()[1:]
    assert len(children) == 2
    assert relay.stop(signal.SIGTERM) == 0
    assert all(gone(pid) for pid in children)


def test_kill_9_of_the_agent_leaves_no_receiving_process_behind(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 2})
    children = relay.pids()[1:]
    relay.kill()
    assert wait_for(lambda: all(gone(pid) for pid in children)), [p for p in children if not gone(p)]
    relay.start()  # the same port and queue at once: nothing of the old processes holds them
    try:
        mid = message_id()
        assert send(relay.port, mid)[0] == 250
        assert len(received(sink, mid)) == 1
    finally:
        assert relay.stop() == 0


def test_alertmail_run_starts_the_receiving_processes_too(tmp_path, sink):
    (tmp_path / "run").mkdir()
    port = free_port()
    relay = RelayProcess(relay_config(tmp_path / "run", sink, port, {"workers": 2}), port, subcommand="run").start()
    try:
        assert wait_for(lambda: len(relay.pids()) == 3), relay.pids()
        mid = message_id()
        assert send(relay.port, mid)[0] == 250
        assert len(received(sink, mid)) == 1
    finally:
        children = relay.pids()[1:]
        assert relay.stop() == 0
        assert all(gone(pid) for pid in children)


@pytest.mark.parametrize(("event_loop", "workers"), [("asyncio", 0), ("auto", 1)])
def test_alertmail_run_takes_mail_over_starttls_though_it_started_without_openssl(tmp_path, sink, event_loop, workers):
    """`alertmail run` starts asyncio without ssl (alertmail.deferssl); the relay's TLS must still work,
    in the agent's own process on asyncio and in a receiving process on the default loop."""
    import ssl

    (tmp_path / "run").mkdir()
    cert, key = self_signed(tmp_path)
    port = free_port()
    options = {"workers": workers, "tls_cert": str(cert), "tls_key": str(key), "require_tls": True}
    config = relay_config(tmp_path / "run", sink, port, options, agent={"event_loop": event_loop})
    relay = RelayProcess(config, port, subcommand="run").start()
    try:
        mid = message_id()
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate names relay.test; the chain is still verified
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
            client.ehlo()
            assert client.mail("app@client.test")[0] == 530  # require_tls: nothing before STARTTLS
            client.starttls(context=context)
            client.ehlo()
            client.mail("app@client.test")
            client.rcpt("bob@example.test")
            assert client.data(f"Message-Id: {mid}\r\nSubject: tls\r\n\r\nhello\r\n".encode())[0] == 250
        assert len(received(sink, mid)) == 1
    finally:
        assert relay.stop() == 0


def test_connections_per_client_are_capped_across_receiving_processes(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 3, "allow": ["127.0.0.1/32"], "max_connections_per_client": 2})
    held = []
    try:
        for _ in range(2):
            conn = socket.create_connection(("127.0.0.1", relay.port), timeout=10, source_address=("127.0.0.2", 0))
            held.append(conn)
            assert conn.makefile("rb").readline().startswith(b"220 ")
        for _ in range(3):  # whichever process takes them
            conn = socket.create_connection(("127.0.0.1", relay.port), timeout=10, source_address=("127.0.0.2", 0))
            held.append(conn)
            assert conn.makefile("rb").readline().startswith(b"421 4.7.0")
    finally:
        for conn in held:
            conn.close()
        assert relay.stop() == 0


def test_total_connections_are_capped_across_receiving_processes(tmp_path, sink):
    relay = start_relay(tmp_path / "relay", sink, {"workers": 3, "max_connections": 4})
    held = []
    try:
        for _ in range(4):
            conn = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            held.append(conn)
            assert conn.makefile("rb").readline().startswith(b"220 ")
        for _ in range(3):
            conn = socket.create_connection(("127.0.0.1", relay.port), timeout=10)
            held.append(conn)
            assert conn.makefile("rb").readline().startswith(b"421 4.7.0")
    finally:
        for conn in held:
            conn.close()
        assert relay.stop() == 0


def test_anvil_counts_a_clients_sessions_in_every_process_and_forgets_a_dead_ones():
    anvil = Anvil(RelayPolicy(hostname="relay.test", max_connections_per_client=2, max_auth_failures=2))
    assert anvil.answer(0, "admit 192.0.2.1") == "yes"
    assert anvil.answer(1, "admit 192.0.2.1") == "yes"
    assert anvil.answer(2, "admit 192.0.2.1") == "no"
    assert anvil.answer(0, "admit 192.0.2.9") == "yes"  # another client
    anvil.forget(1)  # process 1 died, and its sessions with it
    assert anvil.answer(2, "admit 192.0.2.1") == "yes"
    assert anvil.answer(0, "release 192.0.2.1") is None
    assert anvil.answer(0, "failed 192.0.2.1") == "no"
    assert anvil.answer(1, "blocked 192.0.2.1") == "no"
    assert anvil.answer(1, "failed 192.0.2.1") == "yes"
    assert anvil.answer(0, "blocked 192.0.2.1") == "yes"
    assert anvil.answer(0, "blocked 192.0.2.2") == "no"
