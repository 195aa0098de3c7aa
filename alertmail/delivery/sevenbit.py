"""A message made fit for any SMTP server: 7-bit, no line over 998 octets (RFC 5321 §4.5.3.1.6, RFC 6152).

A server that does not announce 8BITMIME takes only 7-bit data (RFC 6152 §3: the relay
converts the message or returns it), and no server takes a line longer than 998 octets.
``seven_bit(data)`` is ``data`` when it already fits; otherwise every MIME leaf part with
8-bit bytes or over-long lines is re-encoded (text as quoted-printable, anything else as
base64), 8-bit free-text headers and display names become RFC 2047 encoded words and
long header lines are folded at white space. What cannot be made to fit (an address
outside ASCII, 8-bit bytes in another structured header, a header line over 998 octets
without white space) raises ``ConversionError``.

The content is unchanged; the bytes are not, so a DKIM signature made before the
conversion no longer verifies. The signer therefore converts before it signs
(RFC 6376 §5.3), and a transport returns a signed message it would have to convert.
"""

from __future__ import annotations

import functools
import re

from alertmail.errors import AlertmailError

MAX_LINE = 998  # octets, CRLF not counted (RFC 5321 §4.5.3.1.6)
# Headers of free text (RFC 5322 unstructured), where an encoded word may stand (RFC 2047 §5).
UNSTRUCTURED = frozenset({"subject", "comments", "keywords", "content-description", "thread-topic"})
# Headers of addresses, whose display names may be encoded words (RFC 2047 §5 (3)).
ADDRESS_HEADERS = frozenset({"from", "sender", "reply-to", "to", "cc", "bcc", "resent-from", "resent-to", "resent-cc"})
_DKIM_SIGNATURE = re.compile(rb"(?:^|\n)DKIM-Signature[ \t]*:", re.IGNORECASE)


class ConversionError(AlertmailError):
    """The message cannot be made 7-bit with lines of at most 998 octets."""


def has_long_lines(data: bytes) -> bool:
    """Whether a line of ``data`` is longer than 998 octets (its CR LF or LF not counted)."""
    pos, size = 0, len(data)
    while size - pos > MAX_LINE:  # a shorter rest cannot hold a long line
        # The last LF among the next 999 octets: every line before it is short, so jump past it
        # (about 1 KB a step, where a regular expression would retry at every byte).
        newline = data.rfind(b"\n", pos, pos + MAX_LINE + 1)
        if newline >= 0:
            pos = newline + 1
            continue
        end = data.find(b"\n", pos)
        if end < 0:
            end = size
        if end - pos - (end < size and data[end - 1] == 13) > MAX_LINE:
            return True
        pos = end + 1
    return False


def fits(data: bytes, *, eight_bit: bool = False) -> bool:
    """Whether ``data`` can go as it is to a server with (``eight_bit``) or without 8BITMIME."""
    return (eight_bit or data.isascii()) and not has_long_lines(data)


def is_dkim_signed(data: bytes) -> bool:
    """Whether the header of ``data`` carries a DKIM-Signature field."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        end = data.find(b"\n\n")
    head = data if end < 0 else data[: end + 1]
    return _DKIM_SIGNATURE.search(head) is not None


def fit_for_server(data: bytes, *, eight_bit: bool) -> bytes:
    """``data`` as a server with (``eight_bit``) or without 8BITMIME may take it: unchanged when it
    fits, else converted by ``seven_bit``. ConversionError, saying why, when the message must be
    returned instead: a signed message (the conversion would break its DKIM signature) or one
    that cannot be converted."""
    if fits(data, eight_bit=eight_bit):
        return data
    if not eight_bit and not data.isascii():
        why = "8-bit data for a server that does not offer 8BITMIME"
    else:
        why = f"a line longer than {MAX_LINE} octets"
    if is_dkim_signed(data):
        raise ConversionError(f"the message has {why}, and converting it would break its DKIM signature")
    try:
        return seven_bit(data)
    except ConversionError as exc:
        raise ConversionError(f"the message has {why} and cannot be converted: {exc}") from None


def seven_bit(data: bytes) -> bytes:
    """``data`` as 7-bit MIME with no line over 998 octets; ConversionError when that cannot be done."""
    if fits(data):
        return data
    import email
    import email.policy
    from email import base64mime, quoprimime
    from email.generator import BytesGenerator
    from io import BytesIO

    linesep = "\r\n" if b"\r\n" in data[:4096] else "\n"
    # compat32 keeps header lines as they came unless they must change; refolding only past 998.
    policy = email.policy.compat32.clone(linesep=linesep, max_line_length=MAX_LINE)
    message = email.message_from_bytes(data, policy=policy)
    for part in message.walk():
        _headers(part)
        if part.is_multipart():
            continue
        # As parsed: get_payload() would decode 8-bit text by its charset.
        payload = part._payload  # type: ignore[attr-defined]
        if not isinstance(payload, str):
            continue  # message/rfc822 and the like: walk() visits what they hold
        raw = payload.encode("ascii", "surrogateescape")
        if raw.isascii() and not has_long_lines(raw):
            continue
        body = part.get_payload(decode=True)
        assert isinstance(body, bytes)
        del part["Content-Transfer-Encoding"]
        if part.get("Content-Type") is None and not body.isascii():
            # No MIME header: say what the 8-bit text is, or readers would take it for US-ASCII.
            part["Content-Type"] = f"text/plain; charset={_charset_of(body)}"
        if part.get_content_maintype() == "text":
            # Line by line (CR LF, LF or CR only: bytes.splitlines), line ends kept as line ends:
            # the text reads the same once decoded.
            lines = body.splitlines()
            encoded = linesep.join(quoprimime.body_encode(line.decode("latin-1"), maxlinelen=76, eol=linesep) for line in lines)
            part.set_payload(encoded + (linesep if body.endswith((b"\n", b"\r")) else ""))
            part["Content-Transfer-Encoding"] = "quoted-printable"
        else:
            part.set_payload(base64mime.body_encode(body, maxlinelen=76, eol=linesep))
            part["Content-Transfer-Encoding"] = "base64"
        if message.get("MIME-Version") is None:
            message["MIME-Version"] = "1.0"
    out = BytesIO()
    BytesGenerator(out, mangle_from_=False, policy=policy).flatten(message)
    converted = out.getvalue()
    if not converted.isascii():
        raise ConversionError("8-bit bytes left after conversion")
    if has_long_lines(converted):
        raise ConversionError(f"a header line longer than {MAX_LINE} octets cannot be folded")
    return converted


def _charset_of(body: bytes) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return "unknown-8bit"  # RFC 1428
    return "utf-8"


def _headers(part: object) -> None:
    """8-bit unstructured headers as RFC 2047 encoded words; ConversionError for any other 8-bit header."""
    from email.message import Message

    assert isinstance(part, Message)
    headers: list[tuple[str, object]] = part._headers  # type: ignore[attr-defined]  # the parsed lines, in order
    for index, (name, value) in enumerate(list(headers)):
        if not isinstance(value, str) or value.isascii():
            continue
        raw = value.encode("ascii", "surrogateescape")
        try:
            text, charset = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, charset = raw.decode("latin-1"), "iso-8859-1"
        text = re.sub(r"\r?\n(?=[ \t])", "", text).strip()  # unfold; the generator folds again
        if name.lower() in ADDRESS_HEADERS:
            headers[index] = (name, _addresses(name, text, charset))
        elif name.lower() in UNSTRUCTURED or name.lower().startswith("x-"):  # optional fields are free text
            headers[index] = (name, _encoded_words_class()(text, charset, header_name=name))
        else:
            raise ConversionError(f"the {name} header holds 8-bit text and is neither free text nor addresses")


def _addresses(name: str, text: str, charset: str) -> str:
    """An address header with its 8-bit display names as encoded words; the addresses must be ASCII."""
    from email.utils import formataddr, getaddresses

    pairs = getaddresses([text])
    if not pairs or any(not address or not address.isascii() for _, address in pairs):
        raise ConversionError(f"the {name} header holds an address outside ASCII, which needs SMTPUTF8")
    return ", ".join(formataddr(pair, charset=charset) for pair in pairs)


@functools.cache
def _encoded_words_class() -> type:
    from email.header import Header  # the email package is loaded only by a conversion

    class EncodedWords(Header):
        """A header of encoded words at most 76 characters a line (RFC 2047 §2), whatever the policy's line length."""

        def encode(self, splitchars: str = ";, \t", maxlinelen: int | None = None, linesep: str = "\n") -> str:
            return super().encode(splitchars, 76, linesep)

    return EncodedWords
