"""Hook specifications: what a plugin can add to alertmail."""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("alertmail")
hookimpl = pluggy.HookimplMarker("alertmail")


@hookspec
def register_probes(register):
    """Call ``register(probe)`` for each probe: an object with ``name``, ``collect()`` and optional ``interval``."""


@hookspec
def register_transports(register):
    """Call ``register(transport_class)`` for each delivery backend (see ``alertmail.Transport``)."""


@hookspec
def register_services(register):
    """Call ``register(service)`` for each long-running service started with the agent."""


@hookspec
def register_commands(cli):
    """Add click commands to the ``alertmail`` command group ``cli``."""


@hookspec(firstresult=True)
def render_alert(alert, context):
    """Return an ``EmailMessage`` for ``alert`` to replace the built-in renderer. Stops at first non-None result."""


@hookspec
def alert_event(event):
    """Observe every alert state change (logging, metrics, hooks)."""
