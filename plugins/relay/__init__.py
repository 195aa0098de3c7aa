"""The bundled relay: a local SMTP service and a pickup-folder watcher feeding the agent's queue.

``service`` holds the hooks, the service and the commands; ``settings`` the ``[relay]``
keys (``RelaySettings``); ``receivers`` and ``receiver`` the receiving processes;
``listener`` the listening sockets; ``server`` the SMTP session on aiosmtpd; ``handler``
the policy and queueing hooks it calls; ``policy`` the pure relay rules; ``users`` the
AUTH users file; ``w3c`` the W3C log; ``watcher`` reads the pickup folder.
"""

from alertmail.plugins.relay.service import register_commands, register_services

__all__ = ["register_commands", "register_services"]
