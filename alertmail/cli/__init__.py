"""The ``alertmail`` command line: one package, one module per command or group.

``app`` holds the group and the small commands (check, plugins, run, init); ``options``
what every command shares (the one ``--config``); the other modules are imported only
when their command runs. ``alertmail sendmail`` skips click and ``app`` altogether:
it runs once per submitted mail, and every import is paid per mail.
"""

import sys

TYPE_CHECKING = False  # typing costs a submission more than the rest of its imports
if TYPE_CHECKING:
    from typing import Any

__all__ = ["cli", "main"]


def main() -> None:
    if sys.argv[1:2] == ["sendmail"]:
        from alertmail.cli.sendmail import main as sendmail

        sys.exit(sendmail(sys.argv[2:]))
    from alertmail.cli.app import main as app_main

    app_main()


def __getattr__(name: str) -> "Any":
    if name == "cli":
        from alertmail.cli.app import cli

        return cli
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
