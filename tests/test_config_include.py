"""include = ["conf.d/*.toml"]: rules and silences from a folder, one file per team; errors by file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alertmail.config.load import load_config
from alertmail.config.schema import ConfigError
from alertmail.notify.silences import SECTION as SILENCES

ALERTMAIL = [sys.executable, "-m", "alertmail"]
MAIN = """\
include = ["conf.d/*.toml"]

[agent]
state_dir = "var"
interval = "1s"

[mail]
to = ["ops@example.test"]
route = ["pickup"]

[[rules]]
name = "disk-full"
metric = "disk.used_percent"
above = 90
"""
TEAM_A = """\
[[rules]]
name = "web-load"
metric = "load.1"
above = 8
to = ["web@example.test"]

[[silences]]
rule = "web-*"
days = ["sat"]
start = "00:00"
end = "24:00"
comment = "web team off on saturdays"
"""


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(textwrap.dedent(text))
    return folder / "config.toml"


def test_rules_and_silences_come_from_every_included_file(tmp_path):
    config = write(
        tmp_path,
        {
            "config.toml": MAIN,
            "conf.d/a.toml": TEAM_A,
            "conf.d/b.toml": '[[rules]]\nname = "db-swap"\nmetric = "swap.used_percent"\nabove = 50\n',
        },
    )
    cfg = load_config(config)
    assert [r.name for r in cfg.rules] == ["disk-full", "web-load", "db-swap"]
    assert cfg.rules[1].to == ("web@example.test",) and cfg.rules[2].to == ("ops@example.test",)
    assert [s.comment for s in cfg.tables(SILENCES)] == ["web team off on saturdays"]


def test_problems_are_reported_by_file_with_their_key_paths(tmp_path):
    config = write(
        tmp_path,
        {
            "config.toml": MAIN.replace("above = 90", 'above = "ninety"'),
            "conf.d/a.toml": TEAM_A.replace("above = 8", "abvoe = 8"),
            "conf.d/b.toml": '[agent]\ninterval = "5s"\n[[rules]]\nname = "disk-full"\nmetric = "m"\nabove = 1\n',
            "conf.d/c.toml": "[[rules]\nbroken",
        },
    )
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    lines = caught.value.lines()
    a, b, c = (tmp_path / "conf.d" / n for n in ("a.toml", "b.toml", "c.toml"))
    assert any(line.startswith(f"{config}: rules[0].above: expected a number") for line in lines)
    assert any(line.startswith(f"{a}: rules[0].abvoe: unknown key; did you mean 'above'?") for line in lines)
    assert f"{b}: agent: an included file holds only [[silences]], [[rules]]; move [agent] to {config}" in lines
    assert f"{b}: rules[0].name: 'disk-full' is also a rule in {config}; give each rule its own name" in lines
    assert any(line.startswith(f"{c}: not valid TOML") for line in lines)
    done = subprocess.run([*ALERTMAIL, "check", "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 78 and f"{caught.value.count} problem(s) in {config}" in done.stderr


def test_a_missing_file_is_an_error_and_an_empty_folder_is_not(tmp_path):
    config = write(tmp_path, {"config.toml": MAIN})
    assert [r.name for r in load_config(config).rules] == ["disk-full"]
    config.write_text(MAIN.replace('include = ["conf.d/*.toml"]', 'include = ["teams.toml"]'))
    with pytest.raises(ConfigError, match=r"include\[0\]: no such file .*teams\.toml"):
        load_config(config)


def test_a_reload_picks_up_added_and_removed_files(tmp_path):
    config = write(tmp_path, {"config.toml": MAIN})
    (tmp_path / "conf.d").mkdir()
    with open(tmp_path / "stderr", "w+") as stderr:
        proc = subprocess.Popen([*ALERTMAIL, "run", "--config", str(config)], stderr=stderr, cwd=tmp_path)
        try:

            def wait_for(text: str, count: int = 1) -> None:
                deadline = time.monotonic() + 30
                while (tmp_path / "stderr").read_text().count(text) < count:
                    assert time.monotonic() < deadline, (tmp_path / "stderr").read_text()
                    time.sleep(0.1)

            wait_for("watching")
            (tmp_path / "conf.d" / "a.toml").write_text(TEAM_A)
            proc.send_signal(signal.SIGHUP)
            wait_for("configuration reloaded: 2 rules")
            os.unlink(tmp_path / "conf.d" / "a.toml")
            proc.send_signal(signal.SIGHUP)
            wait_for("configuration reloaded: 1 rules")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
