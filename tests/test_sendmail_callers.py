"""Real callers of /usr/sbin/sendmail (bsd-mailx's mail, cron with MAILTO) reaching smtp-sink through alertmail.

Both call the path /usr/sbin/sendmail compiled into them; each runs in a private mount
namespace (``unshare --mount``) where alertmail's sendmail is bind-mounted over that path,
so the host's own sendmail, crontabs and cron daemon are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_sendmail import shared_dir, sink, start_agent, stop_agent, wait_messages, wake_ready, write_config

__all__ = ["shared_dir", "sink"]


def namespace_ready(*binaries: str) -> None:
    if os.geteuid() != 0:
        pytest.skip("bind-mounting over /usr/sbin/sendmail in a private mount namespace needs root")
    for binary in ("unshare", *binaries):
        if not shutil.which(binary) and not os.path.exists(f"/usr/sbin/{binary}"):
            message = f"{binary} is not installed (Debian: bsd-mailx, cron); .ci/peers installs it"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)


def sendmail_wrapper(folder: Path, config: Path) -> Path:
    """The wrapper `alertmail init --sendmail` tells to install, made by its own printf line, here in ``folder``."""
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "init", "--sendmail", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    [line] = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("printf ")]
    path = folder / "sendmail"
    subprocess.run(["sh", "-c", line.replace("/usr/local/sbin/alertmail-sendmail", str(path))], check=True)
    path.chmod(0o755)
    return path


@pytest.mark.peers
def test_bsd_mailx_mail_reaches_sink_through_alertmail_sendmail(shared_dir, sink):
    namespace_ready("bsd-mailx")
    config = write_config(shared_dir, sink)
    wrapper = sendmail_wrapper(shared_dir, config)
    agent = start_agent(config)
    try:
        wake_ready(config, agent)
        script = 'mount --bind "$1" /usr/sbin/sendmail && exec bsd-mailx -s "backup finished" ops@example.test'
        done = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(wrapper)],
            input=b"all 42 volumes copied\n",
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        received = wait_messages(sink, 1, agent)
    finally:
        stop_agent(agent)
    mail = received[0]
    assert mail.recipients == ["ops@example.test"]
    assert mail.message["Subject"] == "backup finished"
    assert "all 42 volumes copied" in mail.message.get_content()
    assert mail.message["Message-ID"] and mail.message["Date"] and mail.message["From"]


@pytest.mark.peers
@pytest.mark.timeout(240)
def test_cron_mails_a_job_s_output_to_mailto_through_alertmail_sendmail(shared_dir, sink):
    """A private cron daemon (cron -f) whose only job prints; its MAILTO mail reaches smtp-sink."""
    namespace_ready("cron")
    config = write_config(shared_dir, sink)
    wrapper = sendmail_wrapper(shared_dir, config)
    cron = shared_dir / "cron"
    for sub in ("cron.d", "crontabs", "run"):
        (cron / sub).mkdir(parents=True)
    (cron / "crontab").write_text("")
    (cron / "cron.d" / "alertmail-test").write_text("MAILTO=ops@example.test\n* * * * * root echo hello from cron job\n")
    for path in (cron, cron / "cron.d", cron / "crontabs", cron / "run"):
        path.chmod(0o755)
    (cron / "crontab").chmod(0o644)
    (cron / "cron.d" / "alertmail-test").chmod(0o644)
    script = (
        'mount --bind "$1" /usr/sbin/sendmail && mount --bind "$2/crontab" /etc/crontab'
        ' && mount --bind "$2/cron.d" /etc/cron.d && mount --bind "$2/crontabs" /var/spool/cron/crontabs'
        ' && mount --bind "$2/run" /run && exec cron -f -L 15'
    )
    agent = start_agent(config)
    daemon = None
    try:
        wake_ready(config, agent)
        daemon = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(wrapper), str(cron)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # cron runs the job at the next full minute.
        received = wait_messages(sink, 1, agent, timeout=150)
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(10)
        stop_agent(agent)
    mail = received[0]
    assert mail.recipients == ["ops@example.test"]
    assert "hello from cron job" in mail.message.get_content()
    assert "Cron" in str(mail.message["From"]) or "Cron" in str(mail.message["Subject"])
