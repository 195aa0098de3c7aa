"""IPv6 clients are counted per network (``ipv6_prefix``, /64 by default), not per address.

Against a real relay in a network namespace of its own, with clients from a private
/64 (``tests/relay_netns.py``); the policy's part is checked on ::1-style units too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from alertmail.plugins.relay.policy import RelayPolicy, client_key
from tests.relay_peers import REPO, private_folder


def namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None or not shutil.which("ip"):
        return False
    probe = subprocess.run([unshare, "-n", "ip", "link", "set", "lo", "up"], capture_output=True, timeout=10)
    return probe.returncode == 0


@pytest.mark.peers
@pytest.mark.skipif(not namespaces_work(), reason="needs root to make a network namespace (unshare -n)")
@pytest.mark.parametrize("workers", [0, 2])
def test_clients_of_one_ipv6_64_share_the_per_client_limits(workers):
    folder = private_folder("relay-netns-")
    result = subprocess.run(
        ["unshare", "-n", sys.executable, "-m", "tests.relay_netns", str(folder / "run"), str(workers)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    per_64 = seen["per_64"]
    # max_connections_per_client = 3: four addresses of one /64 are one client
    assert per_64["site_a"] == [220, 220, 220, 421], seen
    assert per_64["site_b"] == 220, seen  # another /64 is another client
    # max_auth_failures = 3: guesses from three addresses of one /64 lock the whole /64 out
    assert per_64["guesses"] == [535, 535, 421], seen
    assert per_64["right_password_same_64"] == 421, seen
    assert per_64["right_password_other_64"] == 235, seen
    # ipv6_prefix = 128 counts single addresses again
    assert seen["per_address"]["site_a"] == [220, 220, 220, 220], seen
    assert per_64["exit"] == 0 and seen["per_address"]["exit"] == 0


@pytest.mark.parametrize(
    "ip, prefix, key",
    [
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"),
        ("::1", 64, "::/64"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("::ffff:192.0.2.7", 64, "192.0.2.7"),  # an IPv4-mapped client is its IPv4 address
        ("192.0.2.7", 64, "192.0.2.7"),
        ("not an address", 64, "not_an_address"),
    ],
)
def test_client_key_is_the_ipv6_network_of_the_prefix(ip, prefix, key):
    assert client_key(ip, prefix) == key
    assert RelayPolicy(hostname="relay.test", ipv6_prefix=prefix).client_key(ip) == key
