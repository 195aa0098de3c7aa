"""The exec transport: "run this program" for each alert mail.

``command`` is an argv list, run without a shell. The program gets the message's
alerts on standard input as JSON, the body the webhook transport POSTs (Alertmanager's
webhook format, version 4), and these environment variables:

    ALERTMAIL_STATUS      firing or resolved (firing when any alert of the mail fires)
    ALERTMAIL_ALERTS      how many alerts the mail carries
    ALERTMAIL_ALERTNAME   the rule of the first alert
    ALERTMAIL_SEVERITY    the severity of the first alert
    ALERTMAIL_HOST        the host that saw them
    ALERTMAIL_SUBJECT     the mail's subject
    ALERTMAIL_RECIPIENTS  the envelope recipients, comma-separated

besides ``PATH``, ``HOME``, ``LANG``, ``LC_ALL`` and ``TZ`` from the agent and the ``env``
table (the rest of the agent's environment, which may hold secrets, is not passed).

Its exit status decides: 0 delivered; 75 (EX_TEMPFAIL) try again later, through the
queue's retries; anything else, or a signal, is given up: badmail, with the end of the
program's standard error as the reason. At ``timeout`` its whole process group is
killed and the message is tried again later. As with the webhook, only mail this agent
sealed is an alert: other mail is left to the route's next transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any, ClassVar

from alertmail import (
    DeliveryResult,
    Envelope,
    RecipientStatus,
    Status,
    TransportContext,
    hookimpl,
    message_bytes,
    setting,
)
from alertmail.plugins.transports.webhook import PayloadSettings, alerts_of, payload

log = logging.getLogger("alertmail.transports.exec")

EX_TEMPFAIL = 75
STDERR_SHOWN = 500  # characters of the program's standard error kept as the reason
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecSettings(PayloadSettings):
    """``[transports.exec]``."""

    command: list[str] = setting(
        "list", None, required=True, help='the program and its arguments, no shell: ["/usr/local/bin/page", "ops"]'
    )
    timeout: float = setting(
        "duration", 30.0, minimum=0.001, help="longest the program may run; then its process group is killed, tried again later"
    )
    env: dict[str, Any] = setting("table", {}, help='environment variables for the program, e.g. { TEAM = "ops" }')


class ExecTransport:
    """Runs ``command`` once per alert mail with the alerts as JSON on standard input."""

    name: ClassVar[str] = "exec"
    options: ClassVar[type[ExecSettings]] = ExecSettings

    def __init__(self, settings: ExecSettings, context: TransportContext) -> None:
        from alertmail.plugins.transports.alertmanager import trusted_keys

        self.trusted = trusted_keys("exec", settings.keys, context.config_path)
        command = list(settings.command or [])
        if not command or not command[0]:
            raise ValueError('transports.exec.command: name the program to run, e.g. ["/usr/local/bin/page", "ops"]')
        self.command = [str(c) for c in command]
        self.timeout = settings.timeout
        self.env = {str(k): str(v) for k, v in settings.env.items()}
        self.receiver = settings.receiver
        self.generator_url = settings.generator_url
        self.hostname = context.hostname
        self.state_dir = Path(context.state_dir)

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        data = message_bytes(message)
        alerts, status = alerts_of(data, self.state_dir, envelope, self.trusted)
        if alerts is not None:
            body = payload(alerts, self.hostname, self.receiver, self.generator_url)
            status = await self._run(json.dumps(body).encode(), self._environment(body, data, envelope))
        assert status is not None
        return DeliveryResult.all(envelope.recipients, status)

    def _environment(self, body: dict[str, Any], data: bytes, envelope: Envelope) -> dict[str, str]:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env.update(self.env)
        first = body["alerts"][0]["labels"]
        env.update(
            ALERTMAIL_STATUS=body["status"],
            ALERTMAIL_ALERTS=str(len(body["alerts"])),
            ALERTMAIL_ALERTNAME=first.get("alertname", ""),
            ALERTMAIL_SEVERITY=first.get("severity", ""),
            ALERTMAIL_HOST=first.get("instance", self.hostname),
            ALERTMAIL_SUBJECT=_subject(data),
            ALERTMAIL_RECIPIENTS=",".join(envelope.recipients),
        )
        return env

    async def _run(self, stdin: bytes, env: dict[str, str]) -> RecipientStatus:
        name = self.command[0]
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: all of it is killed at the timeout
            )
        except OSError as exc:
            # A program that is not there (yet) or not executable: fixed by the admin, so tried again.
            return RecipientStatus(Status.TEMPORARY, 451, f"cannot run {name}: {exc.strerror or exc}", "4.3.0")
        try:
            _, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return RecipientStatus(Status.TEMPORARY, 451, f"{name} ran longer than {self.timeout:g}s: killed", "4.4.7")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            raise
        reason = " ".join(err.decode("utf-8", "replace").split())[-STDERR_SHOWN:]
        code = proc.returncode
        if code == 0:
            return RecipientStatus(Status.DELIVERED, 250, f"{name} exited 0", "2.0.0")
        if code == EX_TEMPFAIL:
            return RecipientStatus(Status.TEMPORARY, 451, f"{name} exited 75 (try again later): {reason}", "4.3.0")
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited {code}"
        return RecipientStatus(Status.PERMANENT, 554, f"{name} {how}: {reason or '(nothing on standard error)'}", "5.3.0")


def _subject(data: bytes) -> str:
    import email.parser
    import email.policy

    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(head + b"\r\n\r\n")
    return " ".join(str(headers.get("Subject", "")).split())


@hookimpl
def register_transports(register):
    register(ExecTransport)
