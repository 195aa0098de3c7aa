"""SIGHUP applies the whole new config, or none of it; a configuration problem holds mail, it does not punish it."""

from __future__ import annotations

import asyncio
import signal
import socket
import textwrap
import time
from pathlib import Path

import pytest

from alertmail.delivery.delivery import Delivery, QueueSettings
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status
from alertmail.queue.spool import Queue
from tests.peers import SmtpSink, free_port
from tests.relay_peers import private_folder
from tests.test_status import RunningAgent, config_head


def config_text(route: str, transports: str = "", extra: str = "") -> str:
    return (
        config_head(route)
        + textwrap.dedent("""
        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        repeat = "2s"
        """)
        + textwrap.dedent(transports)
        + textwrap.dedent(extra)
    )


class Agent(RunningAgent):
    """The status tests' running agent, the gauge at 10, up ("watching") once made, and reloaded by SIGHUP."""

    def __init__(self, folder: Path, text: str) -> None:
        super().__init__(folder, text, value="10")
        self.wait_for("watching")

    def output(self) -> str:
        return self.log.read_text()

    def reload(self, text: str) -> None:
        count = self.output().count("configuration reloaded") + self.output().count("reload refused")
        self.config.write_text(text)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while self.output().count("configuration reloaded") + self.output().count("reload refused") <= count:
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.1)


@pytest.fixture
def sink():
    with SmtpSink(private_folder("reload-sink-") / "dump") as sink:
        yield sink


def test_changing_the_route_and_adding_a_transport_applies_at_once(tmp_path, sink):
    agent = Agent(tmp_path, config_text('"pickup"'))
    try:
        smtp = f'\n[transports.smtp]\nservers = ["{sink.host}:{sink.port}"]\ntls = "none"\n'
        agent.reload(config_text('"smtp"', smtp))
        assert "configuration reloaded" in agent.output()
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        deadline = time.monotonic() + 30
        while not sink.messages():
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
        assert "no transport named" not in agent.output() and "next restart" not in agent.output()
        assert not list((tmp_path / "var" / "pickup").glob("*.eml"))
    finally:
        agent.stop()


def test_a_deferred_message_goes_at_once_when_its_transport_is_fixed(tmp_path, sink):
    dead = free_port()
    broken = f'\n[transports.smtp]\nservers = ["127.0.0.1:{dead}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    agent = Agent(tmp_path, config_text('"smtp"', broken))
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        agent.wait_for("next try in 15m")  # the first retry is a quarter of an hour away
        fixed = f'\n[transports.smtp]\nservers = ["{sink.host}:{sink.port}"]\ntls = "none"\n'
        agent.reload(config_text('"smtp"', fixed))
        deadline = time.monotonic() + 15
        while not sink.messages():
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
        assert "tried again now" in agent.output()
    finally:
        agent.stop()


def test_a_key_only_a_restart_can_change_refuses_the_whole_reload(tmp_path):
    text = config_text('"pickup"')
    agent = Agent(tmp_path, text)
    try:
        changed = text.replace('state_dir = "var"', 'state_dir = "elsewhere"').replace("above = 50", "above = 5")
        agent.reload(changed)
        assert "reload refused: agent.state_dir can change only at a restart" in agent.output()
        (tmp_path / "plugins.d" / "value.txt").write_text("20")  # above the new threshold, not the running one
        time.sleep(3)
        assert not list((tmp_path / "var" / "pickup").glob("*.eml")) and not (tmp_path / "elsewhere").exists()
    finally:
        agent.stop()


def test_the_relay_binds_its_new_address_on_reload(tmp_path, sink):
    first, second = free_port(), free_port()
    relay = (
        '\n[transports.pickup]\ndirectory = "outbox"\n'  # not the relay's own pickup folder: that would loop
        '\n[relay]\nenabled = true\nlisten = ["127.0.0.1:{}"]\nhostname = "relay.test"\ngreet_pause = "0s"\nroute = ["pickup"]\n'
    )
    agent = Agent(tmp_path, config_text('"pickup"', extra=relay.format(first)))
    try:
        agent.wait_for(f"listening on 127.0.0.1:{first}")
        agent.reload(config_text('"pickup"', extra=relay.format(second)))
        agent.wait_for(f"listening on 127.0.0.1:{second}")
        with socket.create_connection(("127.0.0.1", second), timeout=5) as conn:
            assert conn.recv(100).startswith(b"220 ")
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", first), timeout=2):
            pass
    finally:
        agent.stop()


class Recorder:
    """A transport that delivers everything and remembers what it was given."""

    name = "later"

    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    async def send(self, message, envelope):
        self.sent.append(envelope)
        return DeliveryResult.all(envelope.recipients, RecipientStatus(Status.DELIVERED, 250, "ok"))


def test_a_route_naming_a_missing_transport_holds_the_message_uncounted_until_a_reload_supplies_it(tmp_path):
    async def run() -> tuple[int, int, list[Envelope]]:
        queue = Queue(tmp_path / "queue", fsync=False)
        await queue.start()
        delivery = Delivery(queue, {}, QueueSettings(), state_dir=tmp_path, hostname="h", default_route=["later"])
        await delivery.start()
        try:
            msg_id = await queue.put(b"Subject: x\r\n\r\nx\r\n", Envelope("a@example.test", ("b@example.test",)))
            while msg_id not in delivery.held:
                await asyncio.sleep(0.01)
            entry = queue.get(msg_id)
            assert entry is not None
            attempts = entry.attempts
            recorder = Recorder()
            again = delivery.apply(QueueSettings(concurrency=2), {"later": recorder}, default_route=["later"], changed={"later"})
            while not recorder.sent:
                await asyncio.sleep(0.01)
            return attempts, again, recorder.sent
        finally:
            await delivery.stop()
            await queue.close()

    attempts, again, sent = asyncio.run(run())
    assert attempts == 0 and again == 1 and sent == [Envelope("a@example.test", ("b@example.test",))]


def test_the_exporter_moves_to_its_new_address_on_reload(tmp_path):
    import urllib.request

    first, second = free_port(), free_port()
    exporter = '\n[exporter]\nlisten = "127.0.0.1:{}"\n'
    agent = Agent(tmp_path, config_text('"pickup"', extra=exporter.format(first)))
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=5) as answer:
            assert answer.status == 200
        agent.reload(config_text('"pickup"', extra=exporter.format(second)))
        with urllib.request.urlopen(f"http://127.0.0.1:{second}/metrics", timeout=5) as answer:
            assert b"alertmail_" in answer.read()
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{first}/metrics", timeout=2)
    finally:
        agent.stop()


def test_run_warns_once_about_a_rule_that_matches_no_series(tmp_path):
    typo = '\n[[rules]]\nname = "typo"\nmetric = "test.gauges"\nabove = 1\n'
    agent = Agent(tmp_path, config_text('"pickup"', extra=typo))
    try:
        assert "rules[1].metric: no loaded probe declares 'test.gauges'" in agent.output()  # said at start too
        agent.wait_for("rule typo has matched no series", timeout=40)  # after 10 probe intervals (1 s here)
        time.sleep(2)
        assert agent.output().count("has matched no series") == 1  # once, and not for gauge-high, which matches
    finally:
        agent.stop()


def test_a_reload_that_changes_the_sender_mails_from_it_with_message_ids_at_its_domain(tmp_path):
    import email
    import email.policy

    text = config_text('"pickup"')
    agent = Agent(tmp_path, text)
    try:
        agent.reload(text.replace("alertmail@web01.test", "alertmail@db02.test"))
        assert "configuration reloaded" in agent.output()
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        deadline = time.monotonic() + 30
        while not (mails := list((tmp_path / "var" / "pickup").glob("*.eml"))):
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
        msg = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
        assert msg["From"].addresses[0].addr_spec == "alertmail@db02.test"
        assert str(msg["Message-ID"]).endswith("@db02.test>")  # the domain of the From the mail has now
    finally:
        agent.stop()
