"""8-bit bodies and over-long lines towards a next hop (RFC 6152, RFC 5321 §4.5.3.1.6), against a
real aiosmtpd that does not announce 8BITMIME and Postfix's smtp-sink with (default) and
without (``-8``) it: the message is converted to 7-bit MIME with the same content, or, when it
is DKIM-signed and would need converting, returned (a permanent failure, hence a DSN)."""

from __future__ import annotations

import base64
import email
import email.policy
from pathlib import Path

import pytest

from alertmail.delivery.sevenbit import ConversionError, has_long_lines, seven_bit
from alertmail.model import Envelope, Status
from tests.peers import SmtpSink
from tests.test_transport_smtp import Recorder, Server, run, transport

# "Å" is C3 85 in UTF-8: 0x85 is a line break to str.splitlines, never to SMTP.
TEXT = "Disk /srv/données is 95 % full — 3 Go left on Åland.\n"
LONG = "x" * 1500 + " end of a long line\n"
EIGHT_BIT = (
    "From: alertmail@host.test\r\n"
    "To: ops@example.test\r\n"
    "Subject: données pleines\r\n"
    "Message-ID: <8bit-1@host.test>\r\n"
    "MIME-Version: 1.0\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: 8bit\r\n"
    "\r\n" + TEXT.replace("\n", "\r\n") + ".a line starting with a dot\r\n"
).encode()
BLOB = bytes(range(128, 256)) * 4 + b"\r\n" + bytes(range(32, 128))


def send(t, data: bytes, recipients=("ops@example.test",)):
    async def go():
        try:
            return await t.send(data, Envelope("alertmail@host.test", tuple(recipients)))
        finally:
            await t.close()

    return run(go())


def no_8bitmime(handler: Recorder) -> Server:
    # aiosmtpd announces 8BITMIME only when it does not decode the data for its handler.
    return Server(handler, decode_data=True)


def dumps(sink: SmtpSink) -> list[bytes]:
    return [p.read_bytes() for p in sorted(sink.folder.iterdir()) if not p.name.startswith(".")]


def parsed(data: bytes):
    return email.message_from_bytes(data, policy=email.policy.default)


def test_8bit_text_to_a_server_without_8bitmime_arrives_as_7bit_with_the_same_text(tmp_path):
    handler = Recorder()
    with no_8bitmime(handler) as server:
        result = send(transport(tmp_path, servers=[server.address], tls="none"), EIGHT_BIT)
    assert result.delivered == ["ops@example.test"]
    got = handler.messages[0][3]
    assert got.isascii()
    message = parsed(got)
    assert message["Subject"] == "données pleines"
    assert message["Content-Transfer-Encoding"] == "quoted-printable"
    assert message.get_content().replace("\r\n", "\n") == TEXT + ".a line starting with a dot\n"
    # A server that offers 8BITMIME gets the very bytes, declared BODY=8BITMIME.
    with SmtpSink(tmp_path / "sink") as sink:
        result = send(transport(tmp_path, servers=[sink.address], tls="none"), EIGHT_BIT)
        sink.wait_for(1, 10)
    [raw] = dumps(sink)
    assert EIGHT_BIT.replace(b"\r\n", b"\n") in raw.replace(b"\r\n", b"\n")
    assert "BODY=8BITMIME" in parsed(raw)["X-Mail-Args"]


def test_a_line_over_998_octets_is_never_sent_as_it_is(tmp_path):
    data = (
        b"From: alertmail@host.test\r\nTo: ops@example.test\r\nSubject: long\r\n\r\nshort line\r\n"
        + LONG.replace("\n", "\r\n").encode()
    )
    with SmtpSink(tmp_path / "sink") as sink:  # 8BITMIME or not, 998 is the limit
        result = send(transport(tmp_path, servers=[sink.address], tls="none"), data)
        sink.wait_for(1, 10)
    assert result.delivered == ["ops@example.test"]
    [raw] = dumps(sink)
    assert max(len(line) for line in raw.split(b"\n")) <= 1000
    # (smtp-sink's dump ends in a line end of its own)
    assert parsed(raw).get_content().replace("\r\n", "\n").rstrip("\n") == "short line\n" + LONG.rstrip("\n")


def test_multipart_with_8bit_parts_to_smtp_sink_without_8bitmime_is_converted_part_by_part(tmp_path):
    boundary = "==part=="
    data = (
        (
            "From: alertmail@host.test\r\nTo: ops@example.test\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
            f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + TEXT.replace("\n", "\r\n")
            + f"\r\n--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii, left alone\r\n"
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        ).encode()
        + BLOB
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with SmtpSink(tmp_path / "sink", options=["-8"]) as sink:
        result = send(transport(tmp_path, servers=[sink.address], tls="none"), data)
        sink.wait_for(1, 10)
    assert result.delivered == ["ops@example.test"]
    [raw] = dumps(sink)
    assert raw.isascii()
    assert "BODY=8BITMIME" not in parsed(raw)["X-Mail-Args"]
    text, ascii_part, blob = parsed(raw).iter_parts()
    assert text.get_content().replace("\r\n", "\n") == TEXT
    assert ascii_part["Content-Transfer-Encoding"] is None
    assert blob["Content-Transfer-Encoding"] == "base64"
    assert blob.get_content() == BLOB


def test_a_signed_8bit_message_is_returned_rather_than_broken(tmp_path):
    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=host.test; s=sel; bh=x; b=y\r\n" + EIGHT_BIT
    handler = Recorder()
    with no_8bitmime(handler) as server:
        result = send(transport(tmp_path, servers=[server.address], tls="none"), signed)
    status = result.recipients["ops@example.test"]
    assert (status.status, status.code, status.enhanced) == (Status.PERMANENT, 554, "5.6.3")
    assert "8BITMIME" in status.message and "DKIM signature" in status.message
    assert handler.messages == []


def test_the_mx_transport_converts_for_an_mx_without_8bitmime(tmp_path):
    from tests.test_transport_mx import transport as mx_transport

    with SmtpSink(tmp_path / "mx", options=["-8"]) as sink:
        t = mx_transport(tmp_path, mode="smarthost", smart_host=f"[127.0.0.1]:{sink.port}", mta_sts=False)
        result = send(t, EIGHT_BIT)
        sink.wait_for(1, 10)
    assert result.delivered == ["ops@example.test"]
    [raw] = dumps(sink)
    assert raw.isascii()
    assert parsed(raw)["Subject"] == "données pleines"


def test_the_dkim_signer_converts_before_signing_so_no_hop_has_to_break_the_signature(tmp_path):
    import dkim

    from alertmail.delivery.dkim import DkimSettings, Signer, generate_rsa, txt_value

    private, public = generate_rsa(2048)
    key = tmp_path / "sel.key"
    key.write_bytes(private)
    key.chmod(0o600)
    signer = Signer.from_options(DkimSettings(domain="host.test", selector="sel", key_file=key))
    assert signer is not None
    signed = signer(EIGHT_BIT)
    assert signed.isascii()
    record = txt_value("rsa", str(public)).encode()
    assert dkim.verify(signed, dnsfunc=lambda name, timeout=5: record)
    handler = Recorder()
    with no_8bitmime(handler) as server:
        result = send(transport(tmp_path, servers=[server.address], tls="none"), signed)
    assert result.delivered == ["ops@example.test"]
    assert dkim.verify(handler.messages[0][3], dnsfunc=lambda name, timeout=5: record)
    assert parsed(handler.messages[0][3]).get_content().replace("\r\n", "\n").startswith(TEXT)


# -- the conversion itself (pure units) ------------------------------------------------


def test_line_length_limit_counts_octets_without_the_line_end():
    assert not has_long_lines(b"a" * 998 + b"\r\nb\r\n")
    assert has_long_lines(b"a" * 999 + b"\r\nb\r\n")
    assert not has_long_lines(b"b\n" + b"a" * 998)
    assert has_long_lines(b"b\n" + b"a" * 999)


def test_long_header_lines_are_folded_and_8bit_free_text_headers_encoded():
    data = (
        b"From: a@host.test\r\nSubject: "
        + " ".join(["word"] * 300).encode()
        + b"\r\nComments: caf\xc3\xa9\r\nX-Note: d\xc3\xa9j\xc3\xa0\r\n\r\nbody\r\n"
    )
    out = seven_bit(data)
    assert out.isascii() and not has_long_lines(out)
    message = parsed(out)
    assert message["Subject"] == " ".join(["word"] * 300)
    assert message["Comments"] == "café"
    assert message["X-Note"] == "déjà"


def test_8bit_display_names_become_encoded_words():
    out = seven_bit(
        b"From: J\xc3\xa9r\xc3\xb4me <j@host.test>\r\nTo: ops@host.test, \xc3\x89quipe <team@host.test>\r\n\r\nbody\r\n"
    )
    assert out.isascii()
    message = parsed(out)
    assert message["From"].addresses[0].display_name == "Jérôme"
    assert [a.addr_spec for a in message["To"].addresses] == ["ops@host.test", "team@host.test"]
    assert message["To"].addresses[1].display_name == "Équipe"


@pytest.mark.parametrize(
    "data",
    [
        b"From: j\xc3\xa9@host.test\r\n\r\nbody\r\n",  # an address outside ASCII needs SMTPUTF8
        b"Message-ID: <caf\xc3\xa9@host.test>\r\n\r\nbody\r\n",  # neither free text nor addresses
        b"From: a@host.test\r\nX-Token: " + b"t" * 1200 + b"\r\n\r\nbody\r\n",  # nowhere to fold
    ],
)
def test_what_cannot_be_converted_is_refused(data):
    with pytest.raises(ConversionError):
        seven_bit(data)


def test_a_7bit_message_is_left_byte_for_byte(tmp_path):
    data = Path(__file__).read_bytes()[:900].replace(b"\n", b"\r\n")
    data = b"Subject: x\r\n\r\n" + base64.b64encode(data)[:900] + b"\r\n"
    assert seven_bit(data) is data


def test_a_returned_signed_message_is_in_badmail_with_the_reason(tmp_path):
    from tests.test_delivery import delivering, eventually

    signed = b"DKIM-Signature: v=1; a=rsa-sha256; d=host.test; s=sel; bh=x; b=y\r\n" + EIGHT_BIT
    handler = Recorder()
    with no_8bitmime(handler) as server:
        t = transport(tmp_path, servers=[server.address], tls="none", idle_timeout=0)

        async def main():
            async with delivering(tmp_path, {"smtp": t}) as (queue, _):
                msg_id = await queue.put(signed, Envelope("", ("ops@example.test",)))  # <>: no DSN to queue
                await eventually(lambda: len(queue) == 0 and list((tmp_path / "badmail").glob("*.bdr")))
                return msg_id

        msg_id = run(main())
    assert handler.messages == []
    reason = (tmp_path / "badmail" / f"{msg_id}.bdr").read_text()
    assert "5.6.3" in reason and "DKIM signature" in reason


def test_8bit_text_without_any_mime_header_is_labelled_when_converted():
    out = seven_bit(b"From: a@host.test\r\nSubject: x\r\n\r\n" + TEXT.encode() + b"\xff\r\n")
    message = parsed(out)
    assert message.get_content_type() == "text/plain" and message.get_content_charset() == "unknown-8bit"
    assert message.get_payload(decode=True).replace(b"\r\n", b"\n") == TEXT.encode() + b"\xff\n"
    out = seven_bit(b"From: a@host.test\r\nSubject: x\r\n\r\n" + TEXT.encode())
    assert parsed(out).get_content().replace("\r\n", "\n") == TEXT
