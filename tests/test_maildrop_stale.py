"""The maildrop removes what a dead sendmail left, never a file a live one is writing."""

from __future__ import annotations

import os
import subprocess
import sys

from alertmail.plugins.maildrop import STALE_SECONDS, MaildropService, abandoned


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _old_file(folder, name: str) -> None:
    path = folder / name
    path.write_bytes(b"Subject: x\r\n\r\nbody\r\n")
    old = path.stat().st_mtime - 2 * STALE_SECONDS
    os.utime(path, (old, old))


def test_a_file_a_live_sendmail_writes_is_kept_however_old_it_looks(tmp_path):
    """Under a clock stepped (or faked) a year ahead, every file being written looks a year old."""
    live = f".18a2b3c4d5e6f-{os.getpid()}-0a0b0c0d0e0f"
    dead = f".18a2b3c4d5e6f-{_dead_pid()}-0a0b0c0d0e0f"
    _old_file(tmp_path, live)
    _old_file(tmp_path, dead)
    service = MaildropService()
    service.folder = tmp_path
    assert service._names() == []
    assert (tmp_path / live).exists()
    assert not (tmp_path / dead).exists()


def test_only_an_old_file_is_abandoned():
    pid = _dead_pid()
    assert not abandoned(f".1-{pid}-ff", STALE_SECONDS / 2)
    assert abandoned(f".1-{pid}-ff", STALE_SECONDS * 2)
    assert abandoned(".not-a-sendmail-name", STALE_SECONDS * 2)
    assert not abandoned(f".1-{os.getpid()}-ff", STALE_SECONDS * 2)
