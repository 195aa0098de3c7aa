"""The test peers themselves work: a message sent with swaks lands in smtp-sink; dnsmasq answers MX."""

import os
import time

from tests.peers import Dnsmasq, SmtpSink, swaks


def test_swaks_message_reaches_smtp_sink_with_envelope(smtp_sink):
    result = swaks("--server", smtp_sink.address, "--from", "a@x.test", "--to", "b@y.test,c@y.test", "--header", "Subject: hello")
    assert result.returncode == 0, result.stdout + result.stderr
    [got] = smtp_sink.wait_for(1)
    assert got.sender == "a@x.test"
    assert got.recipients == ["b@y.test", "c@y.test"]
    assert got.message["Subject"] == "hello"


def test_smtp_sink_keeps_receiving_when_a_folder_above_its_dump_folder_closes(tmp_path):
    # What a pytest session starting next to this one does to /tmp/pytest-of-USER (mode 0700):
    # the running sink must still write its dumps, not die at its next message.
    with SmtpSink(tmp_path / "sink") as sink:
        os.chmod(tmp_path, 0o700)
        result = swaks("--server", sink.address, "--from", "a@x.test", "--to", "b@y.test")
        assert result.returncode == 0, result.stdout + result.stderr
        [got] = sink.wait_for(1)
        assert got.recipients == ["b@y.test"]


def test_dnsmasq_serves_mx_null_mx_and_nxdomain(tmp_path):
    import dns.resolver

    records = ["mx-host=example.test,mx1.example.test,10", "host-record=mx1.example.test,127.0.0.2", "mx-host=nullmx.test,.,0"]
    with Dnsmasq(tmp_path, records) as dns_server:
        res = dns_server.resolver()
        [mx] = res.resolve("example.test", "MX")
        assert (mx.preference, str(mx.exchange)) == (10, "mx1.example.test.")
        assert [r.address for r in res.resolve("mx1.example.test", "A")] == ["127.0.0.2"]
        [null] = res.resolve("nullmx.test", "MX")
        assert str(null.exchange) == "."
        try:
            res.resolve("missing.test", "MX")
        except dns.resolver.NXDOMAIN:
            pass
        else:
            raise AssertionError("missing.test should be NXDOMAIN")


def test_smtp_sink_counts_a_message_only_once_its_transaction_is_complete(smtp_sink):
    import smtplib

    with smtplib.SMTP(smtp_sink.host, smtp_sink.port, timeout=10) as smtp:
        smtp.ehlo()
        assert smtp.mail("a@x.test")[0] == 250 and smtp.rcpt("b@y.test")[0] == 250
        assert smtp.docmd("DATA")[0] == 354
        # More than smtp-sink's write buffer: part of the dump is on disk while DATA goes on.
        smtp.send(b"Subject: big\r\n\r\n" + b"a line of the body\r\n\r\n" * 2000)
        deadline = time.monotonic() + 10
        while not any(p.stat().st_size for p in smtp_sink.folder.iterdir()):
            assert time.monotonic() < deadline, "smtp-sink wrote nothing of the message"
            time.sleep(0.05)
        assert smtp_sink.messages() == []  # half a message is no message
        smtp.send(b".\r\n")
        assert smtp.getreply()[0] == 250
    [got] = smtp_sink.messages()
    assert got.sender == "a@x.test" and got.message["Subject"] == "big"


def test_smtp_sink_on_a_port_another_program_holds_fails_at_start(tmp_path):
    import socket

    import pytest

    from tests.peers import PortTaken, SmtpSink

    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(PortTaken):
            SmtpSink(tmp_path / "sink", port=other.getsockname()[1]).start()
