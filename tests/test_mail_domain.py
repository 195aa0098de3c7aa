"""The names in the mail itself: Message-IDs and the DSN's From on a fully qualified domain,
a Date in UTC written +0000, a subject without doubled spaces, and a warning for a From at localhost."""

from __future__ import annotations

import asyncio
import email
import email.policy
import textwrap

from click.testing import CliRunner

from alertmail.cli.app import cli
from alertmail.config.core import MailSettings
from alertmail.notify.heartbeat import Heartbeat, HeartbeatSettings
from alertmail.notify.notifier import NotifySettings
from alertmail.queue.dsn import build_dsn
from alertmail.queue.entry import Entry, RecipientState
from alertmail.queue.spool import Queue
from alertmail.replay import MailCollector
from alertmail.units import mail_domain
from tests.mail_kinds import DISK, OPS, T0, event


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_the_mail_domain_is_the_from_domain_else_a_qualified_host_name_never_the_short_one():
    assert mail_domain("alertmail@Example.COM", "vm") == "example.com"
    assert mail_domain("alertmail@localhost", "vm.example.net") == "vm.example.net"
    assert mail_domain("alertmail@localhost", "vm") == "localhost"
    assert mail_domain("alertmail@localhost", "localhost.localdomain") == "localhost"


def test_on_a_short_host_name_alert_and_heartbeat_message_ids_end_in_the_from_domain_and_the_date_is_utc(tmp_path):
    from alertmail.notify.notifier import Notifier

    async def main() -> tuple[bytes, bytes]:
        collected = MailCollector()
        # A host name without its domain, as many hosts have.
        n = Notifier(
            notify=NotifySettings(group_wait=0.0, max_mails_per_hour=0),
            mail=MailSettings(sender="alertmail@example.com", to=[OPS], route=["pickup"]),
            hostname="vm",
            timezone="UTC",
            queue=collected,
            state_dir=tmp_path,
        )
        await n.notify([event("firing", DISK, T0, 93.4, "d1")], T0)
        await n.flush(T0 + 3600, force=True)
        spool = Queue(tmp_path / "queue", fsync=False)
        await spool.start()
        try:
            heartbeat = Heartbeat(
                settings=HeartbeatSettings(every=86400.0), notifier=n, queue=spool, badmail_folder=tmp_path / "bad"
            )
            queued = await heartbeat.send(T0 + 86400)
            assert queued is not None
            beat = await spool.read(queued)
        finally:
            await spool.close()
        return collected.mails[0].data, beat

    alert, beat = asyncio.run(main())
    assert str(parse(alert)["Message-ID"]).endswith("@example.com>")
    assert str(parse(beat)["Message-ID"]).endswith("@example.com>")
    assert str(parse(beat)["Date"]).endswith(" +0000")


def test_the_dsn_comes_from_mailer_daemon_at_the_mail_domain():
    entry = Entry(
        id="0123456789abcdef0123", created=T0, sender="alertmail@example.com", recipients={OPS: RecipientState()}, size=10
    )
    entry.recipients[OPS].status, entry.recipients[OPS].code = "failed", 550
    report = build_dsn(
        entry,
        b"Subject: x\r\n\r\nbody\r\n",
        [(OPS, entry.recipients[OPS])],
        action="failed",
        hostname="vm",
        now=T0,
        domain="example.com",
    )
    assert str(report["From"]) == "Mail Delivery System <MAILER-DAEMON@example.com>"
    assert str(report["Message-ID"]).endswith("@example.com>")
    assert "Reporting-MTA: dns; vm" in report.as_string()


def test_the_outbox_gives_its_delivery_the_from_domain_for_dsns(tmp_path):
    from alertmail.config.load import load_config
    from alertmail.delivery.outbox import Outbox
    from alertmail.loader import load_plugins

    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\nhostname = "vm"\n[mail]\nfrom = "alertmail@example.com"\n')

    async def main() -> str | None:
        outbox = Outbox(load_config(config), load_plugins([]))
        await outbox.open()
        try:
            return outbox.delivery.mail_domain
        finally:
            await outbox.close()

    assert asyncio.run(main()) == "example.com"


def test_a_folded_digest_subject_reads_with_single_spaces(tmp_path):
    from alertmail.model import message_bytes
    from alertmail.notify.storm import StormGuard, render_digest
    from alertmail.render.view import RenderContext
    from tests.test_digest_mail import JOURNAL, MIXED

    msg = render_digest(MIXED, T0, StormGuard(10, 900.0), RenderContext(hostname="web01", timezone="Europe/Berlin"), JOURNAL)
    subject = str(parse(message_bytes(msg))["Subject"])
    assert subject == "[DIGEST] [CRITICAL] web01: 3 alerts, 2 still firing, 1 recovered — b-cpu, a-mem"


def write(tmp_path, mail: str):
    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\n' + textwrap.dedent(mail))
    return config


def test_check_warns_about_a_from_at_localhost_when_mail_leaves_the_host(tmp_path):
    leaving = write(tmp_path, '[mail]\nroute = ["smtp"]\n[transports.smtp]\nservers = ["[127.0.0.1]:25"]\n')
    result = CliRunner().invoke(cli, ["check", "--config", str(leaving)])
    assert result.exit_code == 0, result.output
    assert "mail.from: 'alertmail@localhost' is not at a public domain" in result.output
    assert 'set from = "alertmail@<your domain>"' in result.output
    local = write(tmp_path, '[mail]\nroute = ["pickup"]\n')
    assert "mail.from" not in CliRunner().invoke(cli, ["check", "--config", str(local)]).output
    own = write(
        tmp_path, '[mail]\nfrom = "alertmail@example.com"\nroute = ["smtp"]\n[transports.smtp]\nservers = ["[127.0.0.1]:25"]\n'
    )
    assert "mail.from" not in CliRunner().invoke(cli, ["check", "--config", str(own)]).output


def test_a_reply_on_a_long_domain_names_the_first_mail_exactly(tmp_path):
    """In-Reply-To folded right after its name would read " <id>" and not match the Message-ID it answers."""
    from alertmail.notify.notifier import Notifier

    async def main() -> list[bytes]:
        collected = MailCollector()
        n = Notifier(
            notify=NotifySettings(group_wait=0.0, max_mails_per_hour=0),
            mail=MailSettings(sender="alertmail@monitoring.example-company.com", route=["pickup"]),
            hostname="vm",
            timezone="UTC",
            queue=collected,
            state_dir=tmp_path,
        )
        for kind, at, value in (("firing", T0, 93.4), ("resolved", T0 + 600, 50.0)):
            await n.notify([event(kind, DISK, at, value, "d1")], at)
            await n.flush(at + 3600, force=True)
        return [m.data for m in collected.mails]

    first, reply = asyncio.run(main())
    firing, resolved = parse(first), parse(reply)
    assert str(firing["Message-ID"]).endswith("@monitoring.example-company.com>")
    # On the wire each id follows its field name on one line, as parsers that keep a fold's blank need it.
    assert f"\r\nIn-Reply-To: {firing['Message-ID']}\r\n".encode() in reply
    assert f"\r\nReferences: {firing['Message-ID']}\r\n".encode() in reply
    assert f"\r\nMessage-ID: {resolved['Message-ID']}\r\n".encode() in reply
