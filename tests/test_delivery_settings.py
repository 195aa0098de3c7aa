"""[queue], [mail.dkim] and [transports.NAME] become settings objects, and their components take them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from alertmail import Settings
from alertmail.config.load import load_config
from alertmail.delivery import delivery, dkim
from alertmail.loader import load_plugins
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status, TransportContext
from tests.probe_agent import write_config

BUNDLED = ("pickup", "smtp", "mx", "alertmanager", "webhook", "exec")


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_transport_declares_its_options_as_a_settings_class(name):
    cls = load_plugins([]).transports[name]
    assert isinstance(cls.options, type) and issubclass(cls.options, Settings)
    assert cls.options.options()  # the checker reads its keys from the fields


def test_the_loader_hands_a_transport_its_settings_object_with_paths_checked_and_defaults_in_place(tmp_path):
    cfg = load_config(
        write_config(
            tmp_path,
            """
            [transports.pickup]
            directory = "out"
            [transports.smtp]
            servers = ["127.0.0.1:2525"]
            tls = "none"
            connect_timeout = "2s"
            """,
        )
    )
    pickup, smtp = cfg.transports["pickup"], cfg.transports["smtp"]
    assert type(pickup).__name__ == "PickupSettings" and pickup.directory == tmp_path / "out" and pickup.envelope is True
    assert type(smtp).__name__ == "SmtpSettings"
    assert (smtp.servers, smtp.tls, smtp.connect_timeout, smtp.command_timeout) == (["127.0.0.1:2525"], "none", 2.0, 300.0)
    built = load_plugins([]).transports["smtp"](smtp, _context(tmp_path))
    assert built.session.timeouts.connect == 2.0 and built.session.timeouts.data == 600.0


def test_queue_and_dkim_sections_are_settings_objects_whose_defaults_make_the_retry_policy(tmp_path):
    cfg = load_config(write_config(tmp_path, '[queue]\nretry = ["1m", "10m"]\nconcurrency = 3\n'))
    queue = cfg.section(delivery.SECTION)
    assert isinstance(queue, delivery.QueueSettings) and (queue.retry, queue.concurrency, queue.expire) == (
        [60.0, 600.0],
        3,
        172800.0,
    )
    assert isinstance(cfg.section(dkim.SECTION), dkim.DkimSettings) and cfg.section(dkim.SECTION).key_file is None
    default = delivery.RetryPolicy.from_settings(load_config(write_config(tmp_path, "")).section(delivery.SECTION))
    assert default == delivery.RetryPolicy.from_settings(delivery.QueueSettings())
    assert (default.intervals, default.delay_notice, default.expire) == ((900.0, 1800.0, 3600.0, 14400.0), 43200.0, 172800.0)


def test_a_reload_hands_the_delivery_its_new_queue_settings_whole(tmp_path):
    from alertmail.delivery.outbox import Outbox

    first = load_config(write_config(tmp_path, '[queue]\nconcurrency = 2\nretry = ["1m"]\n'))
    second = load_config(write_config(tmp_path, '[queue]\nconcurrency = 5\nretry = ["2m", "4m"]\nexpire = "1h"\n'))

    async def main() -> tuple[object, int, tuple[float, ...], float]:
        outbox = Outbox(first, load_plugins([]))
        await outbox.open()
        try:
            await outbox.reconfigure(second, outbox.build_transports(second))
            pool = outbox.delivery
            return pool.settings, pool.concurrency, pool.policy.intervals, pool.policy.expire
        finally:
            await outbox.close()

    settings, concurrency, intervals, expire = asyncio.run(main())
    assert settings == second.section(delivery.SECTION)
    assert (concurrency, intervals, expire) == (5, (120.0, 240.0), 3600.0)


class _Closing:
    def __init__(self, name: str, fails: bool = False) -> None:
        self.name, self.fails, self.closed = name, fails, False

    async def send(self, message: bytes, envelope: Envelope) -> DeliveryResult:
        return DeliveryResult.all(envelope.recipients, RecipientStatus(Status.DELIVERED, 250, "ok"))

    async def close(self) -> None:
        self.closed = True
        if self.fails:
            raise ValueError("broken pipe")


def test_a_transport_that_fails_to_close_is_reported_and_the_others_still_close():
    transports = [_Closing("a", fails=True), _Closing("b")]
    failed: list[tuple[str, str]] = []
    asyncio.run(delivery.close_transports(transports, failed=lambda t, exc: failed.append((t.name, str(exc)))))
    assert [t.closed for t in transports] == [True, True]
    assert failed == [("a", "broken pipe")]


def _context(tmp_path: Path) -> TransportContext:
    return TransportContext(state_dir=tmp_path / "var", hostname="agent.test")


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ('[transports.webhook]\nurl = "http://127.0.0.1:9/"\ntimeout = "0"\n', "transports.webhook.timeout"),
        ('[transports.webhook]\nurl = "http://127.0.0.1:9/"\nreceiver = ""\n', "transports.webhook.receiver"),
        ('[transports.exec]\ncommand = ["/bin/true"]\ntimeout = "0"\n', "transports.exec.timeout"),
        ('[transports.exec]\ncommand = ["/bin/true"]\nreceiver = ""\n', "transports.exec.receiver"),
        ('[transports.mx]\nmta_sts_timeout = "0"\n', "transports.mx.mta_sts_timeout"),
    ],
)
def test_a_zero_timeout_or_an_empty_receiver_is_refused_by_its_key_not_taken_as_the_default(tmp_path, table, key):
    from alertmail import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_config(write_config(tmp_path, table))
    assert any(problem.startswith(f"{key}: ") for problem in refused.value.problems), refused.value.problems
