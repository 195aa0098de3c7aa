"""IPv6 clients of a real relay, run inside a network namespace of its own (``unshare -n``).

The namespace's loopback gets the private network fd00:19::/48 as local addresses, so a
client may take any source address in fd00:19:0:1::/64 or fd00:19:0:2::/64 (two sites).
Nothing of the host's network is touched; the namespace ends with this process.

    unshare -n python -m tests.relay_netns FOLDER WORKERS

prints one JSON object: what each client was answered.
"""

from __future__ import annotations

import base64
import json
import smtplib
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tests.peers import free_port
from tests.relay_peers import RelayProcess, relay_config, self_signed, users_file

PASSWORD = "correct horse battery"
SITE_A = "fd00:19:0:1::"  # one /64: one client, whatever address in it
SITE_B = "fd00:19:0:2::"  # another /64
SERVER = "fd00:19::1"


def setup_network() -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-6", "route", "add", "local", "fd00:19::/48", "dev", "lo"], check=True)
    # any address of the routed prefix may be a source, without adding each one
    Path("/proc/sys/net/ipv6/ip_nonlocal_bind").write_text("1\n")


def banner(port: int, source: str, held: list[socket.socket]) -> int:
    conn = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    conn.settimeout(10)
    conn.bind((source, 0))
    conn.connect((SERVER, port))
    held.append(conn)
    return int(conn.makefile("rb").readline()[:3])


def login(port: int, source: str, password: str) -> int:
    """One AUTH PLAIN over STARTTLS from ``source``; its reply code."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = smtplib.SMTP(SERVER, port, local_hostname="client.test", timeout=20, source_address=(source, 0))
    try:
        client.starttls(context=context)
        client.ehlo()
        token = base64.b64encode(f"\0alice\0{password}".encode()).decode()
        return client.docmd("AUTH", f"PLAIN {token}")[0]
    finally:
        try:
            client.close()
        except OSError:
            pass


def run_relay(folder: Path, options: dict[str, Any]) -> RelayProcess:
    folder.mkdir(parents=True)
    port = free_port()
    unused_sink = SimpleNamespace(host="127.0.0.1", port=9)  # nothing is delivered here
    config = relay_config(folder, unused_sink, port, {**options, "also_listen": [f"[{SERVER}]:{port}"]})  # type: ignore[arg-type]
    return RelayProcess(config, port).start()


def main() -> None:
    folder, workers = Path(sys.argv[1]), int(sys.argv[2])
    setup_network()
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = self_signed(folder)
    users = users_file(folder, {"alice": PASSWORD})
    base = {
        "allow": ["127.0.0.1/32"],
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users),
        "max_connections_per_client": 3,
        "max_auth_failures": 3,
        "workers": workers,
    }
    result: dict[str, Any] = {}
    for name, extra in (("per_64", {}), ("per_address", {"ipv6_prefix": 128})):
        relay = run_relay(folder / name, {**base, **extra})
        held: list[socket.socket] = []
        try:
            result[name] = {
                "site_a": [banner(relay.port, f"{SITE_A}{i:x}", held) for i in range(1, 5)],
                "site_b": banner(relay.port, f"{SITE_B}1", held),
            }
            for conn in held:
                conn.close()
            if name == "per_64":
                result[name]["guesses"] = [login(relay.port, f"{SITE_A}{0x10 + i:x}", f"guess {i}") for i in range(3)]
                result[name]["right_password_same_64"] = login(relay.port, f"{SITE_A}20", PASSWORD)
                result[name]["right_password_other_64"] = login(relay.port, f"{SITE_B}20", PASSWORD)
        finally:
            for conn in held:
                conn.close()
            result[name]["exit"] = relay.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
