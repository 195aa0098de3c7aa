"""A queued message follows the route in force at each attempt; one that cannot be routed is
held in the open (queue list, check, a self-alert) and goes to badmail with the reason at expire."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from alertmail.delivery.delivery import Delivery, QueueSettings
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status
from alertmail.queue.spool import Queue
from tests.peers import free_port
from tests.test_queue import invoke
from tests.test_reload import Agent, config_text

ENV = Envelope("alerts@example.test", ("ops@example.test",))
DATA = b"From: alerts@example.test\r\nTo: ops@example.test\r\nSubject: disk full\r\n\r\nbody\r\n"


class Recorder:
    """A transport that delivers everything and remembers what it was given."""

    def __init__(self, status: Status = Status.DELIVERED) -> None:
        self.status = status
        self.sent: list[Envelope] = []

    async def send(self, message, envelope):
        self.sent.append(envelope)
        return DeliveryResult.all(
            envelope.recipients, RecipientStatus(self.status, 250 if self.status == Status.DELIVERED else 451, "x")
        )


async def until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.01)


def test_a_queued_message_takes_the_route_the_reloaded_config_names(tmp_path):
    async def run() -> list[Envelope]:
        queue = Queue(tmp_path / "queue", fsync=False)
        queue.routes = {"mail.route": ["smtp"]}
        await queue.start()
        smtp, pickup = Recorder(Status.TEMPORARY), Recorder()
        delivery = Delivery(queue, {"smtp": smtp}, QueueSettings(), state_dir=tmp_path, hostname="h", default_route=["smtp"])
        await delivery.start()
        try:
            msg_id = await queue.put(DATA, ENV, route=["smtp"], origin="agent")
            await until(lambda: smtp.sent and (e := queue.get(msg_id)) is not None and e.attempts == 1)
            queue.routes = {"mail.route": ["pickup"]}
            delivery.apply(
                QueueSettings(concurrency=2),
                {"pickup": pickup},
                default_route=["pickup"],
                changed={"smtp", "pickup"},
                routes=queue.routes,
            )
            await until(lambda: queue.get(msg_id) is None)
            return pickup.sent
        finally:
            await delivery.stop()
            await queue.close()

    assert asyncio.run(run()) == [ENV]


def test_a_message_that_cannot_be_routed_is_held_in_the_open_then_goes_to_badmail_with_the_reason(tmp_path):
    async def run() -> tuple[str, str, float]:
        queue = Queue(tmp_path / "queue", fsync=False)
        queue.routes = {"mail.route": ["pickup"], "mail.also_route": ["am"]}
        await queue.start()
        delivery = Delivery(
            queue,
            {"pickup": Recorder()},
            QueueSettings(expire=1.0),
            state_dir=tmp_path,
            hostname="h",
            default_route=["pickup"],
            routes={"mail.route": ["pickup"]},  # also_route and its transport gone
        )
        await delivery.start()
        try:
            msg_id = await queue.put(DATA, ENV, route=["am"], origin="agent")
            await until(lambda: delivery.held_by_transport() == {"am": 1})
            seen = Queue(tmp_path / "queue")  # as `queue list` reads it, from another process
            seen.load()
            entry = seen.get(msg_id)
            assert entry is not None and entry.attempts == 0
            held, since = entry.held, entry.held_since
            await until(lambda: queue.get(msg_id) is None, timeout=5)
            return msg_id, held, since
        finally:
            await delivery.stop()
            await queue.close()

    started = time.time()
    msg_id, held, since = asyncio.run(run())
    assert "'am'" in held and "mail.also_route" in held and started <= since <= time.time()
    reason = (tmp_path / "badmail" / f"{msg_id}.bdr").read_text().splitlines()[0]
    assert reason.startswith("Expired: held since") and "'am'" in reason, reason


def wait_until(condition, agent: Agent, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, agent.output()
        time.sleep(0.2)


def message_ids(folder: Path) -> set[bytes]:
    """The Message-ID headers of what waits in the queue at ``folder``."""
    queue = Queue(folder)
    queue.load()
    out = set()
    for entry in queue.entries():
        head = queue.read_message(entry.id).split(b"\r\n\r\n", 1)[0]
        out |= {line for line in head.split(b"\r\n") if line.lower().startswith(b"message-id:")}
    return out


def test_the_agent_sends_a_queued_alert_through_the_route_a_reload_names(tmp_path):
    dead = free_port()
    broken = f'\n[transports.smtp]\nservers = ["127.0.0.1:{dead}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    agent = Agent(tmp_path, config_text('"smtp"', broken))
    pickup = tmp_path / "var" / "pickup"
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        agent.wait_for("next try in 15m")
        waiting = message_ids(tmp_path / "var" / "queue")
        assert waiting
        agent.reload(config_text('"pickup"'))  # no [transports.smtp] any more

        def delivered() -> set[bytes]:
            return {line for p in pickup.glob("*.eml") for line in p.read_bytes().split(b"\r\n") if line in waiting}

        wait_until(lambda: delivered() == waiting, agent, 15)
    finally:
        agent.stop()


def test_a_held_message_shows_in_queue_list_check_and_a_self_alert_then_expires_to_badmail(tmp_path):
    dead = free_port()
    broken = f'\n[transports.smtp]\nservers = ["127.0.0.1:{dead}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    queue = '\n[queue]\nexpire = "25s"\n'
    also = config_text('"pickup"', broken, queue).replace('route = ["pickup"]', 'route = ["pickup"]\nalso_route = ["smtp"]')
    agent = Agent(tmp_path, also)
    config = str(tmp_path / "config.toml")
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        agent.wait_for("next try in")
        (tmp_path / "plugins.d" / "value.txt").write_text("10")  # no more mails for the alert
        agent.reload(config_text('"pickup"', "", queue))  # also_route and its transport gone
        agent.wait_for("held:")
        listed = invoke("queue", "list", "-c", config).output
        assert "held since" in listed and "'smtp'" in listed, listed
        checked = invoke("check", "-c", config).output
        assert "cannot be routed with this config" in checked and "'smtp'" in checked, checked
        pickup = tmp_path / "var" / "pickup"
        wait_until(lambda: any("agent-queue-held" in p.read_text(errors="replace") for p in pickup.glob("*.eml")), agent)
        badmail = tmp_path / "var" / "badmail"
        wait_until(lambda: list(badmail.glob("*.bdr")), agent, 40)
        reason = next(badmail.glob("*.bdr")).read_text()
        assert reason.startswith("Expired: held since") and "'smtp'" in reason, reason
    finally:
        agent.stop()


def test_queue_retry_of_a_held_message_says_held_at_once(tmp_path):
    dead = free_port()
    broken = f'\n[transports.smtp]\nservers = ["127.0.0.1:{dead}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    also = config_text('"pickup"', broken).replace('route = ["pickup"]', 'route = ["pickup"]\nalso_route = ["smtp"]')
    agent = Agent(tmp_path, also)
    config = str(tmp_path / "config.toml")
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        agent.wait_for("next try in")
        (tmp_path / "plugins.d" / "value.txt").write_text("10")
        agent.reload(config_text('"pickup"'))
        agent.wait_for("held:")
        seen = Queue(Path(tmp_path / "var" / "queue"))
        seen.load()
        [held] = [e for e in seen.entries() if e.held]
        started = time.monotonic()
        out = invoke("queue", "retry", held.id, "-c", config)
        assert time.monotonic() - started < 15
        assert out.exit_code == 78 and f"{held.id}: held since" in out.output, out.output
    finally:
        agent.stop()
