"""One exit-code table for every command: what --help and the README say is what the commands do."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from alertmail.exitcodes import EXIT_CODE_MEANINGS, ExitCode

README = Path(__file__).resolve().parent.parent / "README.md"
ALERTMAIL = [sys.executable, "-m", "alertmail"]


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["nosuchcommand"], ["queue", "show", "--nope"], ["silence", "add", "--for"], ["init", "--force", "x"]],
)
def test_a_usage_error_exits_64_whatever_the_command(args, tmp_path):
    done = subprocess.run([*ALERTMAIL, *args], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert "Error:" in done.stderr


def test_help_and_readme_list_every_exit_code_with_the_same_meaning():
    done = subprocess.run([*ALERTMAIL, "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    readme = {int(code): text for code, text in re.findall(r"^\| (\d+) \| (.+) \|$", README.read_text(), re.M)}
    assert set(readme) == {int(c) for c in ExitCode}
    for code, text in EXIT_CODE_MEANINGS.items():
        assert re.search(rf"^\s+{int(code)}\s+{re.escape(text)}$", done.stdout, re.M), text
        assert readme[int(code)].replace("`", "") == text


def test_check_json_lists_the_problems_or_the_summary(tmp_path):
    import json

    good = tmp_path / "good.toml"
    good.write_text('[agent]\nstate_dir = "var"\n[mail]\nroute = ["pickup"]\n')
    done = subprocess.run([*ALERTMAIL, "check", "-c", str(good), "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == {
        "config": str(good),
        "ok": True,
        "problems": [],
        "warnings": [],
        "rules": 0,
        "route": ["pickup"],
    }
    bad = tmp_path / "bad.toml"
    bad.write_text('[agent]\ninterval = "ninety"\n[mail]\nroute = ["smpt"]\n')
    done = subprocess.run([*ALERTMAIL, "check", "-c", str(bad), "--json"], capture_output=True, text=True, timeout=60)
    report = json.loads(done.stdout)
    assert done.returncode == ExitCode.CONFIG and report["ok"] is False
    assert any("agent.interval" in p for p in report["problems"]) and any("did you mean 'smtp'" in p for p in report["problems"])


def test_a_second_run_on_a_state_folder_in_use_exits_75_with_one_line(tmp_path):
    import os
    import signal
    import time

    config = tmp_path / "config.toml"
    config.write_text('[agent]\nstate_dir = "var"\ninterval = "1s"\n[mail]\nroute = ["pickup"]\n')
    with open(tmp_path / "first.log", "w+") as log:
        first = subprocess.Popen([*ALERTMAIL, "run", "--config", str(config)], stderr=log)
        try:
            deadline = time.monotonic() + 60
            while "watching" not in Path(log.name).read_text():
                assert first.poll() is None and time.monotonic() < deadline, Path(log.name).read_text()
                time.sleep(0.1)
            second = subprocess.run(
                [*ALERTMAIL, "run", "--config", str(config)], capture_output=True, text=True, timeout=60, cwd=tmp_path
            )
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(30)
    assert second.returncode == ExitCode.TEMPFAIL, second.stderr
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert "in use" in lines[0] and os.fspath(tmp_path / "var") in lines[0]
