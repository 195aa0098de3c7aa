"""A full log disk changes no SMTP reply and no delivery outcome (issue 8, section 3).

The relay's ``logs/`` is a full 64 KB tmpfs when the tests run as root, else a read-only
folder; the relay runs as a real process and delivers to smtp-sink.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from tests.peers import SmtpSink, swaks
from tests.relay_peers import message_id, private_folder, received, start_relay

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-logdisk-sink-") / "dump") as sink:
        yield sink


def send(port: int, *args: str, mid: str) -> str:
    result = swaks("--server", f"127.0.0.1:{port}", "--from", "app@client.test", "--header", f"Message-Id: {mid}", *args)
    return result.stdout + result.stderr


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder``; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"x" * 4096)
        except OSError:
            pass
    return filler


@pytest.fixture
def full_logs(tmp_path):
    """``logs/`` of a relay state folder on a full 64 KB tmpfs (root), else read-only."""
    logs = tmp_path / "relay" / "var" / "logs"
    logs.mkdir(parents=True)
    if os.geteuid() == 0:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(logs)], check=True)
        yield logs, fill(logs)
        subprocess.run(["umount", "-l", str(logs)], check=False)
    else:
        os.chmod(logs, 0o500)
        yield logs, None
        os.chmod(logs, 0o700)


def test_full_log_disk_changes_no_reply_and_loses_no_mail(full_logs, sink):
    logs, filler = full_logs
    relay = start_relay(logs.parent.parent, sink)
    try:
        mids = [message_id() for _ in range(8)]
        with smtplib.SMTP("127.0.0.1", relay.port, local_hostname="client.test", timeout=20) as client:
            assert client.ehlo()[0] == 250
            for mid in mids:
                time.sleep(0.3)  # a slow client: the log is flushed between its commands
                assert client.mail("app@client.test")[0] == 250
                time.sleep(0.3)
                assert client.rcpt("bob@example.test")[0] == 250
                code, reply = client.data(f"Message-Id: {mid}\r\n\r\nhello\r\n".encode())
                assert code == 250, reply
        for mid in mids:
            assert len(received(sink, mid)) == 1, mid
        time.sleep(1.5)
        assert "Traceback" not in relay.output()
        warnings = relay.output().count("cannot write the W3C log")
        assert 1 <= warnings <= 2, relay.output()  # rate-limited
        if filler is None:
            os.chmod(logs, 0o700)
        else:
            filler.unlink()
        mid = message_id()
        assert "250 2.0.0" in send(relay.port, "--to", "carol@example.test", mid=mid)
        assert len(received(sink, mid)) == 1
        deadline = time.monotonic() + 10
        text = ""
        while " DATA " not in text and time.monotonic() < deadline:
            time.sleep(0.2)
            text = "".join(p.read_text(errors="replace") for p in logs.glob("relay*.log"))
        assert " DATA " in text and "#Fields" in text, text  # the log recovered once space returned
    finally:
        assert relay.stop() == 0
