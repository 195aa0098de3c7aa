"""rspamd, the filter many receivers run beside or instead of SpamAssassin, scores every kind
of mail at most 0 when the host's name is short (``[agent] hostname`` at its default on a
host called "vm") and ``[mail] from`` is at a real domain.

rspamd runs in the foreground on loopback ports of its own, its workers bound to 127.0.0.1,
its DNS lookups sent to a dnsmasq on loopback that knows no names (so network checks find
nothing and cost nothing), its fuzzy and map fetching off. Each message is scored with
``rspamc`` as received from 127.0.0.1 with an EHLO of a fully qualified name.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time

import pytest

from tests.mail_kinds import OPS, build_all
from tests.peers import Dnsmasq, free_port, need

pytestmark = [
    pytest.mark.peers,
    # Seen here: under libfaketime (.ci/next-year) rspamd never starts listening within 180 s.
    pytest.mark.skipif(
        "faketime" in os.environ.get("LD_PRELOAD", ""), reason="rspamd does not start under libfaketime; scored on the real clock"
    ),
]
SENDER = "alertmail@example.com"
SHORT_HOSTNAME = "vm"
# DATE_IN_PAST: the kinds are written at a fixed time (tests/mail_kinds.py T0) so that they
# are the same on every run; the receiver of real mail sees a Date of now.
FIXED_CLOCK = {"DATE_IN_PAST"}


def _need_rspamd() -> str:
    rspamd = need("rspamd")
    if shutil.which("rspamc") is None:
        message = "rspamc is not installed (Debian: rspamd); .ci/peers installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return rspamd


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    binary = _need_rspamd()
    folder = tmp_path_factory.mktemp("rspamd")
    with Dnsmasq(folder / "dns") as dns:
        ports = {name: free_port() for name in ("normal", "controller", "proxy")}
        local = folder / "local.d"
        local.mkdir()
        for worker, port in ports.items():
            (local / f"worker-{worker}.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = 1;\n')
        (local / "worker-fuzzy.inc").write_text("enabled = false;\n")
        (local / "options.inc").write_text(f'dns {{ nameserver = ["{dns.address}"]; timeout = 1s; retransmits = 1; }}\n')
        (local / "logging.inc").write_text('type = "console";\nlevel = "error";\n')
        for module in ("fuzzy_check", "rbl", "surbl", "emails", "url_redirector", "phishing", "maps_stats"):
            (local / f"{module}.conf").write_text("enabled = false;\n")
        for sub in ("run", "db", "log"):
            (folder / sub).mkdir()
        user = ["-u", "root", "-g", "root"] if os.geteuid() == 0 else []
        proc = subprocess.Popen(
            [
                binary,
                "-f",
                "-i",
                *user,
                f"--var=LOCAL_CONFDIR={folder}",
                f"--var=RUNDIR={folder / 'run'}",
                f"--var=DBDIR={folder / 'db'}",
                f"--var=LOGDIR={folder / 'log'}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 180  # hyperscan compiles the rules at the first start
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"rspamd exited: {proc.stderr.read().decode() if proc.stderr else ''}")
                try:
                    with socket.create_connection(("127.0.0.1", ports["normal"]), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("rspamd does not listen after 180 s") from None
                    time.sleep(0.5)
            yield f"127.0.0.1:{ports['normal']}"
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def score(server: str, path, envelope_from: str) -> tuple[float, dict[str, float]]:
    args = ["rspamc", "-h", server, "-j", "-i", "127.0.0.1", "--helo", "mail.example.com", "-F", envelope_from, "-r", OPS]
    for _ in range(3):  # the normal worker may still be loading its maps right after start
        out = subprocess.run([*args, str(path)], capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip():
            break
        time.sleep(2)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    symbols = {name: float(s.get("score", 0.0)) for name, s in result.get("symbols", {}).items()}
    return float(result["score"]), symbols


def test_every_kind_of_mail_scores_at_most_zero_from_a_host_with_a_short_name(rspamd, tmp_path):
    mails = build_all(tmp_path / "state", sender=SENDER, hostname=SHORT_HOSTNAME)
    report = {}
    for kind, data in mails.items():
        path = tmp_path / f"{kind.replace(' ', '-')}.eml"
        path.write_bytes(data)
        total, symbols = score(rspamd, path, "" if kind == "delivery-status report" else SENDER)
        counted = total - sum(symbols.get(name, 0.0) for name in FIXED_CLOCK)
        report[kind] = (round(counted, 2), {k: v for k, v in symbols.items() if v})
    print(json.dumps(report, indent=1))
    for kind, (counted, symbols) in report.items():
        assert "MID_RHS_NOT_FQDN" not in symbols, kind
        assert counted <= 0.0, f"{kind}: {counted} {symbols}"
