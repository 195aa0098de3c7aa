"""The values that flow through alertmail: samples, probes, envelopes, delivery results."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from pathlib import Path

    from alertmail.config.load import Config
    from alertmail.config.schema import Option
    from alertmail.delivery.delivery import Delivery
    from alertmail.queue.spool import Queue

Labels = tuple[tuple[str, str], ...]


# What a label may not carry as it is: control characters (CR, LF, NUL, C1), line and
# paragraph separators, bidirectional overrides, and lone surrogates (the bytes of a
# name that was not UTF-8, as Python's file system decoding gives them).
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt])")
_SEPARATORS = re.compile(r"[^a-zA-Z0-9]+")
_SURROGATES = re.compile("[\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:  # one byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def label_text(value: Any) -> str:
    """A label name or value as text that is safe everywhere: in a mail, a header, JSON, ``/metrics``.

    Labels are bytes from the outside world (mount points, process names, whatever a
    plugin returns). Bytes are decoded as UTF-8 with surrogate escapes; what cannot be
    shown as it is (a byte that is not UTF-8, CR, LF, NUL, other control characters)
    is written escaped, as Python writes it: byte 0xff is ``\\xff``, a line feed ``\\n``.
    """
    if isinstance(value, bytes | bytearray | memoryview):
        value = bytes(value).decode("utf-8", "surrogateescape")
    elif not isinstance(value, str):
        value = str(value)
    if value.isprintable():
        return value
    return _UNSHOWABLE.sub(_escaped, value)


def system_name(text: str) -> str:
    """A label value as the system names the thing again (to open a path): ``label_text`` undone.

    ``/mnt/\\xff`` becomes the file system name with byte 0xff (``/mnt/\\udcff`` in Python),
    ``\\n`` a line feed. A backslash followed by anything else is kept as it is.
    """
    if "\\" not in text:
        return text
    return _ESCAPE.sub(_unescaped, text)


def _unescaped(match: re.Match[str]) -> str:
    code = match.group()
    if code[1] in "nrt":
        return {"n": "\n", "r": "\r", "t": "\t"}[code[1]]
    value = int(code[2:], 16)
    return chr(0xDC00 + value) if code[1] == "x" and value >= 0x80 else chr(value)


def without_surrogates(text: str) -> str:
    """``text`` with every lone surrogate (a byte that was not UTF-8) written as ``\\xff``: encodable as UTF-8."""
    return _SURROGATES.sub(_escaped, text)


def freeze_labels(labels: Mapping[str, Any] | Labels | None) -> Labels:
    """Labels as a sorted tuple of string pairs: hashable, order-free, every name and value ``label_text``."""
    if not labels:
        return ()
    items = labels.items() if isinstance(labels, Mapping) else labels
    return tuple(sorted((_text(k), _text(v)) for k, v in items))


def _text(value: Any) -> str:
    # The common case first, without a call more: every sample of every probe comes through here.
    return value if type(value) is str and value.isprintable() else label_text(value)


def reserved_metric(name: str) -> bool:
    """True for a metric name the agent keeps for its own figures, which no probe may emit.

    ``agent.*`` (probe health, and ``alertmail_agent_*`` on ``/metrics``: queue depth,
    deliveries, mails) and ``alert`` (``alertmail_alert``, the rule states), in any case
    and with any separator: a fake of either would be stored by Prometheus as the real one.
    """
    flat = _SEPARATORS.sub("_", name).strip("_").lower()
    return flat.split("_", 1)[0] in ("agent", "alert", "alerts")


@dataclass(frozen=True, slots=True, init=False)
class Sample:
    """One value of one metric for one label set, at one time."""

    metric: str
    value: float
    labels: Labels
    timestamp: float

    def __init__(
        self,
        metric: str,
        value: float,
        labels: Mapping[str, Any] | Labels | None = None,
        timestamp: float | None = None,
    ) -> None:
        object.__setattr__(self, "metric", _text(metric))
        object.__setattr__(self, "value", float(value))
        object.__setattr__(self, "labels", freeze_labels(labels))
        object.__setattr__(self, "timestamp", time.time() if timestamp is None else float(timestamp))

    @property
    def series(self) -> tuple[str, Labels]:
        """The identity of the time series this sample belongs to."""
        return (self.metric, self.labels)

    def label_dict(self) -> dict[str, str]:
        return dict(self.labels)


def message_bytes(message: EmailMessage | bytes) -> bytes:
    """The wire form of a message (CRLF line ends); bytes pass through as they are."""
    if isinstance(message, bytes):
        return message
    import email.policy  # not at start-up: the idle agent never needs it

    return message.as_bytes(policy=email.policy.SMTP)


@dataclass(frozen=True, slots=True)
class MetricInfo:
    """Describes a metric a probe emits, for `alertmail probe --list` and the docs."""

    name: str
    unit: str
    description: str = ""
    labels: tuple[str, ...] = ()
    kind: str = "gauge"  # "gauge" or "rate"


@dataclass
class Probe:
    """A ready-made probe: a name, a collect function and an optional interval (seconds).

    Plugins may register any object with ``name`` and ``collect()``; this class is
    a convenience for the function form.
    """

    name: str
    collect: Callable[[], Iterable[Sample] | Awaitable[Iterable[Sample]]]
    interval: float | None = None
    description: str = ""
    metrics: tuple[MetricInfo, ...] = ()


@dataclass(frozen=True, slots=True)
class Envelope:
    """The SMTP envelope: who the message is from and whom it goes to."""

    sender: str
    recipients: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipients", tuple(self.recipients))


class Status(enum.Enum):
    DELIVERED = "delivered"
    TEMPORARY = "temporary"  # retry later
    PERMANENT = "permanent"  # give up: badmail and DSN


@dataclass(frozen=True, slots=True)
class RecipientStatus:
    """What happened to one recipient in one delivery attempt."""

    status: Status
    code: int = 0
    message: str = ""
    enhanced: str = ""  # RFC 3463 status, e.g. "5.1.1"
    remote: str = ""  # the server that answered, if any

    @property
    def delivered(self) -> bool:
        return self.status is Status.DELIVERED


@dataclass(slots=True)
class DeliveryResult:
    """Per-recipient outcome of one transport's attempt."""

    recipients: dict[str, RecipientStatus] = field(default_factory=dict)

    @classmethod
    def all(cls, recipients: Iterable[str], status: RecipientStatus) -> DeliveryResult:
        return cls(dict.fromkeys(recipients, status))

    def with_status(self, status: Status) -> list[str]:
        return [r for r, s in self.recipients.items() if s.status is status]

    @property
    def delivered(self) -> list[str]:
        return self.with_status(Status.DELIVERED)

    @property
    def temporary(self) -> list[str]:
        return self.with_status(Status.TEMPORARY)

    @property
    def permanent(self) -> list[str]:
        return self.with_status(Status.PERMANENT)


@runtime_checkable
class Transport(Protocol):
    """A delivery backend. Registered as a class; built once per `[transports.NAME]` table.

    ``options`` maps each accepted config key to an ``Option``; the config loader
    validates the table against it and passes the checked values to ``__init__``
    together with ``context`` (a ``TransportContext``).
    """

    name: ClassVar[str]
    options: ClassVar[Mapping[str, Option]]

    async def send(self, message: EmailMessage | bytes, envelope: Envelope) -> DeliveryResult: ...


@dataclass(frozen=True, slots=True)
class TransportContext:
    """What a transport may know about the agent it runs in."""

    state_dir: Path
    hostname: str
    config_path: Path | None = None  # of the config file, for relative paths


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What the agent hands a service when it starts it."""

    config: Config
    options: Mapping[str, Any]  # the service's checked config table
    queue: Queue  # ``await queue.put(data, envelope)``
    state_dir: Path
    hostname: str
    delivery: Delivery | None = None  # ``delivery.observers`` sees every attempt
