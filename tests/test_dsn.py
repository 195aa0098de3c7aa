"""DSN building (RFC 3464 / 3463), badmail files and the retry schedule: pure units."""

from __future__ import annotations

import email
import email.policy

import pytest

from alertmail.delivery.delivery import QueueSettings, RetryPolicy
from alertmail.model import Envelope
from alertmail.queue.badmail import Badmail, split_envelope, with_envelope
from alertmail.queue.dsn import build_dsn, is_delivery_report, remote_host, status_code
from alertmail.queue.entry import Entry, RecipientState

ORIGINAL = b"From: alerts@example.test\r\nTo: ops@example.test\r\nSubject: load high\r\n\r\nbody\r\n"
NOW = 1_800_000_000.0


def entry(**states: RecipientState) -> Entry:
    return Entry(
        id="0190aabbccdd11223344",
        created=NOW - 3600,
        sender="alerts@example.test",
        recipients={f"{k}@example.test": v for k, v in states.items()},
        attempts=3,
        last_try=NOW,
    )


def parse(report) -> email.message.EmailMessage:
    return email.message_from_bytes(report.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)


def test_failure_dsn_is_a_delivery_status_report_with_per_recipient_fields():
    gone = RecipientState("failed", 550, "no such user", "5.1.1", "[127.0.0.2]:25", "smtp", NOW)
    e = entry(gone=gone)
    report = parse(build_dsn(e, ORIGINAL, [("gone@example.test", gone)], action="failed", hostname="h.example.test", now=NOW))
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"] == "alerts@example.test"
    assert report["Auto-Submitted"] == "auto-replied"
    human, status, headers = report.iter_parts()
    assert "<gone@example.test>: 550 5.1.1 no such user" in human.get_content()
    per_message, per_rcpt = [dict(b.items()) for b in status.get_payload()]
    assert per_message["Reporting-MTA"] == "dns; h.example.test"
    assert per_message["Arrival-Date"] == "Fri, 15 Jan 2027 07:00:00 +0000"
    assert per_rcpt == {
        "Final-Recipient": "rfc822; gone@example.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; 127.0.0.2",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": "Fri, 15 Jan 2027 08:00:00 +0000",
    }
    assert headers.get_content_type() == "text/rfc822-headers"
    assert "Subject: load high" in headers.get_content() and "body" not in headers.get_content()


def test_delay_dsn_says_until_when_it_is_retried():
    busy = RecipientState("pending", 451, "try later", "4.2.0", "mx.example.test:25", "smtp", NOW)
    report = parse(
        build_dsn(
            entry(busy=busy),
            ORIGINAL,
            [("busy@example.test", busy)],
            action="delayed",
            hostname="h",
            now=NOW,
            will_retry_until=NOW + 86400,
        )
    )
    [_, rcpt] = [dict(b.items()) for b in list(report.iter_parts())[1].get_payload()]
    assert rcpt["Action"] == "delayed"
    assert rcpt["Status"] == "4.2.0"
    assert rcpt["Will-Retry-Until"] == "Sat, 16 Jan 2027 08:00:00 +0000"
    assert rcpt["Remote-MTA"] == "dns; mx.example.test"
    assert "Delayed" in report["Subject"]


def test_remote_reply_with_line_breaks_cannot_inject_fields():
    evil = RecipientState("failed", 550, "no\r\nAction: delivered\r\n\r\nX: y", "5.7.1", "", "smtp", NOW)
    report = parse(build_dsn(entry(evil=evil), ORIGINAL, [("evil@example.test", evil)], action="failed", hostname="h", now=NOW))
    blocks = list(report.iter_parts())[1].get_payload()
    assert len(blocks) == 2
    assert blocks[1].get_all("Action") == ["failed"]
    assert blocks[1]["Diagnostic-Code"] == "smtp; 550 5.7.1 no Action: delivered X: y"


@pytest.mark.parametrize(
    ("code", "enhanced", "action", "expected"),
    [
        (550, "5.1.1", "failed", "5.1.1"),
        (550, "", "failed", "5.0.0"),
        (451, "4.4.1", "failed", "4.4.1"),  # expired after temporary failures: the last status
        (0, "", "failed", "4.4.7"),  # expired without any reply: delivery time expired
        (451, "", "delayed", "4.0.0"),
        (550, "5.1.1", "delayed", "4.0.0"),
        (250, "2.0.0", "failed", "4.4.7"),
    ],
)
def test_status_codes_follow_rfc_3463(code, enhanced, action, expected):
    assert status_code(RecipientState(code=code, enhanced=enhanced), action) == expected


def test_remote_host_drops_the_port():
    assert remote_host("mx1.example.test:25") == "mx1.example.test"


def test_remote_host_names_the_host_of_a_name_and_address_pair():
    assert remote_host("mx1.example.test[127.0.0.2]:25") == "mx1.example.test"
    assert remote_host("[127.0.0.2]:25") == "127.0.0.2"
    assert remote_host("[::1]:2525") == "::1"
    assert remote_host("127.0.0.1") == "127.0.0.1"


def test_delivery_reports_and_empty_senders_are_never_bounced():
    report = b"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n"
    assert is_delivery_report(ORIGINAL, "")
    assert is_delivery_report(report, "someone@example.test")
    assert is_delivery_report(b"Auto-Submitted: auto-replied\r\n\r\nhi", "a@example.test")
    assert not is_delivery_report(ORIGINAL, "alerts@example.test")
    assert not is_delivery_report(b"Auto-Submitted: auto-generated\r\n\r\nalert", "alerts@example.test")


def test_badmail_envelope_lines_round_trip_as_iis_pickup_reads_them():
    envelope = Envelope("alerts@example.test", ("a@example.test", "b@example.test"))
    assert split_envelope(with_envelope(envelope, ORIGINAL)) == (envelope, ORIGINAL)
    assert split_envelope(ORIGINAL) == (None, ORIGINAL)
    assert split_envelope(b"x-sender: <>\nX-Receiver: <c@example.test>\nSubject: s\n\n") == (
        Envelope("", ("c@example.test",)),
        b"Subject: s\n\n",
    )


def test_badmail_reason_names_recipients_replies_attempts_and_times(tmp_path):
    e = entry(
        gone=RecipientState("failed", 550, "no such user", "5.1.1", "mx:25", "smtp", NOW),
        ok=RecipientState("delivered", 250, "ok", "2.0.0", "mx:25", "smtp", NOW),
    )
    Badmail(tmp_path).write(e, ORIGINAL, reason="Failed: permanent failure", dsn="queued as x", now=NOW)
    bad = (tmp_path / f"{e.id}.bad").read_bytes()
    assert bad == b"X-Sender: alerts@example.test\r\nX-Receiver: gone@example.test\r\n" + ORIGINAL
    text = (tmp_path / f"{e.id}.bdr").read_text()
    assert text.splitlines()[0] == "Failed: permanent failure"
    assert "<gone@example.test>  failed: 550 5.1.1 no such user (via smtp, mx:25)" in text
    assert "<ok@example.test>  delivered" in text
    assert "Attempts:  3, the last at 2027-01-15 08:00:00 UTC" in text
    assert "Queued:    2027-01-15 07:00:00 UTC" in text
    [item] = Badmail(tmp_path).items()
    assert (item.id, item.reason) == (e.id, "Failed: permanent failure")


def test_retry_schedule_repeats_its_last_interval_and_can_differ_per_route():
    policy = RetryPolicy.from_settings(QueueSettings(retry=[900.0, 1800.0, 3600.0, 14400.0], route_retry={"mx": ["1m", "5m"]}))
    assert [policy.next_delay(n, ["smtp"]) for n in range(1, 7)] == [900, 1800, 3600, 14400, 14400, 14400]
    assert [policy.next_delay(n, ["mx", "smtp"]) for n in range(1, 4)] == [60, 300, 300]
    with pytest.raises(ValueError, match=r"queue\.route_retry\.mx"):
        RetryPolicy.from_settings(QueueSettings(route_retry={"mx": "5m"}))


def test_a_zero_retry_interval_does_not_retry_in_a_busy_loop():
    assert RetryPolicy.from_settings(QueueSettings(retry=[0.0])).next_delay(1, ["smtp"]) > 0


def test_default_policy_is_the_iis_schedule():
    policy = RetryPolicy.from_settings(QueueSettings())
    assert policy.intervals == (900, 1800, 3600, 14400)
    assert (policy.delay_notice, policy.expire) == (12 * 3600, 2 * 86400)
    assert RetryPolicy.from_settings(QueueSettings(delay_notice=0.0)).delay_notice == 0
