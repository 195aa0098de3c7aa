"""The ``alertmail`` command line: one package, one module per command or group.

``app`` holds the group and the small commands (check, plugins, run, init); ``options``
what every command shares (the one ``--config``); the other modules are imported only
when their command runs.
"""

from alertmail.cli.app import cli, main

__all__ = ["cli", "main"]
