"""`alertmail queue retry` against a running agent: woken at once, the outcome printed, no backoff moved on."""

from __future__ import annotations

import email
import email.policy
import subprocess
import time

from alertmail.queue.spool import Queue
from tests.peers import SmtpSink, free_port
from tests.relay_peers import ALERTMAIL, private_folder
from tests.test_reload import Agent, config_text


def test_retry_wakes_the_agent_and_says_what_became_of_the_message(tmp_path):
    port = free_port()
    smtp = f'\n[transports.smtp]\nservers = ["127.0.0.1:{port}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    # No reminder while the test runs (the shared rule repeats every 2 s): the queue must
    # hold the one message under test, and the sink must count only what the retry sent.
    text = config_text('"smtp"', smtp)
    assert 'repeat = "2s"' in text
    agent = Agent(tmp_path, text.replace('repeat = "2s"', 'repeat = "1h"'))
    sink = SmtpSink(private_folder("retry-sink-") / "dump", port=port)
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        agent.wait_for("next try in 15m")
        queue = Queue(tmp_path / "var" / "queue")
        queue.load()
        [entry] = queue.entries()

        def retry() -> tuple[str, float]:
            started = time.monotonic()
            done = subprocess.run(
                [*ALERTMAIL, "queue", "retry", entry.id, "-c", str(agent.config)],
                capture_output=True,
                text=True,
                timeout=90,
                cwd=tmp_path,
            )
            assert done.returncode == 0, done.stderr
            return done.stdout, time.monotonic() - started

        out, took = retry()
        assert f"{entry.id}: deferred: " in out and "next try in 15m" in out, out
        assert took < 4.0  # woken by SIGUSR1, not at the next 5 s scan of the control folder
        queue.load()
        assert queue.get(entry.id).attempts == 1  # the manual retry counted nothing
        sink.start()
        out, _ = retry()
        assert f"{entry.id}: delivered" in out, out
        [got] = sink.messages()
        assert "gauge-high" in str(got.message["Subject"]), got.message
    finally:
        sink.stop()
        agent.stop()


def test_badmail_resend_to_a_running_agent_says_what_became_of_the_message(tmp_path):
    from alertmail.queue.badmail import Badmail

    port = free_port()
    smtp = f'\n[transports.smtp]\nservers = ["127.0.0.1:{port}"]\ntls = "none"\nconnect_timeout = "1s"\n'
    sink = SmtpSink(private_folder("resend-sink-") / "dump", port=port, options=["-f", "rcpt"]).start()  # 5xx: given up
    agent = Agent(tmp_path, config_text('"smtp"', smtp))
    try:
        (tmp_path / "plugins.d" / "value.txt").write_text("93")
        badmail = Badmail(tmp_path / "var" / "badmail")

        def alert_mails() -> list:
            # The alert itself, by its subject: its bounce to the sender is given up too (the sink
            # refuses every recipient), and quotes the alert, so its body names the rule as well.
            found = []
            for i in badmail.items():
                message = email.message_from_bytes(badmail.read(i.id)[1], policy=email.policy.default)
                if "gauge-high" in str(message["Subject"]):
                    found.append(i)
            return found

        deadline = time.monotonic() + 30
        while not alert_mails():
            assert time.monotonic() < deadline, agent.output()
            time.sleep(0.2)
        item = alert_mails()[0]
        badmail_copy = badmail.read(item.id)[1]
        sink.restart(options=[])
        done = subprocess.run(
            [*ALERTMAIL, "badmail", "resend", item.id, "-c", str(agent.config)],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert f"{item.id}: queued again" in done.stdout and "delivered" in done.stdout, done.stdout
        # That very message, by its Message-ID: the rule's reminders reach the sink as well now.
        resent = email.message_from_bytes(badmail_copy, policy=email.policy.default)["Message-ID"]
        assert resent in [m.message["Message-ID"] for m in sink.messages()], done.stdout
    finally:
        agent.stop()
        sink.stop()
