"""No backscatter: unknown local recipients are refused at RCPT, and no DSN goes to a sender nobody vouched for.

Real `alertmail relay` processes over loopback: 127.0.0.1 is the `allow` client,
127.0.0.2 plays a client from elsewhere that forges its sender.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from alertmail.queue.spool import Queue
from tests.peers import SmtpSink
from tests.relay_peers import message_id, private_folder, received, start_relay, swaks_to

pytestmark = pytest.mark.peers

LOCAL = {"allow": ["127.0.0.1/32"], "local_domains": ["local.test"], "local_recipients": ["ops@local.test"]}


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-backscatter-sink-") / "dump") as sink:
        yield sink


@pytest.fixture(scope="module")
def relay(tmp_path_factory, sink):
    process = start_relay(tmp_path_factory.mktemp("relay-backscatter"), sink, dict(LOCAL))
    yield process
    assert process.stop() == 0


def test_mail_to_an_unknown_local_user_is_refused_at_rcpt(relay, sink):
    mid = message_id()
    out = swaks_to(relay.port, "--to", "nobody@local.test", "--from", "victim@evil.example", mid=mid, source="127.0.0.2")
    assert "550 5.1.1 <nobody@local.test>" in out, out
    assert received(sink, mid, timeout=1.0) == []


@pytest.mark.parametrize("address", ["ops@local.test", "OPS@Local.Test", "postmaster@local.test"])
def test_mail_to_a_listed_local_user_or_postmaster_is_taken_from_anyone(relay, sink, address):
    mid = message_id()
    out = swaks_to(relay.port, "--to", address, mid=mid, source="127.0.0.2")
    assert "250 2.0.0 OK queued as" in out, out
    assert len(received(sink, mid)) == 1


def test_an_allowed_client_is_not_held_to_the_local_recipient_list(relay, sink):
    mid = message_id()
    out = swaks_to(relay.port, "--to", "nobody@local.test", mid=mid, source="127.0.0.1")
    assert "250 2.0.0 OK queued as" in out, out
    assert len(received(sink, mid)) == 1


def bounce_notes(state_dir: Path, count: int, timeout: float = 20.0, *, naming: str = "") -> list[str]:
    """The .bdr reasons in badmail/, once ``count`` of them are there (and one names ``naming``).

    A DSN can fail and be filed before the message it reports on, so a count alone may not
    yet include the note that is looked for.
    """
    deadline = time.monotonic() + timeout
    while True:
        notes = [p.read_text() for p in sorted((state_dir / "badmail").glob("*.bdr"))]
        found = len(notes) >= count and (not naming or any(naming in n for n in notes))
        if found or time.monotonic() > deadline:
            return notes


def test_no_dsn_goes_to_a_forged_sender_when_the_next_hop_refuses(tmp_path):
    """The next hop refuses every recipient (5xx): the outside sender gets no DSN; the allowed client's sender does."""
    with SmtpSink(private_folder("relay-backscatter-refusing-") / "dump", options=["-f", "rcpt"]) as refusing:
        options = {**LOCAL, "local_recipients": ["@local.test"]}  # every address taken; the next hop decides
        relay = start_relay(tmp_path / "relay", refusing, options)
        try:
            forged = swaks_to(relay.port, "--to", "ops@local.test", "--from", "victim@evil.example", source="127.0.0.2")
            assert "250 2.0.0 OK queued as" in forged, forged
            (note,) = bounce_notes(relay.state_dir, 1)
            own = swaks_to(relay.port, "--to", "ops@local.test", "--from", "app@client.test", source="127.0.0.1")
            assert "250 2.0.0 OK queued as" in own, own
            notes = bounce_notes(relay.state_dir, 2, naming="queued as")
        finally:
            assert relay.stop() == 0
    assert "victim@evil.example" in note and "no backscatter" in note, note
    assert any("queued as" in n and "<app@client.test>" in n for n in notes), notes
    queue = Queue(relay.state_dir / "queue")
    queue.load()
    dsn_to = [r for e in queue.entries() if e.origin == "dsn" for r in e.recipients]
    assert "victim@evil.example" not in dsn_to, dsn_to


@pytest.mark.parametrize(
    "relay_table, keypath",
    [
        ({"local_domains": ["local.test"]}, "relay.local_recipients: no address of local domain local.test is listed"),
        ({"local_domains": ["local.test"], "local_recipients": ["ops@other.test"]}, "relay.local_recipients[0]: other.test"),
        ({"local_domains": ["local.test"], "local_recipients": ["ops"]}, "relay.local_recipients[0]: expected"),
    ],
)
def test_check_refuses_local_recipients_that_cannot_work(tmp_path, relay_table, keypath):
    import os
    import subprocess

    import tomli_w

    from tests.relay_peers import ALERTMAIL, REPO

    config = tmp_path / "config.toml"
    config.write_text(
        tomli_w.dumps(
            {
                "agent": {"state_dir": str(tmp_path / "var")},
                "transports": {"mx": {"mode": "smarthost", "smart_host": "[127.0.0.1]:25"}},
                "relay": {"enabled": True, **relay_table},
            }
        )
    )
    result = subprocess.run(
        [*ALERTMAIL, "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 78, result.stdout + result.stderr
    assert keypath in result.stdout + result.stderr, result.stdout + result.stderr
