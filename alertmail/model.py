"""The values that flow through alertmail: samples, probes, envelopes, delivery results."""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from pathlib import Path

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

    data = message.as_bytes(policy=email.policy.SMTP)
    # The email package sometimes folds before an encoded word and leaves the line's last
    # blank in place ("recovered \r\n =?utf-8?b?4oCU?="): unfolded, that reads as two spaces.
    head, sep, body = data.partition(b"\r\n\r\n")
    # Only before an encoded word: elsewhere (a sealed X- field) every blank is the value's own.
    # A line that holds only the field name ("In-Reply-To: ") keeps its blank.
    head = re.sub(rb"(?m)^([ \t][^\r\n]*?\S|[^ \t\r\n:][^\r\n:]*:[^\r\n]*?\S)[ \t]+\r\n(?=[ \t]+=\?)", rb"\1\r\n", head)
    # A field folded right after its name ("In-Reply-To:\r\n <long id>") is unfolded when its value is one
    # line: readers (Python's among them) would take the fold's blank as part of the Message-ID.
    head = re.sub(rb"(?m)^([!-9;-~]+:)[ \t]*\r\n[ \t]+(?=[^\s][^\r\n]{0,900}(?:\r\n(?![ \t])|\Z))", rb"\1 ", head)
    return head + sep + body


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


@dataclass(frozen=True, slots=True)
class TransportContext:
    """What a transport may know about the agent it runs in."""

    state_dir: Path
    hostname: str
    config_path: Path | None = None  # of the config file, for relative paths


# -- what a service is handed ------------------------------------------------
# Protocols, not the classes behind them: this module names nothing above it, and a
# service sees only the few members written here (docs/plugins.md, the service contract).


class Intake(Protocol):
    """Where a service puts the mail it takes in: the agent's queue (``ServiceContext.queue``).

    ``put`` returns the message's id once it is durable (QueueWriteError when it cannot be
    made so); ``route`` is the chain it leaves through, ``origin`` says where it came from,
    and ``dkim=True`` asks for the ``[mail.dkim]`` signature (when keys are configured).

    A service that receives in processes of its own gives each of them ``shared_writer()``
    (picklable); each commit round a process makes is a segment of the queue folder, which
    the agent takes in with ``adopt(name)`` once told, or ``adopt_new()`` (a folder
    listing) for the segments of a process that died before it could tell.
    """

    async def put(
        self, data: bytes, envelope: Envelope, *, route: Sequence[str] | None = ..., origin: str = ..., dkim: bool = ...
    ) -> str: ...

    def shared_writer(self) -> IntakeWriter: ...

    def adopt(self, segment: str) -> int: ...

    def adopt_new(self) -> int: ...


class IntakeWriter(Protocol):
    """What a process of a service's own needs to put mail into the agent's queue (picklable)."""

    def open(self, on_segment: Callable[[str], None]) -> ProcessIntake:
        """The queue of this process, on its running event loop; ``on_segment(name)`` after each commit round."""
        ...


class ProcessIntake(Protocol):
    """A receiving process's side of the queue: ``put`` as ``Intake.put``; ``close`` finishes the round under way."""

    async def put(
        self, data: bytes, envelope: Envelope, *, route: Sequence[str] | None = ..., origin: str = ..., dkim: bool = ...
    ) -> str: ...

    async def close(self) -> None: ...


class QueuedMessage(Protocol):
    """A message in the queue, as an observer of delivery sees it."""

    @property
    def id(self) -> str: ...


class Attempts(Protocol):
    """Delivery as a service may watch it: each observer is called after every attempt with
    ``(message, transport name, envelope, DeliveryResult, seconds, size)``."""

    @property
    def observers(self) -> list[Callable[..., None]]: ...


class AgentView(Protocol):
    """What a service may read of ``[agent]``."""

    @property
    def log_level(self) -> str: ...

    @property
    def log_format(self) -> str: ...


class ConfigView(Protocol):
    """What a service may read of the agent's whole configuration (its own table comes as ``options``)."""

    @property
    def path(self) -> Path: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def hostname(self) -> str: ...

    @property
    def agent(self) -> AgentView: ...

    @property
    def raw(self) -> Mapping[str, Any]:
        """The file as parsed, before any check: which tables it has."""
        ...

    @property
    def transports(self) -> Mapping[str, Any]:
        """The configured transports by name: each its settings object (a dict for one declared with a dict)."""
        ...

    @property
    def sections(self) -> Mapping[str, Any]:
        """The checked sections by name: a service's own is its settings object, as ``ServiceContext.options``."""
        ...


OptionsT = TypeVar("OptionsT")


@dataclass(frozen=True, slots=True)
class ServiceContext(Generic[OptionsT]):
    """What the agent hands a service when it starts it."""

    config: ConfigView
    options: OptionsT  # the service's checked table: an object of its Settings class (a dict for the older form)
    queue: Intake
    state_dir: Path
    hostname: str
    delivery: Attempts | None = None
