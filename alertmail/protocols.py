"""What a plugin's probe, transport and service must provide, as ``typing.Protocol``s.

The loader checks each registered object against its protocol once, when the plugin
registers it (``isinstance``, then the types of the names), and records a plugin that
breaks one as failed; past that point the agent uses the members a protocol requires
directly. The members a protocol leaves out are optional, read with their documented
default: a probe's ``interval``, ``description``, ``metrics``, ``options`` and
``configure(options)``; a transport's ``close()`` and ``retry_waiting``; a service's
``check(options, checker, config)`` and ``counters``. docs/plugins.md is the guide.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from alertmail.config.schema import Settings
from alertmail.model import Sample, ServiceContext, Transport

if TYPE_CHECKING:
    from alertmail.config.schema import Option

__all__ = ["ProbeProtocol", "Service", "Transport", "problem"]


@runtime_checkable
class ProbeProtocol(Protocol):
    """A probe: any object with a ``name`` and a ``collect()``; ``alertmail.Probe`` makes one from a function.

    ``collect()`` returns samples, or an awaitable or async iterable of them. A plain
    ``collect()`` runs in the probe's own worker thread, an async one on the agent's loop.
    """

    name: str

    def collect(self) -> Iterable[Sample] | Awaitable[Iterable[Sample]] | AsyncIterable[Sample]: ...


@runtime_checkable
class Service(Protocol):
    """A long-running service, registered as a class and started with the agent.

    It runs when its config table ``[SECTION]`` says ``enabled = true``; ``options`` is
    the ``Settings`` class of that table (or, the older form, a mapping of each key to an
    ``Option``). The agent builds it with no arguments and
    awaits ``start(context)`` and, at a reload that changed its table or at the agent's
    stop, ``stop()``; see docs/plugins.md for the timeouts.
    """

    name: ClassVar[str]
    section: ClassVar[str]
    options: ClassVar[type[Settings] | Mapping[str, Option]]

    async def start(self, context: ServiceContext) -> None: ...

    async def stop(self) -> None: ...


def _declares_options(options: object) -> bool:
    """A ``Settings`` class, or (the older form) a mapping of key to ``Option``."""
    return isinstance(options, Mapping) or (isinstance(options, type) and issubclass(options, Settings))


def problem(kind: str, obj: object) -> str | None:
    """What ``obj`` lacks to be a ``kind`` ("probe", "transport" or "service"); None when it conforms."""
    if kind == "probe":
        if not isinstance(obj, ProbeProtocol) or not isinstance(obj.name, str) or not callable(obj.collect):
            return "a probe needs a str 'name' and a 'collect()' method"
    elif kind == "transport":
        if not isinstance(obj, type) or not isinstance(obj, Transport) or not isinstance(obj.name, str):
            return "a transport is a class with a str 'name', 'options' (a Settings class or a mapping) and an async 'send()'"
        if not _declares_options(obj.options) or not callable(obj.send):
            return "a transport is a class with a str 'name', 'options' (a Settings class or a mapping) and an async 'send()'"
    elif kind == "service":
        if (
            not isinstance(obj, type)
            or not isinstance(obj, Service)
            or not isinstance(obj.name, str)
            or not isinstance(obj.section, str)
            or not obj.section
            or not _declares_options(obj.options)
            or not callable(obj.start)
            or not callable(obj.stop)
        ):
            return (
                "a service is a class with a str 'name' and 'section', 'options' (a Settings class or a mapping), "
                "async 'start(context)', 'stop()'"
            )
    return None
