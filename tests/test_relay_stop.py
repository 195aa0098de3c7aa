"""SIGTERM while a client sits in DATA: `alertmail relay` and `alertmail run` are gone, receiving processes included,
within 10 s, and what was acknowledged before stays queued."""

from __future__ import annotations

import signal
import smtplib
import socket
import time
from email.message import EmailMessage
from types import SimpleNamespace

import psutil
import pytest

from alertmail.queue.spool import Queue
from tests.peers import free_port
from tests.relay_peers import RelayProcess, message_id, relay_config

pytestmark = pytest.mark.peers

STOP_BOUND = 10.0


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def park_in_data(port: int) -> socket.socket:
    """A client that sent DATA and the start of a message, then nothing more."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)
    reader = conn.makefile("rb")
    assert reader.readline().startswith(b"220")
    conn.sendall(b"EHLO client.test\r\nMAIL FROM:<app@client.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    line = reader.readline()
    while not line.startswith((b"354", b"4", b"5")):
        line = reader.readline()
    assert line.startswith(b"354"), line
    conn.sendall(b"Subject: parked\r\n\r\nhalf a message\r\n")
    return conn


# (`alertmail run` receiving in its own process, workers = 0, always ended within its stop bound.)
@pytest.mark.parametrize("subcommand, workers", [("relay", 1), ("run", 1), ("relay", 0)])
def test_sigterm_with_a_client_parked_in_data_ends_every_process_within_10s(tmp_path, subcommand, workers):
    # The next hop refuses connections: what the relay acknowledged stays in its queue.
    next_hop = SimpleNamespace(host="127.0.0.1", port=free_port())
    port = free_port()
    config = relay_config(tmp_path, next_hop, port, {"workers": workers, "event_loop": "asyncio"})
    relay = RelayProcess(config, port, subcommand=subcommand).start()
    try:
        pids = relay.pids()
        assert len(pids) == 1 + workers  # the agent and its receiving processes
        mid = message_id()
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"], msg["Message-ID"] = "app@client.test", "bob@example.test", "before", mid
        msg.set_content("acknowledged before the stop")
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
            client.send_message(msg)
        parked = park_in_data(port)
        started = time.monotonic()
        relay.proc.send_signal(signal.SIGTERM)
        while not all(gone(pid) for pid in pids) and time.monotonic() - started < 30:
            time.sleep(0.05)
        took = time.monotonic() - started
        assert took <= STOP_BOUND, f"the last process ended {took:.1f}s after SIGTERM:\n{relay.output()[-2000:]}"
        assert relay.stop() == 0
        parked.settimeout(5)
        # The parked message was never acknowledged: the connection ends without a 250.
        assert not parked.recv(4096).startswith(b"250")
        parked.close()
    finally:
        relay.stop()
    queue = Queue(tmp_path / "var" / "queue")
    queue.load()
    subjects = [queue.read_message(e.id) for e in queue.entries()]
    assert [m for m in subjects if mid.encode() in m], f"the acknowledged message is not queued:\n{relay.output()}"
    assert not [m for m in subjects if b"parked" in m]
