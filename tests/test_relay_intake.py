"""What the relay reaches of the core, and how: the intake surface, its settings object, one loop chooser.

The relay is a plugin: it takes the queue as ``Intake`` (a put that may ask for a DKIM
signature; a writer another process opens; segments adopted), its ``[relay]`` table as
``RelaySettings``, and the event loop from ``alertmail.intake.loop_factory``.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from types import SimpleNamespace

import pytest

import alertmail
import alertmail.intake
from alertmail.config.schema import Checker
from alertmail.intake import LoopUnavailable, loop_factory
from alertmail.model import Envelope
from alertmail.plugins.relay.service import RelayService, check_options
from alertmail.plugins.relay.settings import RelaySettings
from alertmail.queue.spool import Queue

MESSAGE = b"From: app@example.test\r\nTo: ops@example.test\r\nSubject: s\r\n\r\nbody\r\n"


def tagging(data: bytes) -> bytes:
    return b"X-Signed: yes\r\n" + data


def test_a_put_asking_for_dkim_is_signed_whatever_its_origin(tmp_path):
    """``[relay] dkim`` is the relay's to say, at the put: the queue signs only the agent's own mail by itself."""

    async def main() -> list[bytes]:
        queue = Queue(tmp_path / "queue", fsync=False, sign=tagging, sign_origins={"agent", "dsn"})
        await queue.start()
        try:
            envelope = Envelope("app@example.test", ("ops@example.test",))
            ids = [
                await queue.put(MESSAGE, envelope, origin="relay", dkim=True),
                await queue.put(MESSAGE, envelope, origin="relay"),
                await queue.put(MESSAGE, envelope, origin="agent"),
            ]
            return [await queue.read(msg_id) for msg_id in ids]
        finally:
            await queue.close()

    asked, not_asked, agent = asyncio.run(main())
    assert asked.startswith(b"X-Signed: yes\r\n")
    assert not_asked == MESSAGE
    assert agent.startswith(b"X-Signed: yes\r\n")


def test_a_receiving_process_queue_signs_what_it_is_asked_to(tmp_path):
    """The writer a receiving process gets (pickled) carries the signer; the process asks per message."""

    async def main() -> tuple[list[bytes], int]:
        owner = Queue(tmp_path / "queue", fsync=False, sign=tagging, sign_origins={"agent", "dsn"})
        await owner.start()
        try:
            told: list[str] = []
            writer = pickle.loads(pickle.dumps(owner.shared_writer()))
            queue = writer.open(told.append)
            envelope = Envelope("app@example.test", ("ops@example.test",))
            ids = [
                await queue.put(MESSAGE, envelope, origin="relay", dkim=True),
                await queue.put(MESSAGE, envelope, origin="relay"),
            ]
            await queue.close()
            adopted = sum(owner.adopt(segment) for segment in told)
            return [await owner.read(msg_id) for msg_id in ids], adopted
        finally:
            await owner.close()

    (signed, unsigned), adopted = asyncio.run(main())
    assert adopted == 2
    assert signed.startswith(b"X-Signed: yes\r\n") and unsigned == MESSAGE


def test_the_public_api_holds_no_name_only_a_service_that_takes_mail_in_needs():
    moved = {
        "Outbox",
        "QueueLocked",
        "QueueWriteError",
        "Badmail",
        "split_envelope",
        "listen_problem",
        "valid_hostname",
        "setup_logging",
    }
    assert moved & set(alertmail.__all__) == set()
    assert moved <= set(alertmail.intake.__all__)
    assert [name for name in alertmail.intake.__all__ if not hasattr(alertmail.intake, name)] == []


def test_relay_settings_carry_every_key_with_its_one_default_and_cross_a_pipe():
    settings = RelaySettings()
    assert RelayService.options is RelaySettings
    assert settings.workers == "auto" and settings.max_size == 10_000_000 and settings.stop_timeout == 5.0
    assert settings.as_table()["listen"] == ["127.0.0.1:2525"]
    assert pickle.loads(pickle.dumps(RelaySettings(max_recipients=7))) == RelaySettings(max_recipients=7)


def test_the_relay_check_reads_its_settings_object(tmp_path):
    """The service's check gets ``RelaySettings`` and the config as a ``ConfigView``."""

    config = SimpleNamespace(raw={"relay": {}}, transports={"smtp": {}}, state_dir=tmp_path)
    check = Checker(tmp_path)
    check_options(RelaySettings(route=["smtp"], max_recipients=0, reserved_connections=300), check, config)
    assert check.problems == [
        "relay.max_recipients: must be at least 1, got 0",
        "relay.reserved_connections: must be less than max_connections (300), or clients outside `allow` never get a "
        "session; lower it or raise max_connections",
    ]


@pytest.mark.parametrize(
    ("choice", "busy", "expected"),
    [("asyncio", True, None), ("auto", False, None), ("auto", True, "uvloop"), ("uvloop", False, "uvloop")],
)
def test_one_loop_chooser_for_the_agent_and_the_relay(choice, busy, expected):
    import uvloop

    assert loop_factory(choice, busy=busy) is (uvloop.new_event_loop if expected else None)


def test_uvloop_asked_by_name_and_missing_is_said_not_swallowed(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as on a host without it
    assert loop_factory("auto") is None
    with pytest.raises(LoopUnavailable, match="uvloop is not installed"):
        loop_factory("uvloop")
    with pytest.raises(ValueError, match="event_loop"):
        loop_factory("trio")
