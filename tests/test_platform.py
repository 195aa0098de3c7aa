"""Where fcntl is missing, what never locks still runs, and `run` says plainly that it needs Unix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# import fcntl raises ImportError, as on a platform without it.
WITHOUT_FCNTL = "import sys; sys.modules['fcntl'] = None; sys.argv[0] = 'alertmail'; from alertmail.cli import main; main()"


def alertmail_without_fcntl(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_check_probe_and_replay_run_without_fcntl(tmp_path):
    config = ROOT / "config.toml"
    assert alertmail_without_fcntl("check", "--config", str(config), cwd=tmp_path).returncode == 0
    assert alertmail_without_fcntl("probe", "--list", "--config", str(config), cwd=tmp_path).returncode == 0
    replay = alertmail_without_fcntl(
        "replay", "--config", str(config), "--samples", str(ROOT / "tests/data/burst.csv"), cwd=tmp_path
    )
    assert replay.returncode == 0, replay.stderr


def test_run_without_fcntl_stops_with_a_plain_reason(tmp_path):
    (tmp_path / "config.toml").write_text('[agent]\nstate_dir = "var"\n[mail]\nroute = ["pickup"]\n')
    done = alertmail_without_fcntl("run", "--config", "config.toml", cwd=tmp_path)
    assert done.returncode == 75
    assert "file locking needs fcntl; alertmail runs its queue on Unix only" in done.stderr
    assert "Traceback" not in done.stderr
