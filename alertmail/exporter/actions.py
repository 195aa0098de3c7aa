"""What a signed-in user may do from the status page: add a silence, expire one, retry a queued message.

Only with web.yml's ``basic_auth_users``; only by POST; each form carries a CSRF token,
an HMAC-SHA256 of the user (and their password hash, so a new password voids old pages)
under a secret of this agent (``STATE_DIR/web-secret``, 32 random bytes, mode 0600, made
at the first start with users). A request whose token is missing or wrong, whose
``Origin`` is not the page's own, or whose ``Sec-Fetch-Site`` is not ``same-origin`` is
refused with 403. What each action does goes through the very functions the command line
uses: ``RuntimeSilences.add`` / ``remove`` (``alertmail silence add`` / ``remove``) of the
notifier's silences, and a queue request taken at once (``alertmail queue retry``), reached
through the agent as the rest of the exporter reads it. Each is logged with the user.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("alertmail.exporter")

SECRET_FILE = "web-secret"
MAX_FIELD = 300  # characters of a form field
PATHS = {"/silence/add": "silence_add", "/silence/expire": "silence_expire", "/queue/retry": "queue_retry"}


class Refused(Exception):
    """An action not carried out: the HTTP status and the one line to show."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def agent_secret(state_dir: Path) -> bytes:
    """This agent's CSRF secret, made (0600) when there is none yet."""
    path = Path(state_dir) / SECRET_FILE
    try:
        secret = path.read_bytes()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = os.urandom(32)
    part = path.with_name(f".{SECRET_FILE}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)
    return secret


def parse_labels(text: str) -> dict[str, str]:
    """``k=v, k2=v2`` (exact or glob) as ``alertmail silence add --labels`` takes them."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, pattern = part.partition("=")
        if not sep or not key.strip():
            raise Refused(400, f"labels: expected k=v (or k=v, k2=v2), got {part!r}")
        out[key.strip()] = pattern.strip()
    return out


class PageActions:
    """Carries out the page's forms for ``agent``; ``users`` maps user -> bcrypt hash (for the tokens)."""

    def __init__(self, agent: Any, users: Mapping[str, str], secret: bytes) -> None:
        self.agent = agent
        self.users = dict(users)
        self._secret = secret

    def token(self, user: str) -> str:
        message = b"csrf\0" + user.encode() + b"\0" + self.users.get(user, "").encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def _same_origin(self, headers: Mapping[str, str], scheme: str) -> bool:
        site = headers.get("sec-fetch-site")
        if site is not None and site != "same-origin":
            return False
        origin = headers.get("origin")
        if origin is None:
            return True  # not a browser that sends it (curl, a script): the token alone decides
        if origin == "null":  # a page under Referrer-Policy no-referrer: the browser's Sec-Fetch-Site decides
            return site == "same-origin"
        return origin == f"{scheme}://{headers.get('host', '')}"

    async def handle(self, request: Any, user: str) -> tuple[int, str, list[tuple[str, str]]]:
        """Answer one POST: (status, text, headers); 303 to ``/`` when it was done."""
        action = PATHS.get(request.path)
        if action is None:
            return 404, f"no action here; the page posts to {', '.join(PATHS)}\n", []
        if not self._same_origin(request.headers, request.scheme):
            log.warning(
                "status page: %s by %s refused: posted from another site (Origin %r)", action, user, request.headers.get("origin")
            )
            return 403, "refused: posted from another site\n", []
        form = request.form()
        if not hmac.compare_digest(form.get("csrf", "").encode(), self.token(user).encode()):
            log.warning("status page: %s by %s refused: the form's token is missing or wrong", action, user)
            return 403, "refused: the form's token is missing or wrong; reload the page and try again\n", []
        for key, value in form.items():
            if len(value) > MAX_FIELD or any(c in value for c in "\r\n\0"):
                return 400, f"{key}: at most {MAX_FIELD} characters on one line\n", []
        try:
            done = await getattr(self, action)(form, user)
        except Refused as exc:
            return exc.status, f"{exc}\n", []
        log.info("status page: %s by %s", done, user)
        return 303, f"{done}\n", [("Location", "/")]

    def _runtime_silences(self) -> Any:
        """The agent's ``RuntimeSilences`` (``state_dir/silences.toml``), as the notifier holds it."""
        silences = getattr(getattr(self.agent, "notifier", None), "silences", None)
        runtime = getattr(silences, "runtime", None)
        if runtime is None:
            raise Refused(503, "this agent keeps no run-time silences")
        return runtime

    async def silence_add(self, form: Mapping[str, str], user: str) -> str:
        from alertmail.units import parse_duration

        try:
            seconds = parse_duration(form.get("duration", "").strip())
        except ValueError as exc:
            raise Refused(400, f"duration: {exc}") from None
        if seconds <= 0:
            raise Refused(400, "duration: must be longer than 0s")
        rule = form.get("rule", "").strip()
        labels = parse_labels(form.get("labels", ""))
        if not rule and not labels:
            raise Refused(400, "give a rule or labels ('*' as the rule silences every alert)")
        comment = form.get("comment", "").strip()
        silence = await asyncio.to_thread(
            self._runtime_silences().add,
            duration=seconds,
            rule=rule or "*",
            labels=labels,
            comment=comment,
            author=user,
            now=time.time(),
        )
        return f"silence {silence.id} added ({silence.describe_matchers()}, for {form['duration'].strip()})"

    async def silence_expire(self, form: Mapping[str, str], user: str) -> str:
        silence_id = form.get("id", "").strip()
        if silence_id.startswith("config-"):
            raise Refused(400, f"{silence_id} comes from [[silences]] in the config; remove it there")
        if not await asyncio.to_thread(self._runtime_silences().remove, silence_id, now=time.time()):
            raise Refused(404, f"no run-time silence {silence_id!r}")
        return f"silence {silence_id} expired"

    async def queue_retry(self, form: Mapping[str, str], user: str) -> str:
        msg_id = form.get("id", "").strip()
        queue = self.agent.queue
        if not msg_id or queue.get(msg_id) is None:
            raise Refused(404, f"no message {msg_id!r} in the queue")
        try:
            await asyncio.to_thread(queue.request, "retry", msg_id)
        except ValueError as exc:
            raise Refused(400, str(exc)) from None
        self.agent.outbox.delivery.take_requests_now()  # as SIGUSR1 from `alertmail queue retry` does
        return f"retry of message {msg_id} requested"
