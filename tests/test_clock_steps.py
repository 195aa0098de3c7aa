"""`alertmail run` while the wall clock is stepped (NTP, `date -s`): libfaketime steps CLOCK_REALTIME mid-run.

The agent runs with libfaketime preloaded, reading its offset from a file the test
rewrites (FAKETIME_TIMESTAMP_FILE, FAKETIME_NO_CACHE=1) and leaving the monotonic
clock alone (FAKETIME_DONT_FAKE_MONOTONIC=1), as an NTP step does. The suite may itself
run under `faketime` (.ci/next-year): the agent's environment is then rebuilt from
scratch, the outer offset written into the file, so the step comes on top of it.
"""

from __future__ import annotations

import email.utils
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_agent_e2e import kinds, pickup_mails, stop_agent, wait_for, write_gauge_config

# The thread-safe build (libfaketimeMT): the plain one parses the offset file in a static buffer
# that another thread may be rewriting, and then answers one read with the real time. The agent has
# threads, so it saw the clock go back a year and forward again a moment later (two "steps").
LIBFAKETIME = next(
    (
        folder / name
        for name in ("libfaketimeMT.so.1", "libfaketime.so.1")
        for folder in (
            Path("/usr/lib/x86_64-linux-gnu/faketime"),
            Path("/usr/lib/aarch64-linux-gnu/faketime"),
            Path("/usr/lib/faketime"),
            Path("/usr/local/lib/faketime"),
        )
        if (folder / name).exists()
    ),
    None,
)

pytestmark = pytest.mark.skipif(LIBFAKETIME is None, reason="libfaketime is not installed (Debian package faketime)")


def _clean_env() -> dict[str, str]:
    """This environment without any libfaketime of an outer `faketime`."""
    return {k: v for k, v in os.environ.items() if not k.startswith("FAKETIME") and k != "LD_PRELOAD"}


def outer_offset() -> float:
    """How far this process's clock is from the real one (a year under .ci/next-year, else about 0)."""
    real = float(subprocess.run(["date", "+%s.%N"], env=_clean_env(), capture_output=True, text=True, check=True).stdout)
    return time.time() - real


class SteppedAgent:
    """`alertmail run` under libfaketime, its wall clock stepped by ``step()``."""

    def __init__(self, folder: Path, config: Path) -> None:
        self.offset = round(outer_offset())
        self.file = folder / "faketime.rc"
        self._write(self.offset)
        env = {
            **_clean_env(),
            "LD_PRELOAD": str(LIBFAKETIME),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "alertmail", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=folder,
            env=env,
        )
        self.log: str | None = None

    def _write(self, offset: float) -> None:
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{offset:+.0f}\n")
        tmp.replace(self.file)  # the agent reads the file on every clock read: never half written

    def step(self, seconds: float) -> None:
        self.offset += seconds
        self._write(self.offset)

    def now(self) -> float:
        """The agent's wall clock, as this process reckons it."""
        return time.time() - outer_offset() + self.offset

    def wait_for(self, predicate, *, timeout: float, what: str):
        """``wait_for``, with the agent's log in the failure: it is stopped first, as its log is a pipe."""
        try:
            return wait_for(predicate, timeout=timeout, what=what)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}\n{self.stop()}") from None

    def stop(self) -> str:
        if self.log is None:
            self.log = stop_agent(self.proc)
        return self.log


def write_config(folder: Path, rules: str) -> Path:
    return write_gauge_config(folder, rules, interval="2s")


def step_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "wall clock stepped by" in line]


def test_a_step_back_of_ten_minutes_keeps_probes_for_and_absent_on_time(tmp_path):
    config = write_config(
        tmp_path,
        """
        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        for = "8s"

        [[rules]]
        name = "gauge-gone"
        metric = "test.gauge"
        absent = "10s"
        """,
    )
    agent = SteppedAgent(tmp_path, config)
    try:
        time.sleep(4)
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        began = time.monotonic()
        time.sleep(3)  # pending for about 3 s of the 8 s `for`
        agent.step(-600)
        # Only samples promote pending to firing: a firing mail on time shows the probes kept their interval.
        mails = agent.wait_for(lambda: pickup_mails(tmp_path), timeout=45, what="the firing mail, on time")
        fired_after = time.monotonic() - began
        time.sleep(3)
        mails = pickup_mails(tmp_path)
        expected_date = agent.now()
    finally:
        log = agent.stop()
    assert agent.proc.returncode == 0, log
    assert kinds(mails) == ["firing"], log  # and no `absent`: the probes never stopped
    assert fired_after < 25, f"fired {fired_after:.0f} s after the value crossed, for = 8s\n{log}"
    assert "gauge-high" in mails[0]["Subject"]
    # The mail shows the wall clock after the step.
    date = email.utils.parsedate_to_datetime(str(mails[0]["Date"])).timestamp()
    assert abs(date - (expected_date - 3)) < 15, (mails[0]["Date"], expected_date, log)
    assert len(step_lines(log)) == 1 and "wall clock stepped by \u2212600 s" in step_lines(log)[0], log


def test_a_step_forward_of_an_hour_mails_nothing_neither_absent_nor_a_reminder(tmp_path):
    config = write_config(
        tmp_path,
        """
        [[rules]]
        name = "gauge-gone"
        metric = "test.gauge"
        absent = "6s"

        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50
        repeat = "10m"
        """,
    )
    (tmp_path / "plugins.d" / "value.txt").write_text("93")
    agent = SteppedAgent(tmp_path, config)
    try:
        agent.wait_for(lambda: pickup_mails(tmp_path), timeout=30, what="the firing mail")
        time.sleep(2)
        agent.step(3600)
        time.sleep(10)
        mails = pickup_mails(tmp_path)
    finally:
        log = agent.stop()
    assert agent.proc.returncode == 0, log
    # The firing mail of the start, and after the step nothing: no `absent` and its recovery, no reminder.
    assert kinds(mails) == ["firing"], [m["Subject"] for m in mails]
    assert len(step_lines(log)) == 1 and "wall clock stepped by +3600 s" in step_lines(log)[0], log


def test_a_deferred_message_is_retried_on_time_after_a_step_back(tmp_path):
    """The queue's retry waits keep their length when the wall clock goes back ten minutes."""
    from tests.peers import SmtpSink, free_port

    port = free_port()
    config = write_config(
        tmp_path,
        f"""
        [[rules]]
        name = "gauge-high"
        metric = "test.gauge"
        above = 50

        [queue]
        retry = ["6s"]
        scan_interval = "1s"

        [transports.smtp]
        servers = ["127.0.0.1:{port}"]
        tls = "none"
        """,
    ).read_text()
    (tmp_path / "config.toml").write_text(config.replace('route = ["pickup"]', 'route = ["smtp"]'))
    (tmp_path / "plugins.d" / "value.txt").write_text("93")
    agent = SteppedAgent(tmp_path, tmp_path / "config.toml")
    try:
        # Nothing listens yet: the first attempt fails and the message waits 6 s for its next try.
        # A message's state file is written after its first attempt.
        agent.wait_for(lambda: list((tmp_path / "var" / "queue").glob("*.json")), timeout=30, what="the first attempt to fail")
        agent.step(-600)
        with SmtpSink(tmp_path / "sink", port=port) as sink:
            began = time.monotonic()
            got = sink.wait_for(1, timeout=45)
            waited = time.monotonic() - began
    finally:
        log = agent.stop()
    assert agent.proc.returncode == 0, log
    assert len(got) == 1 and "gauge-high" in str(got[0].message["Subject"]), log
    assert waited < 30, f"delivered {waited:.0f} s after the server came up, retry = 6s\\n{log}"
    assert "next tries moved by \u2212600 s" in log, log
