"""The pickup folder against abuse (issue 8, section 4): huge and sparse files, recipient floods,
hard links, symlinks, FIFOs, folders, control characters in names. A real relay process each."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.peers import SmtpSink
from tests.relay_peers import message_id, private_folder, received, start_relay

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-pickup-sink-") / "dump") as sink:
        yield sink


@pytest.fixture
def relay(tmp_path, sink):
    process = start_relay(tmp_path / "relay", sink, {"max_size": "1MB", "max_recipients": 100})
    yield process
    assert process.stop() == 0


def drop(folder: Path, name: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ".incoming").write_bytes(data)
    os.rename(folder / ".incoming", folder / name)
    return folder / name


def wait(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.1)


def peak_rss_kb(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1))


def test_a_huge_sparse_file_is_moved_to_badmail_whole_never_copied_nor_read_into_memory(relay):
    pickup = relay.state_dir / "pickup"
    pickup.mkdir(parents=True, exist_ok=True)
    time.sleep(0.5)
    before = peak_rss_kb(relay.proc.pid)
    tmp = pickup / ".huge"
    with open(tmp, "wb") as out:
        out.write(b"To: a@example.test\r\n\r\n")
        out.truncate(256 << 20)  # 256 MB, sparse: a copy would write them all
    os.rename(tmp, pickup / "huge.eml")
    inode = (pickup / "huge.eml").stat().st_ino
    badmail = relay.state_dir / "badmail"
    wait(lambda: not (pickup / "huge.eml").exists(), 60)
    wait(lambda: list(badmail.glob("*.bdr")))
    (bad,) = badmail.glob("*.bad")
    assert bad.stat().st_ino == inode, "renamed, not copied"
    assert bad.stat().st_size == 256 << 20 and bad.stat().st_blocks * 512 < 1 << 20, "still sparse: no disk spent"
    (bdr,) = badmail.glob("*.bdr")
    reason = bdr.read_text().splitlines()[0]
    assert "larger than max_size" in reason and "moved here whole" in reason
    growth = peak_rss_kb(relay.proc.pid) - before
    assert growth < 20_000, f"peak RSS grew by {growth} kB"


def test_a_refused_pickup_file_on_another_filesystem_leaves_only_a_bounded_excerpt_with_the_reason(tmp_path, monkeypatch):
    """Where badmail is on another filesystem (rename fails with EXDEV) nothing is copied whole."""
    import asyncio
    import errno

    from alertmail.intake import Badmail
    from alertmail.plugins.relay.watcher import PickupWatcher

    excerpt = 64 << 10  # the documented bound (docs/queue.md)
    pickup, badmail = tmp_path / "pickup", tmp_path / "badmail"
    drop(pickup, "big.eml", b"To: a@example.test\r\n\r\n" + b"x" * (3 * excerpt))

    def cross_device(src, dst, *args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "rename", cross_device)
    watcher = PickupWatcher(pickup, queue=None, badmail=Badmail(badmail), hostname="h", interval=0.0, max_size=excerpt)
    assert asyncio.run(watcher.take(pickup / "big.eml"))
    assert not (pickup / "big.eml").exists()
    (bad,) = badmail.glob("*.bad")
    assert bad.stat().st_size <= excerpt + 100
    reason = next(badmail.glob("*.bdr")).read_text().splitlines()[0]
    assert f"only its first {excerpt} of {3 * excerpt + 22} bytes are kept" in reason


def test_a_recipient_flood_is_refused_by_the_recipient_limit(relay, sink):
    mid = message_id()
    lines = "".join(f"X-Receiver: r{i}@example.test\r\n" for i in range(20_000))
    drop(
        relay.state_dir / "pickup",
        "flood.eml",
        f"X-Sender: app@client.test\r\n{lines}Message-Id: {mid}\r\n\r\nhi\r\n".encode(),
    )
    badmail = relay.state_dir / "badmail"
    wait(lambda: list(badmail.glob("*.bdr")))
    (bdr,) = badmail.glob("*.bdr")
    assert "too many recipients" in bdr.read_text()
    assert received(sink, mid, timeout=1.0) == []


def test_a_hard_link_is_refused_and_never_copied(relay, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n")
    pickup = relay.state_dir / "pickup"
    pickup.mkdir(parents=True, exist_ok=True)
    os.link(secret, pickup / "shadow")
    wait(lambda: "shadow" in relay.output())
    time.sleep(1.0)  # several scans
    badmail = relay.state_dir / "badmail"
    assert not badmail.exists() or not any(b"secret-hash" in p.read_bytes() for p in badmail.iterdir())
    lines = [line for line in relay.output().splitlines() if "shadow" in line]
    assert len(lines) == 1 and "hard link" in lines[0], lines
    assert secret.read_bytes().startswith(b"root:")


def test_symlinks_fifos_and_folders_are_reported_once_each(relay, tmp_path):
    target = tmp_path / "target.eml"
    target.write_bytes(b"To: a@example.test\r\n\r\nhi\r\n")
    pickup = relay.state_dir / "pickup"
    pickup.mkdir(parents=True, exist_ok=True)
    os.symlink(target, pickup / "link.eml")
    os.mkfifo(pickup / "fifo.eml")
    (pickup / "folder.eml").mkdir()
    wait(lambda: all(name in relay.output() for name in ("link.eml", "fifo.eml", "folder.eml")))
    time.sleep(1.0)  # several scans
    for name, reason in (("link.eml", "symbolic link"), ("fifo.eml", "not a regular file"), ("folder.eml", "folder")):
        lines = [line for line in relay.output().splitlines() if name in line]
        assert len(lines) == 1 and reason in lines[0], lines
    assert target.exists() and (pickup / "link.eml").is_symlink()


def test_control_characters_in_a_file_name_do_not_reach_the_log(relay):
    name = "evil\n2000-01-01 00:00:00,000 ERROR forged.eml"
    drop(relay.state_dir / "pickup", name, b"\x00 not a message\r\n")
    wait(lambda: not (relay.state_dir / "pickup" / name).exists())
    time.sleep(0.3)
    output = relay.output()
    assert "forged.eml" in output
    assert not [line for line in output.splitlines() if line.startswith("2000-01-01")], output
