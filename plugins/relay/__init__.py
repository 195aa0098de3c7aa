"""The bundled relay: a local SMTP service and a pickup-folder watcher feeding the agent's queue.

``service`` holds the hooks and the service; ``server`` the SMTP protocol on aiosmtpd;
``policy`` the pure relay rules; ``users`` the AUTH users file; ``w3c`` the W3C log;
``watcher`` reads the pickup folder.
"""

from alertmail.plugins.relay.service import register_commands, register_services

__all__ = ["register_commands", "register_services"]
