"""The pickup transport: write each message atomically as a file into a folder.

The folder can be alertmail's own (the relay's pickup watcher takes it from there)
or another MTA's pickup directory (IIS reads leading X-Sender / X-Receiver lines).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import ClassVar

from alertmail import (
    DeliveryResult,
    Envelope,
    RecipientStatus,
    Settings,
    Status,
    TransportContext,
    hookimpl,
    message_bytes,
    setting,
    write_atomic,
)


@dataclass(frozen=True, slots=True, kw_only=True)
class PickupSettings(Settings):
    """``[transports.pickup]``."""

    directory: Path | None = setting("path", None, help="folder to write into; default: STATE_DIR/pickup")
    envelope: bool = setting("bool", True, help="put X-Sender / X-Receiver lines first, as IIS reads them")


class PickupTransport:
    """Delivers by writing ``<id>.eml`` into ``directory`` (temp file, fsync, rename)."""

    name: ClassVar[str] = "pickup"
    options: ClassVar[type[PickupSettings]] = PickupSettings

    def __init__(self, settings: PickupSettings, context: TransportContext) -> None:
        self.directory = Path(settings.directory or Path(context.state_dir) / "pickup")
        self.envelope = settings.envelope

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult:
        data = message_bytes(message)
        if self.envelope:
            lines = [f"X-Sender: {envelope.sender}"] + [f"X-Receiver: {r}" for r in envelope.recipients]
            data = "\r\n".join(lines).encode("ascii", "backslashreplace") + b"\r\n" + data
        name = f"{time.strftime('%Y%m%d%H%M%S')}-{os.urandom(6).hex()}.eml"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomic(self.directory / name, data)
        except OSError as exc:
            status = RecipientStatus(Status.TEMPORARY, 451, f"cannot write {self.directory}: {exc.strerror}", "4.3.0")
            return DeliveryResult.all(envelope.recipients, status)
        ok = RecipientStatus(Status.DELIVERED, 250, f"written to {self.directory / name}", "2.0.0")
        return DeliveryResult.all(envelope.recipients, ok)


@hookimpl
def register_transports(register):
    register(PickupTransport)
