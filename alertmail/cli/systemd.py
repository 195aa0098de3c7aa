"""``alertmail init --systemd``: the unit that runs the agent as systemd expects.

``contrib/systemd/alertmail.service`` is this unit with the default paths; a test keeps
the two the same. The agent speaks sd_notify (``alertmail.sdnotify``): ``Type=notify``
waits for READY, ``WatchdogSec`` restarts a hung event loop.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_EXEC = "/usr/local/bin/alertmail"
DEFAULT_CONFIG = "/etc/alertmail/config.toml"

UNIT = """\
# alertmail: the agent (probes, rules, mail) and, when [relay] enabled = true, the relay.
# The config's [agent] state_dir must be /var/lib/alertmail (StateDirectory below).
# Create the user first: systemd-sysusers alertmail.sysusers, or
#   useradd --system --home-dir /var/lib/alertmail --shell /usr/sbin/nologin alertmail
[Unit]
Description=alertmail threshold-alert mailer
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec} run --config {config}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
# The agent pings from its event loop at half this interval; a hung loop is restarted.
WatchdogSec=30s
# SIGTERM: the agent stops within 10 s with everything accepted on disk.
TimeoutStopSec=30s
User=alertmail
Group=alertmail
StateDirectory=alertmail
StateDirectoryMode=0750
ConfigurationDirectory=alertmail
UMask=0027

# Sandboxing a mail daemon can live with.
ProtectSystem=strict
# Add the pickup folder of another MTA here when a route writes into it.
ReadWritePaths=/var/lib/alertmail
ProtectHome={protect_home}
PrivateTmp={private_tmp}
PrivateDevices=yes
NoNewPrivileges=yes
# Only to bind a relay on port 25 as this user.
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
AmbientCapabilities=CAP_NET_BIND_SERVICE
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

SYSUSERS = 'u alertmail - "alertmail agent" /var/lib/alertmail\n'


# Folders ProtectHome=yes hides from the service, and those PrivateTmp=yes replaces with empty ones.
HOME_FOLDERS = ("/home", "/root", "/run/user")
TMP_FOLDERS = ("/tmp", "/var/tmp")


def unit(command: Sequence[str] = (DEFAULT_EXEC,), config: str = DEFAULT_CONFIG, **sandbox: str) -> str:
    """The unit text for this ``alertmail`` command and config file (``sandbox``: ProtectHome, PrivateTmp)."""
    fit = {"ProtectHome": "yes", "PrivateTmp": "yes", **sandbox}
    return UNIT.format(
        exec=shlex.join(command), config=shlex.quote(config), protect_home=fit["ProtectHome"], private_tmp=fit["PrivateTmp"]
    )


def _under(path: str, folders: Sequence[str]) -> str | None:
    for folder in folders:
        if path == folder or path.startswith(folder.rstrip("/") + "/"):
            return folder
    return None


def sandbox_fit(paths: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """ProtectHome and PrivateTmp settings under which the service can reach ``paths`` (the program,
    its venv, the config), and a warning for each one the default sandbox would have hidden."""
    fit: dict[str, str] = {}
    warnings: list[str] = []
    for path in dict.fromkeys(paths):
        if (home := _under(path, HOME_FOLDERS)) and "ProtectHome" not in fit:
            fit["ProtectHome"] = "read-only"
            warnings.append(
                f"{path} is under {home}, which ProtectHome=yes hides from the service: the unit says "
                "ProtectHome=read-only instead; install alertmail and its config outside home folders "
                "(e.g. python3 -m venv /opt/alertmail, /etc/alertmail/config.toml) to keep ProtectHome=yes"
            )
        if (tmp := _under(path, TMP_FOLDERS)) and "PrivateTmp" not in fit:
            fit["PrivateTmp"] = "no"
            warnings.append(
                f"{path} is under {tmp}, which PrivateTmp=yes replaces with an empty folder for the service: "
                f"the unit says PrivateTmp=no instead; {tmp} may be cleared at boot, so install alertmail and its "
                "config elsewhere (e.g. python3 -m venv /opt/alertmail, /etc/alertmail/config.toml)"
            )
    return fit, warnings


def paths_to_reach(command: Sequence[str], config: str) -> list[str]:
    """What the service must read to start: the program, the Python environment it runs in, the config."""
    out = [command[0], sys.prefix, config]
    if command[0] == sys.executable:
        out.append(str(Path(sys.executable).resolve()))
    return [os.path.abspath(p) for p in out]


def this_command() -> list[str]:
    """How to start the alertmail that is running now: its script beside the interpreter, or ``python -m``."""
    script = Path(sys.executable).with_name("alertmail")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    found = shutil.which("alertmail")
    return [found] if found else [sys.executable, "-m", "alertmail"]
