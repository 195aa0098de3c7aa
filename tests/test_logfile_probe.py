"""The logfile probe follows a real log: appends, partial lines, truncation, and rotation by
Debian's logrotate (rename with ``create``, and ``copytruncate``), run with its own config
and state file in the test's folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from alertmail.plugins.probes.logfile import LogfileProbe, LogfileSettings
from alertmail.probes.runner import configure_probe
from tests.peers import need

REPO = Path(__file__).resolve().parent.parent


def follow(log: Path, pattern: str = "ERROR", **options) -> LogfileProbe:
    probe = LogfileProbe()
    problems = configure_probe(
        "logfile", probe, LogfileSettings(checks=[{"name": "app", "path": str(log), "pattern": pattern}], **options)
    )
    assert problems == []
    return probe


def matches(probe: LogfileProbe) -> float | None:
    samples = probe.collect()
    assert all(s.metric == "logfile.matches" and s.label_dict() == {"check": "app"} for s in samples)
    return samples[0].value if samples else None


def logrotate(folder: Path, log: Path, how: str) -> None:
    """One forced rotation of ``log`` by logrotate; ``how`` is "create" (rename) or "copytruncate"."""
    conf = folder / "logrotate.conf"
    conf.write_text(f"{log} {{\n    rotate 5\n    {how}\n    nocompress\n    missingok\n}}\n")
    done = subprocess.run(
        [need("logrotate"), "--force", "--state", str(folder / "logrotate.state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def test_lines_already_in_the_log_are_not_news_but_each_new_matching_line_counts_once(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("ERROR from yesterday\n")
    probe = follow(log)
    assert matches(probe) == 0
    with open(log, "a") as out:
        out.write("INFO fine\nERROR disk on fire\nERROR again\n")
    assert matches(probe) == 2
    assert matches(probe) == 0
    assert probe.detail("logfile.matches", {"check": "app"}).endswith("\nERROR again")


def test_a_line_still_being_written_counts_once_when_it_ends(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log)
    with open(log, "a") as out:
        out.write("ERR")
        out.flush()
        assert matches(probe) == 0
        out.write("OR half a line\n")
    assert matches(probe) == 1
    assert matches(probe) == 0


def test_a_log_that_appears_later_is_read_from_its_start(tmp_path):
    log = tmp_path / "late.log"
    probe = follow(log)
    assert matches(probe) == 0
    log.write_text("ERROR one\nok\nERROR two\n")
    assert matches(probe) == 2


def test_rotation_by_rename_counts_what_the_old_file_got_late_and_the_new_file(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("ERROR before the probe\n")
    probe = follow(log)
    writer = open(log, "a")  # noqa: SIM115  the writing program holds its file open across rotation
    try:
        writer.write("ERROR a\n")
        writer.flush()
        assert matches(probe) == 1
        writer.write("ERROR b\n")
        writer.flush()
        logrotate(tmp_path, log, "create")
        assert (tmp_path / "app.log.1").exists() and log.stat().st_size == 0
        writer.write("ERROR c, written before the program reopened its log\n")
        writer.flush()
    finally:
        writer.close()
    with open(log, "a") as reopened:
        reopened.write("ERROR d in the new file\nINFO fine\n")
    assert matches(probe) == 3
    assert probe.detail("logfile.matches", {"check": "app"}).endswith("\nERROR d in the new file")
    with open(log, "a") as out:
        out.write("ERROR e\n")
    assert matches(probe) == 1


def test_copytruncate_is_noticed_even_when_the_log_has_grown_past_the_old_position(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log)
    writer = open(log, "a")  # noqa: SIM115  O_APPEND, as loggers open their files
    try:
        writer.write("INFO starting\nERROR a\n")
        writer.flush()
        assert matches(probe) == 1
        logrotate(tmp_path, log, "copytruncate")
        assert (tmp_path / "app.log.1").read_text() == "INFO starting\nERROR a\n" and log.stat().st_size == 0
        # Before the next run the log is longer again than where the probe stopped, its errors in front.
        writer.write("ERROR b\nERROR c\nINFO a much longer line than the ones before\n")
        writer.flush()
    finally:
        writer.close()
    assert matches(probe) == 2


def test_copytruncate_under_a_writer_without_append_mode_drops_the_nul_bytes_in_front(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log, pattern="^ERROR")
    fd = os.open(log, os.O_WRONLY)  # no O_APPEND: the writer keeps its own offset past the truncation
    try:
        os.write(fd, b"ERROR a\n")
        assert matches(probe) == 1
        logrotate(tmp_path, log, "copytruncate")
        os.write(fd, b"ERROR z\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"\0" * 8 + b"ERROR z\n"  # the hole a truncation leaves under such a writer
    assert matches(probe) == 1
    assert probe.detail("logfile.matches", {"check": "app"}).endswith("\nERROR z")


def test_a_truncated_log_is_read_again_from_its_start(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("x" * 100 + "\n")
    probe = follow(log)
    log.write_text("ERROR short\n")  # truncated and rewritten, shorter than the position
    assert matches(probe) == 1


def test_a_log_grown_past_max_read_is_caught_up_over_the_next_runs(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log, max_read=4096)
    lines = [f"{'ERROR' if i % 3 == 0 else 'INFO '} line {i:05d} {'.' * 40}\n" for i in range(600)]
    log.write_text("".join(lines))
    assert log.stat().st_size > 4 * 4096
    counts = [matches(probe) for _ in range(10)]
    assert counts[0] < 200 and sum(counts) == 200 and counts[-1] == 0


def test_reconfiguring_with_the_same_check_keeps_the_position(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log)
    with open(log, "a") as out:
        out.write("ERROR while the config was reloaded\n")
    assert (
        configure_probe("logfile", probe, LogfileSettings(checks=[{"name": "app", "path": str(log), "pattern": "ERROR"}])) == []
    )
    assert matches(probe) == 1


def test_a_log_that_cannot_be_read_any_more_reports_no_sample_and_says_why(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = follow(log)
    log.rename(tmp_path / "app.log.1")
    log.mkdir()  # a folder where the log was: open works, reading does not
    assert probe.collect() == []
    assert probe.detail("logfile.matches", {"check": "app"}) == f"cannot read {log}: Is a directory"
    log.rmdir()
    log.write_text("ERROR back\n")
    assert matches(probe) == 1


def test_check_refuses_a_bad_pattern_and_a_folder_for_a_log_naming_each_key(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(f"""
        [probes.logfile]
        max_read = 100
        checks = [
          {{ name = "bad-regex", path = "{tmp_path}/app.log", pattern = "ERROR(" }},
          {{ name = "folder", path = "{folder}", pattern = "ERROR" }},
          {{ name = "relative", path = "app.log", pattern = "ERROR" }},
          {{ name = "folder", path = "{tmp_path}/b.log", patern = "x" }},
        ]
        """)
    )
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    lines = done.stderr.splitlines()
    expected = [
        "probes.logfile.max_read: expected at least 4KiB, got 100; the default is 16MiB",
        "probes.logfile.checks[0].pattern: not a valid regular expression: missing ), unterminated subpattern",
        f"probes.logfile.checks[1].path: cannot read {folder}: Is a directory; name the log file itself, not its folder",
        "probes.logfile.checks[2].path: expected an absolute path",
        "probes.logfile.checks[3].patern: unknown key; did you mean 'pattern'?",
        "probes.logfile.checks[3].name: 'folder' is used twice; each check needs its own name",
        "probes.logfile.checks[3].pattern: missing",
    ]
    for text in expected:
        assert any(line.startswith(f"{config}: {text}") for line in lines), (text, done.stderr)


def test_with_a_positions_file_a_restart_counts_the_lines_written_while_stopped(tmp_path):
    log = tmp_path / "app.log"
    positions = tmp_path / "var" / "logfile-positions.json"
    positions.parent.mkdir()
    log.write_text("ERROR old\n")
    before = follow(log, positions_file=str(positions))
    with open(log, "a") as out:
        out.write("ERROR a\n")
    assert matches(before) == 1
    assert positions.exists()
    with open(log, "a") as out:  # the agent is stopped now
        out.write("ERROR b\nINFO fine\nERROR c\n")
    after = follow(log, positions_file=str(positions))
    assert matches(after) == 2
    assert matches(after) == 0


def test_with_a_positions_file_a_log_rotated_while_stopped_is_read_from_its_start(tmp_path):
    log = tmp_path / "app.log"
    positions = tmp_path / "positions.json"
    log.write_text("ERROR old\n")
    before = follow(log, positions_file=str(positions))
    with open(log, "a") as out:
        out.write("INFO a\n")
    assert matches(before) == 0
    logrotate(tmp_path, log, "create")
    with open(log, "a") as out:
        out.write("ERROR in the new file\n")
    assert matches(follow(log, positions_file=str(positions))) == 1


def test_without_a_positions_file_or_with_a_damaged_one_a_restart_starts_at_the_end(tmp_path, caplog):
    log = tmp_path / "app.log"
    positions = tmp_path / "positions.json"
    log.write_text("")
    assert matches(follow(log)) == 0
    with open(log, "a") as out:
        out.write("ERROR while stopped\n")
    assert matches(follow(log)) == 0
    positions.write_text("{not json")
    with caplog.at_level("WARNING", logger="alertmail.probes.logfile"):
        probe = follow(log, positions_file=str(positions))
    assert "cannot be used" in caplog.text
    with open(log, "a") as out:
        out.write("ERROR after the restart\n")
    assert matches(probe) == 1
    assert str(log) in positions.read_text()


def test_a_named_pipe_for_a_log_is_refused_without_hanging_and_a_folder_later_is_reported(tmp_path):
    fifo = tmp_path / "app.fifo"
    os.mkfifo(fifo)
    problems = configure_probe(
        "logfile", LogfileProbe(), LogfileSettings(checks=[{"name": "app", "path": str(fifo), "pattern": "x"}])
    )
    assert problems == [
        f"probes.logfile.checks[0].path: cannot read {fifo}: not a regular file; name a log file the agent can read"
    ]
    log = tmp_path / "app.log"
    probe = follow(log)
    log.mkdir()
    assert probe.collect() == []
    assert probe.detail("logfile.matches", {"check": "app"}) == f"cannot read {log}: Is a directory"
    log.rmdir()
    log.write_text("ERROR a file again\n")
    assert matches(probe) == 1


def test_a_damaged_entry_in_the_positions_file_starts_that_log_at_its_end(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("ERROR old\n")
    positions = tmp_path / "positions.json"
    positions.write_text(json.dumps({str(log): {"dev": 1, "ino": "x", "offset": 0, "tail": "!!"}}))
    probe = follow(log, positions_file=str(positions))
    assert matches(probe) == 0


def test_a_reload_that_drops_checks_closes_their_logs(tmp_path):
    log = tmp_path / "app.log"
    log.write_text("")
    probe = LogfileProbe()
    twins = [{"name": n, "path": str(log), "pattern": "ERROR"} for n in ("a", "b")]
    assert configure_probe("logfile", probe, LogfileSettings(checks=twins)) == []
    followers = [c.follower for c in probe.checks]
    assert all(f.fd is not None for f in followers)
    assert configure_probe("logfile", probe, LogfileSettings(checks=[])) == []
    assert [f.fd for f in followers] == [None, None]  # a rotated-away log no longer held open
