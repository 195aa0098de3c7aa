"""`.ci/peers` waits (bounded) for the apt locks another apt or dpkg holds, instead of failing at once.

The real apt-get runs against a private apt tree (APT_CONFIG): its locks are files of this
test, never the host's, so nothing the host's package manager does is disturbed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CI = Path(__file__).resolve().parent.parent / ".ci"
HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o640)
fcntl.lockf(fd, fcntl.LOCK_EX)  # apt's own kind of lock (fcntl), not flock
print("held", flush=True)
time.sleep(float(sys.stdin.readline() or 0))  # the holder times its own release: see release_after()
"""

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None, reason="apt-get is Debian's")


@pytest.fixture
def apt_tree(tmp_path: Path) -> dict[str, str]:
    """An empty apt world of its own: no sources, no packages, its own lock files."""
    for folder in ("state/lists/partial", "cache/archives/partial", "dpkg", "etc/apt.conf.d", "etc/preferences.d"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "dpkg" / "status").touch()
    (tmp_path / "etc" / "sources.list").touch()
    conf = tmp_path / "apt.conf"
    conf.write_text(
        f'Dir::State "{tmp_path}/state";\nDir::Cache "{tmp_path}/cache";\n'
        f'Dir::State::status "{tmp_path}/dpkg/status";\nDir::Etc "{tmp_path}/etc";\n'
        f'Dir::Etc::parts "{tmp_path}/etc/apt.conf.d";\n'
    )
    return {**os.environ, "APT_CONFIG": str(conf)}


def hold(lock: Path) -> subprocess.Popen[str]:
    """A process holding ``lock`` until killed or told to let go (``release_after``)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def release_after(holder: subprocess.Popen[str], seconds: float) -> None:
    """Have ``holder`` let go of its lock ``seconds`` from now.

    The holder times this itself, with a plain sleep. A timer thread in the test
    (``threading.Timer``) never fired under libfaketime, which shifts the deadline of a
    timed thread wait by the fake offset: the lock stayed held, and the year-ahead pass
    timed out.
    """
    assert holder.stdin is not None
    holder.stdin.write(f"{seconds}\n")
    holder.stdin.flush()


@pytest.mark.parametrize(
    ("args", "lock", "after"),
    [
        # apt-get update takes the lists lock; apt itself never waits for it.
        (["update", "-qq"], "state/lists/lock", ""),
        # install takes dpkg's frontend lock: apt waits with DPkg::Lock::Timeout; then the real answer.
        (["install", "-y", "-qq", "no-such-package-here"], "dpkg/lock-frontend", "Unable to locate package"),
    ],
)
def test_apt_get_waits_for_a_lock_another_process_holds_then_runs(apt_tree, tmp_path, args, lock, after):
    holder = hold(tmp_path / lock)
    try:
        plain = subprocess.run(["apt-get", *args], env=apt_tree, capture_output=True, text=True, timeout=60)
        release_after(holder, 3)
        done = subprocess.run([str(CI / "apt-get"), *args], env=apt_tree, capture_output=True, text=True, timeout=120)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert plain.returncode == 100 and "Could not get lock" in plain.stderr  # what apt-get alone does
    assert holder.returncode == 0, "the call returned while the lock was still held"
    if after:
        assert done.returncode == 100 and after in done.stderr, done.stderr
    else:
        assert done.returncode == 0, done.stderr


def test_the_wait_is_bounded(apt_tree, tmp_path):
    holder = hold(tmp_path / "state/lists/lock")
    try:
        env = {**apt_tree, "ALERTMAIL_APT_LOCK_WAIT": "2"}
        done = subprocess.run([str(CI / "apt-get"), "update", "-qq"], env=env, capture_output=True, text=True, timeout=60)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 100 and "Could not get lock" in done.stderr
    assert "waiting up to 2s" in done.stderr


def test_peers_calls_apt_get_only_through_the_waiting_wrapper():
    script = [line for line in (CI / "peers").read_text().splitlines() if not line.lstrip().startswith("#")]
    direct = [line for line in script if re.search(r"(^|[\s;&|(])apt-get\s", line)]
    assert not direct, direct
    assert any('"$apt_get" update' in line for line in script)
    assert any('"$apt_get" install' in line for line in script)
