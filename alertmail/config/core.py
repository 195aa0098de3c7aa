"""The sections of the agent as a whole: ``[agent]`` (the process) and ``[mail]`` (every mail it writes)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alertmail.config.schema import Checker, Section, Settings, setting, valid_hostname
from alertmail.units import valid_address


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentSettings(Settings):
    """``[agent]``: the process."""

    state_dir: Path = setting("path", "var", help="folder for pickup/, queue/, badmail/, logs/")
    interval: float = setting("duration", 10.0, minimum=0.1, help="default probe interval")
    resolution: float = setting(
        "duration",
        5.0,
        help="how often time-driven checks run: reminders, group and digest flushes, absent series, silence changes",
    )
    plugin_dirs: list[str] = setting("list", [], help="folders of single-file plugins")
    timezone: str = setting("str", "UTC", nonempty=True, help="IANA timezone for times in mails")
    hostname: str | None = setting("str", None, nonempty=True, help="host name shown in mails; default: this machine's")
    probe_timeout: float | None = setting("duration", None, minimum=0.001, help="longest a probe may run; default: its interval")
    disable_plugins: list[str] = setting("list", [], help="plugin names not to load")
    log_level: str = setting("str", "info", choices=("debug", "info", "warning", "error"))
    event_loop: str = setting(
        "str",
        "auto",
        choices=("auto", "asyncio", "uvloop"),
        help="the agent's event loop: auto = uvloop when installed and a service (the relay) is enabled, "
        "asyncio otherwise (the idle agent stays small)",
    )
    log_format: str = setting(
        "str",
        "text",
        choices=("text", "json"),
        help="text (with times; journald's form under systemd) or json, one object a line",
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MailSettings(Settings):
    """``[mail]``: every mail the agent writes."""

    sender: str = setting("str", "alertmail@localhost", key="from", help="From address of alert mails")
    to: list[str] = setting("list", [], addresses=True, help="default recipients")
    route: list[str] = setting(
        "list",
        ["pickup"],
        nonempty=True,
        help="ordered chain of transports: the next one takes what the one before could not deliver",
    )
    also_route: list[str] = setting(
        "list",
        [],
        help="a second chain each alert mail is also queued on, as its own message with its own "
        'retries: route = ["smtp"] and also_route = ["alertmanager"] send to both',
    )
    subject_prefix: str = setting("str", "", help="text put before every subject")
    templates: Path | None = setting("path", None, help="folder of templates overriding alert.txt.j2 / alert.html.j2")
    charts: str = setting(
        "str",
        "in-process",
        choices=("in-process", "subprocess", "off"),
        help="where charts are drawn: in-process (Pillow, loaded with the first alert), subprocess (a child per mail), off",
    )


def _check_agent(agent: AgentSettings, check: Checker, config: object) -> None:
    if isinstance(agent.resolution, int | float) and not 0.1 <= agent.resolution <= 60:
        check.error("agent.resolution", 'must lie between 100ms and 60s, e.g. "5s"')
    hostname = agent.hostname
    if isinstance(hostname, str) and hostname.strip() and not valid_hostname(hostname):
        check.error(
            "agent.hostname", f"not a host name: {hostname!r}; it goes into Message-ID and EHLO: write it like web01.example.com"
        )
    tz = agent.timezone
    if isinstance(tz, str) and tz:
        try:
            import zoneinfo

            zoneinfo.ZoneInfo(tz)
        except Exception:
            check.error("agent.timezone", f'unknown IANA timezone {tz!r}; use a name like "Europe/Berlin" or "UTC"')


def _check_mail(mail: MailSettings, check: Checker, config: object) -> None:
    to = mail.to if isinstance(mail.to, list) else []
    addresses = [("mail.from", mail.sender), *((f"mail.to[{i}]", a) for i, a in enumerate(to))]
    for where, address in addresses:
        if isinstance(address, str) and not valid_address(address):  # a wrong type is reported already
            check.error(where, f"not a valid mail address: {address!r}; write it as user@example.com")


AGENT = Section("agent", AgentSettings, check=_check_agent)
MAIL = Section("mail", MailSettings, check=_check_mail)
