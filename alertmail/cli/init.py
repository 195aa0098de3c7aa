"""`alertmail init`: a commented starter config with rules for this machine.

Every table is written with tomli-w; the comments between them are ours. The
result always parses with tomllib (a test holds us to that).
"""

from __future__ import annotations

import socket
from typing import Any

import tomli_w

PSEUDO_FS = {
    "tmpfs",
    "devtmpfs",
    "overlay",
    "squashfs",
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "autofs",
    "nsfs",
    "tracefs",
    "fuse.lxcfs",
}


def _mounts() -> list[str]:
    import psutil

    seen = []
    for part in psutil.disk_partitions(all=False):
        if part.fstype in PSEUDO_FS or part.mountpoint.startswith(("/snap/", "/proc", "/sys")):
            continue
        if part.mountpoint not in seen:
            seen.append(part.mountpoint)
    return seen or ["/"]


def _interfaces() -> list[str]:
    import psutil

    return sorted(name for name, stats in psutil.net_if_stats().items() if stats.isup and name != "lo")


def _slug(text: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in text).strip("-")
    return out or "root"


def _block(comment: str, data: dict[str, Any]) -> str:
    lines = [f"# {line}" if line else "#" for line in comment.splitlines()]
    return "\n".join(lines) + "\n" + tomli_w.dumps(data)


def _file_check_example() -> str:
    """A ``file`` check and its rules, commented out: the path is an example to replace."""
    example = {
        "probes": {"file": {"checks": [{"name": "db-backup", "path": "/var/backups/db-*.sql.gz"}]}},
        "rules": [
            {"name": "backup-missing", "metric": "file.exists", "labels": {"check": "db-backup"}, "below": 1},
            {
                "name": "backup-stale",
                "metric": "file.age_seconds",
                "labels": {"check": "db-backup"},
                "above": 93600,
                "description": "the newest backup is more than 26 hours old",
            },
        ],
    }
    head = (
        "Files: is the nightly backup there, and fresh? Name your file or glob (absolute)\n"
        "and remove the leading '# ' of the lines below (docs/metrics.md, the file probe).\n"
    )
    lines = [f"# {line}" if line else "#" for line in (head + "\n" + tomli_w.dumps(example)).splitlines()]
    return "\n".join(lines) + "\n"


def starter_config() -> str:
    import psutil

    cores = psutil.cpu_count() or 1
    host = socket.gethostname()
    parts = [
        f"# alertmail configuration for {host}, written by `alertmail init`.\n"
        "# Check it with `alertmail check`, try the probes with `alertmail probe`,\n"
        "# then run `alertmail run`. Durations: 30s, 5m, 2h, 1d.\n",
        _block(
            "Where queue/, pickup/, badmail/ and logs/ live (relative to this file),\n"
            "how often probes run, and the timezone used in mails. Single-file plugins:\n"
            'plugin_dirs = ["plugins.d"] (the folder must exist).',
            {"agent": {"state_dir": "var", "interval": "10s", "timezone": "UTC"}},
        ),
        _block(
            "Who gets the mail and how it leaves: an ordered chain of transports.\n"
            '"pickup" writes .eml files into var/pickup; add [transports.smtp] or\n'
            "[transports.mx] and put them in the route to send real mail.",
            {
                "mail": {
                    "from": f"alertmail@{host if '.' in host else 'localhost'}",
                    "to": ["root@localhost"],
                    "route": ["pickup"],
                }
            },
        ),
        _block(
            "The first alert goes out at once; alerts that follow within group_wait come as one mail.",
            {"notify": {"group_wait": "30s"}},
        ),
    ]
    rules: list[dict[str, Any]] = [
        {"name": "cpu-busy", "metric": "cpu.percent", "above": 90, "clear": 75, "for": "5m", "severity": "warning"},
        {"name": "memory-low", "metric": "memory.used_percent", "above": 90, "clear": 85, "for": "2m", "severity": "critical"},
        {"name": "swap-heavy", "metric": "swap.used_percent", "above": 50, "clear": 40, "for": "10m", "severity": "warning"},
        {
            "name": "load-high",
            "metric": "load.5_per_core",
            "above": 2.0,
            "clear": 1.5,
            "for": "10m",
            "severity": "warning",
            "description": f"5-minute load per core ({cores} cores)",
        },
    ]
    for mount in _mounts():
        rules.append(
            {
                "name": f"disk-{_slug(mount)}-full",
                "metric": "disk.used_percent",
                "labels": {"mount": mount},
                "above": 90,
                "clear": 85,
                "for": "2m",
                "repeat": "4h",
                "severity": "critical",
            }
        )
    for nic in _interfaces():
        rules.append(
            {
                "name": f"net-{_slug(nic)}-errors",
                "metric": "net.recv_errors_per_s",
                "labels": {"interface": nic},
                "above": 1,
                "for": "5m",
                "severity": "warning",
            }
        )
    parts.append(
        _block(
            "Threshold rules. above/below: the threshold; clear: the recovery threshold;\n"
            "for: how long it must hold; repeat: reminder while firing.",
            {"rules": rules},
        )
    )
    parts.append(_file_check_example())
    return "\n".join(parts)
