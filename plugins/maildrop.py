"""The maildrop: mail that ``alertmail sendmail`` submitted, taken into the queue by the agent.

``state_dir/maildrop`` is where any local user's ``sendmail`` leaves a message, and only
the agent takes it out. Postfix does this with a setgid ``postdrop`` program; a Python
script cannot be setgid, so the folder does the work instead:

- The folder is owned by the agent's user and group, mode ``3733`` (``rwx-wx-wx`` with
  the sticky and setgid bits). Anyone can create a file in it; nobody but the agent can
  list it; the sticky bit stops a user from removing or renaming anyone else's file.
- The setgid bit gives every new file the folder's group, the agent's, whoever made it.
  ``sendmail`` creates its file ``0640``: the agent reads it through its group, other
  users cannot read it (they are not in the group) and cannot find its name (no listing).
- The file's owner, which only root can change, is the submitting user: the agent writes
  it into the ``Received:`` line it adds (``from userid 1000``), as Postfix does.
- A file is written under a name starting with a dot, fsynced, then renamed into place;
  the agent takes only names without a dot, regular files with one link, opened with
  ``O_NOFOLLOW``, as the relay's pickup folder does.

``sendmail`` writes a byte into the FIFO ``maildrop/.wake`` after each submission; the
agent, holding it open, scans at once (Postfix's ``public/pickup``, nullmailer's
``trigger``). Without an agent the byte goes nowhere and the file waits: the agent scans
the folder when it starts, and every ``scan_interval`` besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any, ClassVar

from alertmail import Checker, ServiceContext, Settings, hookimpl, setting
from alertmail.intake import QueueWriteError

log = logging.getLogger("alertmail.sendmail")

MAILDROP_MODE = 0o3733
WAKE = ".wake"
# A ".name" file that old is what a killed sendmail left behind.
STALE_SECONDS = 86400.0
# Woken, the agent waits this long before it scans: a woken process may take the CPU from the
# one that woke it, and on a busy host the sendmail that wrote the byte would then wait for
# the whole scan before it could exit. Submissions within it are taken in one scan.
WAKE_DELAY = 0.005


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildropSettings(Settings):
    """``[sendmail]``: the maildrop service."""

    enabled: bool = setting("bool", True, help="take what `alertmail sendmail` left in STATE_DIR/maildrop")
    route: list[str] = setting("list", [], help="transports submitted mail leaves through; empty: [mail].route")
    scan_interval: float = setting(
        "duration", 5.0, help="how often the maildrop is scanned besides the wake-up each submission sends"
    )
    max_size: int = setting("size", 10_000_000, help="larger submissions go to badmail")
    max_recipients: int = setting("int", 1000, help="a submission with more recipients goes to badmail")
    dkim: bool = setting("bool", True, help="sign submitted mail with the [mail.dkim] keys, as the agent's own mail is")


def check_options(settings: MaildropSettings, check: Checker, config: object) -> None:
    """What the option kinds alone cannot say: every limit is above zero."""
    for key, value, example in (
        ("scan_interval", settings.scan_interval, '"5s"'),
        ("max_size", settings.max_size, '"10MB"'),
        ("max_recipients", settings.max_recipients, "1000"),
    ):
        if isinstance(value, int | float) and value <= 0:
            check.error(f"sendmail.{key}", f"must be more than 0; e.g. {key} = {example}")


def abandoned(name: str, age: float) -> bool:
    """A ".TIME-PID-RANDOM" file a sendmail was writing, left behind: older than a day and its
    writer gone. Age alone is not enough: a clock stepped (or faked) ahead makes a file being
    written this instant look a year old, and removing it fails that submission."""
    if age <= STALE_SECONDS:
        return False
    try:
        pid = int(name[1:].split("-")[1])
    except (IndexError, ValueError):
        return True  # not a name sendmail writes
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # another user's process, still running
    return False


def prepare_folder(folder: Path) -> None:
    """Make the maildrop and its wake-up FIFO with their modes, as far as this user may (blocking)."""
    folder.mkdir(parents=True, exist_ok=True)
    st = folder.stat()
    if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) != MAILDROP_MODE:
        os.chmod(folder, MAILDROP_MODE)
    wake = folder / WAKE
    try:
        wst = os.lstat(wake)
    except FileNotFoundError:
        wst = None
    if wst is not None and not (stat.S_ISFIFO(wst.st_mode) and wst.st_uid == os.geteuid()):
        wake.unlink()  # someone else's file under that name: the folder's owner may remove it
        wst = None
    if wst is None:
        os.mkfifo(wake, 0o622)
        os.chmod(wake, 0o622)  # what the umask took away: every user may wake the agent


class MaildropService:
    """Takes submitted mail from ``state_dir/maildrop`` into the queue, woken by each submission."""

    name: ClassVar[str] = "sendmail"
    section: ClassVar[str] = "sendmail"
    options: ClassVar[type[MaildropSettings]] = MaildropSettings
    check = staticmethod(check_options)
    light: ClassVar[bool] = True  # waits on a FIFO: no reason to run the agent on uvloop

    def __init__(self) -> None:
        self.folder = Path()
        self._wake_fd: int | None = None
        self._woken = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, context: ServiceContext[MaildropSettings]) -> None:
        from alertmail.intake import Badmail

        settings = context.options
        self.folder = Path(context.state_dir) / "maildrop"
        self.queue = context.queue
        self.badmail = Badmail(Path(context.state_dir) / "badmail")
        self.hostname = context.hostname
        self.route = list(settings.route) or None
        self.interval = settings.scan_interval
        self.max_size = settings.max_size
        self.max_recipients = settings.max_recipients
        self.dkim = settings.dkim
        await asyncio.to_thread(prepare_folder, self.folder)
        # Read and write: the FIFO then never reads as closed when a sendmail closes its end.
        self._wake_fd = os.open(self.folder / WAKE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        asyncio.get_running_loop().add_reader(self._wake_fd, self._on_wake)
        self._task = asyncio.create_task(self._run(), name="sendmail-maildrop")

    async def stop(self) -> None:
        if self._wake_fd is not None:
            asyncio.get_running_loop().remove_reader(self._wake_fd)
            os.close(self._wake_fd)
            self._wake_fd = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _on_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_fd is not None and os.read(self._wake_fd, 4096):
                pass
        self._woken.set()

    async def _run(self) -> None:
        while True:
            self._woken.clear()
            try:
                await asyncio.shield(self.scan())
            except asyncio.CancelledError:
                raise
            except Exception:  # a broken scan must not end the service
                log.exception("sendmail: scanning %s failed", self.folder)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), self.interval)
                await asyncio.sleep(WAKE_DELAY)

    async def scan(self) -> int:
        """Queue every submission in the folder; the number taken."""
        names = await asyncio.to_thread(self._names)
        results = await asyncio.gather(*(self.take(self.folder / name) for name in names))
        return sum(results)

    def _names(self) -> list[str]:
        names = []
        now = time.time()
        for item in os.scandir(self.folder):
            if not item.name.startswith("."):
                names.append(item.name)
            elif item.name != WAKE:
                with contextlib.suppress(OSError):
                    if abandoned(item.name, now - item.stat(follow_symlinks=False).st_mtime):
                        os.unlink(item.path)
        return sorted(names)

    async def take(self, path: Path) -> bool:
        """Queue one submission, then remove it; one that is not a message goes to badmail."""
        from alertmail.plugins.relay.watcher import PickupError, parse_pickup, refusal, shown

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
        except FileNotFoundError:
            return False
        except PermissionError:
            # Not made by sendmail (which makes it readable to the folder's group): nobody can take it.
            log.warning("sendmail: %s in the maildrop is not readable to the agent; removed", shown(path.name))
            path.unlink(missing_ok=True)
            return False
        except OSError as exc:
            log.error("sendmail: cannot read %s: %s", shown(path.name), exc.strerror or exc)
            return False
        try:
            st = os.fstat(fd)
            reason = refusal(st)
            if reason is not None:
                log.warning("sendmail: %s in the maildrop is removed, never taken: it is %s", shown(path.name), reason)
                path.unlink(missing_ok=True)
                return False
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = fh.read(self.max_size + 1)
        finally:
            os.close(fd)
        try:
            if len(data) > self.max_size:
                raise PickupError(f"larger than max_size ({self.max_size} bytes)")
            envelope, message = parse_pickup(data)
            if len(envelope.recipients) > self.max_recipients:
                raise PickupError(f"too many recipients ({len(envelope.recipients)} > max_recipients {self.max_recipients})")
        except PickupError as exc:
            text = f"submission {shown(path.name)!r} from userid {st.st_uid} is not a message alertmail can send: {exc}"
            msg_id = await asyncio.to_thread(self.badmail.reject, data[: self.max_size], reason=text, origin="sendmail")
            path.unlink(missing_ok=True)
            log.warning("sendmail: %s moved to badmail as %s: %s", shown(path.name), msg_id, exc)
            return True
        trace = (
            f"Received: by {self.hostname} (alertmail sendmail, from userid {st.st_uid})"
            f" id {secrets.token_hex(6)}; {format_datetime(datetime.now(UTC))}\r\n"
        )
        data = trace.encode() + message
        try:
            # dkim: signed by the queue's own signer ([mail.dkim], the keys of the last reload), the one agent mail goes through.
            msg_id = await self.queue.put(data, envelope, route=self.route, origin="sendmail", dkim=self.dkim)
        except QueueWriteError as exc:
            log.error("sendmail: cannot queue %s, left in the maildrop: %s", shown(path.name), exc)
            return False
        path.unlink(missing_ok=True)
        log.info("sendmail: submission from userid %d queued as %s", st.st_uid, msg_id)
        return True


@hookimpl
def register_services(register: Any) -> None:
    register(MaildropService)
