"""`alertmail run` end to end with probes: the config head and the run-until-mailed harness
that the probe end-to-end tests (host, service and ecosystem probes) share."""

from __future__ import annotations

import subprocess
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.test_agent_e2e import pickup_mails, start_agent, stop_agent, wait_for

# Quick mails to pickup/: a probe every second, no group wait.
HEAD = """
[agent]
state_dir = "var"
interval = "1s"
resolution = "1s"
{agent}
[mail]
from = "alertmail@test.example"
to = ["ops@test.example"]
route = {route}

[notify]
group_wait = "0s"
{notify}
"""

# The [agent] lines of an agent that loads the test's plugins.d/ (a gauge or a probe of its own).
PLUGIN_AGENT = 'plugin_dirs = ["plugins.d"]\nhostname = "web1.test"\n'


def write_config(folder: Path, *tables: str, agent: str = "", notify: str = "", route: str = '["pickup"]') -> Path:
    """``folder``/config.toml: ``HEAD`` with ``agent`` and ``notify`` lines added to its tables, then ``tables``
    (probe tables, rules) dedented."""
    path = folder / "config.toml"
    head = HEAD.format(agent=textwrap.dedent(agent), notify=textwrap.dedent(notify), route=route)
    path.write_text(head + "".join(textwrap.dedent(table) for table in tables))
    return path


def text_of(mail: EmailMessage) -> str:
    return mail.get_body(("plain",)).get_content()


def firing(folder: Path) -> list[EmailMessage]:
    return [m for m in pickup_mails(folder) if m["X-Alertmail-Kind"] == "firing"]


@dataclass
class Agent:
    """A running ``alertmail run``; ``log`` is its stderr once it stopped."""

    proc: subprocess.Popen
    log: str = ""


@contextmanager
def agent_running(config: Path) -> Iterator[Agent]:
    """``alertmail run`` on ``config`` for the time of the block, stopped (SIGTERM) at its end."""
    agent = Agent(start_agent(config))
    try:
        yield agent
    finally:
        agent.log = stop_agent(agent.proc)


def run_until_mailed(
    folder: Path, *tables: str, until: Callable[[], list[EmailMessage]] | None = None, what: str = "an alert mail in pickup/"
) -> tuple[list[EmailMessage], Agent]:
    """Run the agent on ``HEAD`` + ``tables`` until ``until()`` (default: any mail in pickup/) gives mails."""
    with agent_running(write_config(folder, *tables)) as agent:
        mails = wait_for(until or (lambda: pickup_mails(folder)), timeout=60, what=what)
    return mails, agent
