"""The event loop a process runs on: asyncio's own, or uvloop where it pays.

uvloop roughly doubles what one process accepts per second (bench/relay_bench.py) and
cuts the CPU the agent spends delivering; asyncio keeps an idle agent about 2 MB smaller.
``alertmail run`` chooses by ``[agent] event_loop``, the relay's own processes by ``[relay] event_loop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alertmail.errors import AlertmailError

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

CHOICES = ("auto", "asyncio", "uvloop")


class LoopUnavailable(AlertmailError, ImportError):
    """``uvloop`` was asked for by name and is not installed."""


def loop_factory(choice: str, *, busy: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for ``asyncio.Runner`` (None: asyncio's own) for ``choice``, one of ``CHOICES``.

    ``auto`` takes uvloop when it is installed and the process is ``busy`` (it receives or
    delivers mail in numbers); ``uvloop`` insists, and raises LoopUnavailable without it.
    """
    if choice not in CHOICES:
        raise ValueError(f"event_loop: expected one of {', '.join(CHOICES)}, got {choice!r}")
    if choice == "asyncio" or (choice == "auto" and not busy):
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise LoopUnavailable("uvloop is not installed (pip install uvloop)") from None
        return None
    return uvloop.new_event_loop
