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


# Well-known ports worth a check: web servers get an http check, mail servers an smtp one, the rest tcp.
HTTP_PORTS = {80: "http", 8000: "http", 8008: "http", 8080: "http", 8081: "http", 8888: "http", 443: "https", 8443: "https"}
SMTP_PORTS = {25: "smtp", 587: "submission"}
TCP_PORTS = {
    21: "ftp",
    22: "ssh",
    53: "dns",
    110: "pop3",
    143: "imap",
    389: "ldap",
    465: "smtps",
    636: "ldaps",
    993: "imaps",
    995: "pop3s",
    1433: "mssql",
    2049: "nfs",
    3306: "mysql",
    5432: "postgresql",
    5672: "amqp",
    6379: "redis",
    9200: "elasticsearch",
    11211: "memcached",
    27017: "mongodb",
}
_ANY = {"0.0.0.0", "::", ""}


def _local(address: str) -> str | None:
    """The address to check a listener on: loopback as is, "any" as 127.0.0.1; None for other addresses."""
    import ipaddress

    if address in _ANY:
        return "::1" if address == "::" else "127.0.0.1"
    try:
        ip = ipaddress.ip_address(address.split("%", maxsplit=1)[0])
    except ValueError:
        return None
    return str(ip) if ip.is_loopback else None


def _is_alertmail(pid: int | None) -> bool:
    """True for a listener of an alertmail process (its SMTP relay, its own endpoints): no check of itself."""
    if not pid:
        return False
    import psutil

    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return False
    words = [os.path.basename(word) for word in argv[:3]]
    return bool(words) and (words[0] == "alertmail" or "alertmail" in words[1:2] or argv[1:3] == ["-m", "alertmail"])


def _proc_net_listeners() -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets in LISTEN state, read from /proc/net/tcp and tcp6 (Linux)."""
    import ipaddress

    out: list[tuple[str, int]] = []
    for name in ("tcp", "tcp6"):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 4 or fields[3] != "0A":  # 0A: TCP_LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            out.append((str(ipaddress.ip_address(raw)), int(hex_port, 16)))
    return out


def listeners() -> list[tuple[str, int]]:
    """(address to check, port) of the TCP services listening on loopback or any address of this host.

    psutil.net_connections where it may read them, else /proc/net/tcp{,6}; alertmail's own
    listeners are left out when their process is known.
    """
    import psutil

    found: list[tuple[str, int, int | None]] = []
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr:
                found.append((conn.laddr.ip, conn.laddr.port, conn.pid))
    except (psutil.Error, OSError):
        found = [(address, port, None) for address, port in _proc_net_listeners()]
    out: list[tuple[str, int]] = []
    for address, port, pid in found:
        host = _local(address)
        if host is not None and (host, port) not in out and not _is_alertmail(pid):
            out.append((host, port))
    return sorted(out, key=lambda item: (item[1], item[0]))


def _service_checks(found: list[tuple[str, int]]) -> str:
    """Commented ``http``/``tcp``/``smtp`` checks, with a rule on each probe's ``up``, for the well-known ports in ``found``."""
    probes: dict[str, list[dict[str, Any]]] = {"http": [], "smtp": [], "tcp": []}
    seen: set[int] = set()
    for host, port in found:
        if port in seen:
            continue  # the same port on 127.0.0.1 and ::1: one check
        seen.add(port)
        where = f"[{host}]" if ":" in host else host
        if port in HTTP_PORTS:
            scheme = HTTP_PORTS[port]
            probes["http"].append({"name": f"{scheme}-{port}", "url": f"{scheme}://{where}:{port}/"})
        elif port in SMTP_PORTS:
            probes["smtp"].append({"name": f"{SMTP_PORTS[port]}-{port}", "host": host, "port": port})
        elif port in TCP_PORTS:
            probes["tcp"].append({"name": f"{TCP_PORTS[port]}-{port}", "host": host, "port": port})
    probes = {name: checks for name, checks in probes.items() if checks}
    if not probes:
        return ""
    rules = [
        {
            "name": f"{name}-down",
            "metric": f"{name}.up",
            "below": 1,
            "for": "2m",
            "severity": "critical",
            "description": f"a service the {name} probe checks does not answer",
        }
        for name in probes
    ]
    example = {"probes": {name: {"checks": checks} for name, checks in probes.items()}, "rules": rules}
    head = (
        "Services listening on this host: is each still answering? Keep the checks you want\n"
        "and remove the leading '# ' of the lines below (docs/metrics.md, service probes).\n"
        "http.up wants a status below 400 at the URL: name a page that answers so (or set\n"
        "expect_status), and for https the host its certificate names.\n"
    )
    lines = [f"# {line}" if line else "#" for line in (head + "\n" + tomli_w.dumps(example)).splitlines()]
    return "\n".join(lines) + "\n"


def starter_config(
    nagios_plugins: Path = NAGIOS_PLUGINS,
    node_exporter: tuple[str, int] = NODE_EXPORTER,
    found: list[tuple[str, int]] | None = None,
) -> str:
    """The starter config; ``found`` is the listeners to propose checks for (by default, this host's)."""
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
    services = _service_checks(listeners() if found is None else found)
    if services:
        parts.append(services)
    parts.append(_file_check_example())  # last: its lines, once uncommented, run to the end
    return "\n".join(parts)


WRAPPER = "/usr/local/sbin/alertmail-sendmail"


def sendmail_instructions(python: str, module: str, config: str, state_dir: str, current: str | None) -> str:
    """How to make alertmail's sendmail the host's /usr/sbin/sendmail, and what it replaces.

    The link points at a small Python script (``alertmail.cli.sendmail.wrapper``) that imports
    ``module`` (alertmail/cli/sendmail.py) with ``python -I -S``: on the standard library alone,
    without the site-packages and the ``re`` the ``alertmail-sendmail`` console script loads.
    """
    from alertmail.cli.sendmail import wrapper

    program = WRAPPER
    script = wrapper(python, module, None if config == "/etc/alertmail/config.toml" else config)
    write_script = "printf '%s\\n' " + " ".join("'" + line.replace("'", "'\\''") + "'" for line in script.splitlines())
    if current is None:
        replaces = "There is no /usr/sbin/sendmail yet: programs that mail (cron, mail) have had nowhere to send it."
    else:
        replaces = (
            f"It replaces /usr/sbin/sendmail, now {current}: cron, mail(1), mdadm, smartd, unattended-upgrades\n"
            "and logwatch will hand their mail to alertmail's queue instead ([sendmail].route, else [mail].route,\n"
            "with the queue's retries and badmail). Keep that MTA's daemon only if it still has other work (receiving mail)."
        )
    return f"""\
alertmail sendmail: the host's sendmail(8) for every program that mails.

{replaces}

As root:

  # 1. The maildrop: anyone may drop mail in, only the agent's user can read or list it.
  install -d -o alertmail -g alertmail -m 3733 {state_dir}/maildrop

  # 2. The config, readable by every user who mails (it holds no secrets: those are *_env / *_file).
  chmod 644 {config}

  # 3. A wrapper that submits on the standard library alone (python -I -S): faster than the
  #    alertmail-sendmail console script, which starts with site-packages.
  {write_script} > {program}
  chmod 755 {program}
  {python} -I -m py_compile {module}   # its bytecode, so that no mail waits for it to compile

  # 4a. Debian, Ubuntu: keep the MTA package's file aside, so its upgrades do not put it back.
  dpkg-divert --local --rename --divert /usr/sbin/sendmail.before-alertmail --add /usr/sbin/sendmail
  ln -s {program} /usr/sbin/sendmail
  # 4b. Fedora, RHEL, SUSE (sendmail is the "mta" alternative there):
  update-alternatives --install /usr/sbin/sendmail mta {program} 90
  # 4c. Anywhere else, a plain symlink (an MTA upgrade may replace it):
  ln -sf {program} /usr/sbin/sendmail

  # Check: a mail through the configured route.
  echo "sendmail works" | /usr/sbin/sendmail -i root

The wrapper needs a Python every user may run. Submissions use {config}
(ALERTMAIL_CONFIG or -C FILE choose another); exit codes are sysexits(3):
0 submitted, 64 usage or no recipients, 73 maildrop not writable, 75 try again, 78 config.
Undo: rm /usr/sbin/sendmail && dpkg-divert --rename --remove /usr/sbin/sendmail
(or: update-alternatives --remove mta {program}).
"""
