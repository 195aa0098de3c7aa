"""The surface for a service that takes mail in from outside: the relay, the sendmail maildrop.

A plugin imports what every plugin uses from ``alertmail``; a service that receives mail
(an SMTP listener, a folder it watches) also takes these names, and only from here:

- ``Intake`` is what ``ServiceContext.queue`` offers: ``put`` (durable before it
  returns; ``dkim=True`` asks for the ``[mail.dkim]`` signature), and, for a service that
  receives in processes of its own, ``shared_writer()`` (picklable: ``IntakeWriter``,
  whose ``open()`` gives each process a ``ProcessIntake``), ``adopt(segment)`` and ``adopt_new()``.
- ``Attempts`` is ``ServiceContext.delivery`` (its ``observers`` see every delivery
  attempt); ``ConfigView`` (with ``AgentView``) is ``ServiceContext.config`` and the
  third argument of a service's ``check()``: what a service may read of the whole config.
- ``QueueWriteError`` (a put that could not be made durable: answer 4xx), ``Badmail``
  and ``split_envelope`` (what cannot be taken, and IIS's ``X-Sender:``/``X-Receiver:`` lines).
- ``listen_problem`` and ``valid_hostname`` for a service's ``check()`` of its listener;
  ``value_of`` reads one key of another plugin's options, declared as a Settings class or a dict
  (the relay: the pickup transport's ``directory``).
- A service with a command that runs it alone (``alertmail relay``) or processes of its
  own: ``Outbox`` (queue, transports and delivery of one state_dir; ``QueueLocked`` when
  an agent holds it), ``setup_logging`` and ``loop_factory`` (``LoopUnavailable``).

docs/plugins.md (the service contract) and docs/relay.md describe them. The queue, badmail,
outbox and command-line modules load on first use, as for ``alertmail``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from alertmail.config.schema import listen_problem, valid_hostname, value_of
from alertmail.loops import LoopUnavailable, loop_factory
from alertmail.model import AgentView, Attempts, ConfigView, Intake, IntakeWriter, ProcessIntake, QueuedMessage

if TYPE_CHECKING:
    from alertmail.cli.options import setup_logging
    from alertmail.delivery.delivery import OutboxConfig
    from alertmail.delivery.outbox import Outbox
    from alertmail.queue.badmail import Badmail, split_envelope
    from alertmail.queue.spool import QueueLocked, QueueWriteError

_LAZY = {
    "Badmail": "alertmail.queue.badmail",
    "split_envelope": "alertmail.queue.badmail",
    "QueueLocked": "alertmail.queue.spool",
    "QueueWriteError": "alertmail.queue.spool",
    "Outbox": "alertmail.delivery.outbox",
    "OutboxConfig": "alertmail.delivery.delivery",
    "setup_logging": "alertmail.cli.options",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'alertmail.intake' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [  # noqa: RUF022  grouped as the docstring tells them
    "Intake",
    "IntakeWriter",
    "ProcessIntake",
    "Attempts",
    "QueuedMessage",
    "ConfigView",
    "AgentView",
    "QueueWriteError",
    "Badmail",
    "split_envelope",
    "listen_problem",
    "valid_hostname",
    "value_of",
    "Outbox",
    "OutboxConfig",
    "QueueLocked",
    "setup_logging",
    "loop_factory",
    "LoopUnavailable",
]
