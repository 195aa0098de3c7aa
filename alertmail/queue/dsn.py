"""Delivery status notifications (RFC 3464) with RFC 3463 status codes.

A DSN is ``multipart/report; report-type=delivery-status`` with three parts: a text
for people, the ``message/delivery-status`` fields for programs, and the original
message's headers as ``text/rfc822-headers``. It goes to the envelope sender with an
empty envelope sender of its own, so that it can never be bounced in turn.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesHeaderParser
from email.utils import format_datetime, make_msgid

from alertmail.queue.entry import Entry, RecipientState


def _smtp_policy():
    """email.policy.SMTP, imported when a message is serialised, not when the agent starts."""
    import email.policy

    return email.policy.SMTP


def _compat32_policy():
    import email.policy

    return email.policy.compat32


_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def clean(text: str) -> str:
    """One header-safe line: remote replies and addresses may carry CR, LF or other controls."""
    return _CONTROL.sub(" ", text).strip()


def remote_host(remote: str) -> str:
    """The host of a remote written "host:port" or "[addr]:port" (Remote-MTA names a host)."""
    remote = clean(remote)
    if remote.startswith("["):
        return remote[1:].split("]", 1)[0]
    host, sep, port = remote.rpartition(":")
    if not (sep and port.isdigit() and ":" not in host):
        host = remote
    # "mx1.example.test[127.0.0.2]", as transports write it: the name is the host.
    return host.split("[", 1)[0] or host


def rfc_date(when: float) -> str:
    return format_datetime(datetime.fromtimestamp(when, UTC))


def is_delivery_report(data: bytes, sender: str) -> bool:
    """True for a message that must never be bounced: an empty sender, or a DSN/MDN itself."""
    if not sender or sender == "<>":
        return True
    headers = BytesHeaderParser(policy=_compat32_policy()).parsebytes(data[:65536])
    ctype = (headers.get_content_type() or "").lower()
    if ctype == "multipart/report":
        return True
    return str(headers.get("Auto-Submitted", "no")).strip().lower().startswith("auto-replied")


# Origins whose sender nobody vouched for: mail any client may hand the relay for a local domain
# ("relay-local"). Its sender is forged as often as not, so a DSN to it would be backscatter.
UNVOUCHED_ORIGINS = frozenset({"relay-local"})


def no_report_reason(entry: Entry, data: bytes) -> str | None:
    """Why no DSN may go to the sender of ``entry`` (for the badmail note), or None when one may."""
    if entry.origin in UNVOUCHED_ORIGINS:
        return "not sent: the relay took the message from a client neither allowed nor authenticated (no backscatter)"
    if is_delivery_report(data, entry.sender):
        return "not sent: the message is itself a delivery report or has an empty sender"
    return None


def status_code(state: RecipientState, action: str) -> str:
    """The RFC 3463 status for a recipient: the server's enhanced code when it fits the action."""
    wanted = "4" if action == "delayed" else None
    code = state.enhanced.strip()
    if _ENHANCED.match(code) and (wanted is None or code[0] == wanted) and code[0] != "2":
        return code
    if action == "delayed":
        return "4.0.0"
    if state.code >= 500:
        return "5.0.0"
    return "4.4.7"  # failed without a permanent reply: the delivery time expired


def original_headers(data: bytes) -> str:
    """The header block of ``data``, as text (undecodable bytes replaced)."""
    for sep in (b"\r\n\r\n", b"\n\n"):
        head, found, _ = data.partition(sep)
        if found:
            break
    else:
        head = data
    return head.decode("utf-8", "replace").replace("\r\n", "\n") + "\n"


def build_dsn(
    entry: Entry,
    data: bytes,
    recipients: Iterable[tuple[str, RecipientState]],
    *,
    action: str,
    hostname: str,
    now: float,
    will_retry_until: float | None = None,
    domain: str | None = None,
) -> EmailMessage:
    """A DSN about ``recipients`` of ``entry`` (``action`` is "failed" or "delayed").

    ``domain``: the mail domain of its From (``MAILER-DAEMON@domain``) and Message-ID, the
    one its DKIM signature aligns with; ``hostname`` (the Reporting-MTA) when None."""
    if action not in ("failed", "delayed"):
        raise ValueError(f"action must be failed or delayed, got {action!r}")
    recipients = list(recipients)
    host = clean(hostname) or "localhost"
    report = EmailMessage(policy=_smtp_policy())
    mail_domain = clean(domain or "") or host
    report["From"] = f"Mail Delivery System <MAILER-DAEMON@{mail_domain}>"
    report["To"] = clean(entry.sender)
    if action == "failed":
        report["Subject"] = "Undelivered Mail Returned to Sender"
    else:
        report["Subject"] = "Delayed Mail (still being retried)"
    report["Date"] = rfc_date(now)
    report["Message-ID"] = make_msgid("dsn", domain=mail_domain)
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report.set_type("multipart/report")
    report.set_param("report-type", "delivery-status")

    human = MIMEPart(policy=_smtp_policy())
    human.set_content(_human_text(entry, recipients, action, host, will_retry_until))
    human["Content-Description"] = "Notification"

    status = MIMEPart(policy=_smtp_policy())
    status["Content-Type"] = "message/delivery-status"
    status["Content-Description"] = "Delivery report"
    per_message = Message()
    per_message["Reporting-MTA"] = f"dns; {host}"
    per_message["X-Alertmail-Queue-ID"] = entry.id
    per_message["Arrival-Date"] = rfc_date(entry.created)
    blocks: list[Message | str] = [per_message]
    for rcpt, state in recipients:
        block = Message()
        block["Final-Recipient"] = f"rfc822; {clean(rcpt)}"
        block["Action"] = action
        block["Status"] = status_code(state, action)
        if state.remote:
            block["Remote-MTA"] = f"dns; {remote_host(state.remote)}"
        if state.code:
            block["Diagnostic-Code"] = f"smtp; {clean(state.reply)}"
        elif state.message:
            block["Diagnostic-Code"] = f"X-Alertmail; {clean(state.message)}"
        block["Last-Attempt-Date"] = rfc_date(state.time or entry.last_try or now)
        if action == "delayed" and will_retry_until:
            block["Will-Retry-Until"] = rfc_date(will_retry_until)
        blocks.append(block)
    status.set_payload(blocks)

    headers = MIMEPart(policy=_smtp_policy())
    headers.set_content(original_headers(data), subtype="rfc822-headers")
    headers["Content-Description"] = "Undelivered Message Headers"

    report.set_payload([human, status, headers])
    return report


def _human_text(entry: Entry, recipients: list[tuple[str, RecipientState]], action: str, host: str, until: float | None) -> str:
    lines = [f"This is the mail system at host {host}.", ""]
    if action == "failed":
        lines += ["Your message could not be delivered to the recipients below.", "It has been given up on."]
    else:
        lines += [
            "Your message could not be delivered yet to the recipients below.",
            "It is still being retried; you need not send it again.",
        ]
        if until:
            lines.append(f"Delivery will be tried until {rfc_date(until)}.")
    lines.append("")
    for rcpt, state in recipients:
        reply = clean(state.reply) or "no reply"
        where = f" (from {clean(state.remote)})" if state.remote else ""
        lines.append(f"<{clean(rcpt)}>: {reply}{where}")
    lines += ["", f"Queue id {entry.id}, queued {rfc_date(entry.created)}, {entry.attempts} attempt(s)."]
    return "\n".join(lines) + "\n"
