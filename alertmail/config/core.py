"""The sections of the agent as a whole: ``[agent]`` (the process) and ``[mail]`` (every mail it writes)."""

from __future__ import annotations

from typing import Any

from alertmail.config.schema import Checker, Option, Section, valid_hostname
from alertmail.units import valid_address

AGENT_OPTIONS: dict[str, Option] = {
    "state_dir": Option("path", "var", help="folder for pickup/, queue/, badmail/, logs/"),
    "interval": Option("duration", 10.0, minimum=0.1, help="default probe interval"),
    "resolution": Option(
        "duration",
        5.0,
        help="how often time-driven checks run: reminders, group and digest flushes, absent series, silence changes",
    ),
    "plugin_dirs": Option("list", [], help="folders of single-file plugins"),
    "timezone": Option("str", "UTC", nonempty=True, help="IANA timezone for times in mails"),
    "hostname": Option("str", None, nonempty=True, help="host name shown in mails; default: this machine's"),
    "probe_timeout": Option("duration", None, minimum=0.001, help="longest a probe may run; default: its interval"),
    "disable_plugins": Option("list", [], help="plugin names not to load"),
    "log_level": Option("str", "info", choices=("debug", "info", "warning", "error")),
    "event_loop": Option(
        "str",
        "auto",
        choices=("auto", "asyncio", "uvloop"),
        help="the agent's event loop: auto = uvloop when installed and a service (the relay) is enabled, "
        "asyncio otherwise (the idle agent stays small)",
    ),
    "log_format": Option(
        "str",
        "text",
        choices=("text", "json"),
        help="text (with times; journald's form under systemd) or json, one object a line",
    ),
}

MAIL_OPTIONS: dict[str, Option] = {
    "from": Option("str", "alertmail@localhost", help="From address of alert mails"),
    "to": Option("list", [], addresses=True, help="default recipients"),
    "route": Option(
        "list",
        ["pickup"],
        nonempty=True,
        help="ordered chain of transports: the next one takes what the one before could not deliver",
    ),
    "also_route": Option(
        "list",
        [],
        help="a second chain each alert mail is also queued on, as its own message with its own "
        'retries: route = ["smtp"] and also_route = ["alertmanager"] send to both',
    ),
    "subject_prefix": Option("str", "", help="text put before every subject"),
    "templates": Option("path", None, help="folder of templates overriding alert.txt.j2 / alert.html.j2"),
    "charts": Option(
        "str",
        "in-process",
        choices=("in-process", "subprocess", "off"),
        help="where charts are drawn: in-process (Pillow, loaded with the first alert), subprocess (a child per mail), off",
    ),
}


def _check_agent(agent: dict[str, Any], check: Checker, config: Any) -> None:
    if agent.get("resolution") is not None and not 0.1 <= agent["resolution"] <= 60:
        check.error("agent.resolution", 'must lie between 100ms and 60s, e.g. "5s"')
    hostname = agent.get("hostname")
    if isinstance(hostname, str) and hostname.strip() and not valid_hostname(hostname):
        check.error(
            "agent.hostname", f"not a host name: {hostname!r}; it goes into Message-ID and EHLO: write it like web01.example.com"
        )
    tz = agent.get("timezone")
    if tz:
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(tz)
        except Exception:
            check.error("agent.timezone", f'unknown IANA timezone {tz!r}; use a name like "Europe/Berlin" or "UTC"')


def _check_mail(mail: dict[str, Any], check: Checker, config: Any) -> None:
    addresses = [("mail.from", mail.get("from")), *((f"mail.to[{i}]", a) for i, a in enumerate(mail.get("to") or []))]
    for where, address in addresses:
        if isinstance(address, str) and not valid_address(address):  # a wrong type is reported already
            check.error(where, f"not a valid mail address: {address!r}; write it as user@example.com")


AGENT = Section("agent", AGENT_OPTIONS, check=_check_agent)
MAIL = Section("mail", MAIL_OPTIONS, check=_check_mail)
