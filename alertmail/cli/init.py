"""`alertmail init`: a commented starter config with rules for this machine.

Every table is written with tomli-w; the comments between them are ours. The
result always parses with tomllib (a test holds us to that).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
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


def _device_of(path: str) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _mounts() -> list[str]:
    """One mount point per filesystem: a bind mount of one already listed (``/run/netns`` of ``/``) is left out."""
    import psutil

    seen: list[str] = []
    devices: set[int] = set()
    parts = [p for p in psutil.disk_partitions(all=False) if p.fstype not in PSEUDO_FS]
    # The shortest path first: "/" is the one kept, not a bind mount of it listed before it.
    for part in sorted(parts, key=lambda p: (len(p.mountpoint), p.mountpoint)):
        if part.mountpoint.startswith(("/snap/", "/proc", "/sys")) or part.mountpoint in seen:
            continue
        device = _device_of(part.mountpoint)
        if device is not None and device in devices:
            continue  # the same filesystem seen again: its usage is the same, a second rule only doubles mails
        if device is not None:
            devices.add(device)
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


NAGIOS_PLUGINS = Path("/usr/lib/nagios/plugins")
NODE_EXPORTER = ("127.0.0.1", 9100)


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def _serves_metrics(host: str, port: int) -> bool:
    """True when an HTTP server on host:port answers /metrics with the Prometheus text format."""
    import http.client

    try:
        conn = http.client.HTTPConnection(host, port, timeout=1.0)
        conn.request("GET", "/metrics", headers={"Accept": "text/plain;version=0.0.4"})
        response = conn.getresponse()
        head = response.read(65536).decode("utf-8", "replace")
        conn.close()
    except (OSError, http.client.HTTPException):
        return False
    return response.status == 200 and ("# TYPE " in head or "# HELP " in head)


def _nagios_checks(folder: Path) -> list[dict[str, Any]]:
    """Checks worth proposing among the plugins installed in ``folder``."""

    def have(name: str) -> bool:
        return os.access(folder / name, os.X_OK)

    checks: list[dict[str, Any]] = []
    if have("check_procs"):
        checks.append({"name": "zombies", "command": [str(folder / "check_procs"), "-s", "Z", "-w", "5", "-c", "20"]})
    if have("check_users"):
        checks.append({"name": "users", "command": [str(folder / "check_users"), "-w", "5", "-c", "10"]})
    for name, port, plugin in (("smtp", 25, "check_smtp"), ("ssh", 22, "check_ssh")):
        if have(plugin) and _listens("127.0.0.1", port):
            checks.append({"name": name, "command": [str(folder / plugin), "-H", "127.0.0.1"], "timeout": "10s"})
    return checks


def _inline(value: Any) -> str:
    """One value as inline TOML: a string, a list of them, or a table of them."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return tomli_w.dumps({"v": value})[4:].strip()


def _checks_table(checks: list[dict[str, Any]]) -> str:
    """``[probes.nagios]`` with one line per check, as the docs write it."""
    lines = ["[probes.nagios]", 'interval = "1m"', "checks = ["]
    lines += [f"  {_inline(check)}," for check in checks]
    return "\n".join([*lines, "]"]) + "\n"


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


def starter_config(nagios_plugins: Path = NAGIOS_PLUGINS, node_exporter: tuple[str, int] = NODE_EXPORTER) -> str:
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
    checks = _nagios_checks(nagios_plugins) if nagios_plugins.is_dir() else []
    if checks:
        parts.append(
            _block(
                f"Nagios plugins found in {nagios_plugins}: each check's exit status is nagios.status{{check}}\n"
                "(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN) and its performance data nagios.perfdata{check,label};\n"
                "the plugin's text goes into the mail. Add any plugin: an argv list, no shell (docs/metrics.md).",
                {},
            )
            + _checks_table(checks)
        )
        rules.append(
            {
                "name": "nagios-critical",
                "metric": "nagios.status",
                "above": 1,
                "for": "2m",
                "severity": "critical",
                "description": "a Nagios check is CRITICAL or UNKNOWN",
            }
        )
    host, port = node_exporter
    if _serves_metrics(host, port):
        url = f"http://{host}:{port}/metrics"
        parts.append(
            _block(
                f"A Prometheus exporter answers on {url} (node_exporter's port): every series it offers\n"
                "is a metric scrape.<name>, e.g. scrape.node_load1, with its labels plus target.\n"
                "files = [...] reads textfile-collector *.prom files directly (docs/metrics.md).",
                {"probes": {"scrape": {"interval": "30s", "targets": [{"name": "node", "url": url}]}}},
            )
        )
        rules.append({"name": "exporter-down", "metric": "scrape.up", "below": 1, "for": "2m", "severity": "warning"})
    parts.append(
        _block(
            "Threshold rules. above/below: the threshold; clear: the recovery threshold;\n"
            "for: how long it must hold; repeat: reminder while firing.",
            {"rules": rules},
        )
    )
    parts.append(_file_check_example())
    return "\n".join(parts)
