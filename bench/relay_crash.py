"""Crash proof: kill -9 each relay process in turn under load, and count what reaches the sink.

Clients send messages with unique Message-IDs over SMTP; a message counts as
acknowledged when the relay answered 250 to its DATA. After ``--kill-after``
acknowledgements a receiving process gets SIGKILL (the agent starts another), and
again every ``--kill-every`` acknowledgements the next one, until each has been
killed once; then the agent's own process (which delivers, and whose receiving
processes stop with it) is killed and ``alertmail relay`` started again on the same
state folder. The clients carry on throughout (retrying what got no 250). At the end
every acknowledged Message-ID must be at the smtp-sink: the line ``missing 0`` says so,
and the exit status is 0 only then. Duplicates (delivered, but the crash came before
the queue forgot the message) are allowed and counted: at-least-once.

    python bench/relay_crash.py --messages 3000 --clients 10 --kill-after 600 --workers 2
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.peers import SmtpSink
from tests.relay_peers import private_folder, start_relay


class Load:
    """Client threads sharing a counter of messages still to send."""

    def __init__(self, port: int, total: int, size: int) -> None:
        self.port = port
        self.left = total
        self.size = size
        self.acked: list[str] = []
        self.failures = 0
        self.lock = threading.Lock()

    def next_message(self) -> bytes | None:
        with self.lock:
            if self.left <= 0:
                return None
            self.left -= 1
        mid = f"<{uuid.uuid4().hex}@crash.test>"
        body = ("x" * 70 + "\r\n") * max(1, self.size // 72)
        return f"Message-Id: {mid}\r\nSubject: crash proof\r\n\r\n{body}".encode()

    def client(self) -> None:
        data = self.next_message()
        while data is not None:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, local_hostname="crash.test", timeout=10) as smtp:
                    while data is not None:
                        smtp.sendmail("load@crash.test", ["sink@example.test"], data)
                        with self.lock:
                            self.acked.append(message_id(data))
                        data = self.next_message()
            except (OSError, smtplib.SMTPException):
                with self.lock:
                    self.failures += 1
                time.sleep(0.05)  # the relay is down or restarting: try the same message again


def message_id(data: bytes) -> str:
    return data.split(b"\r\n", 1)[0].split(b": ", 1)[1].decode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--kill-after", type=int, default=800, help="acknowledged messages before the first SIGKILL")
    parser.add_argument("--kill-every", type=int, default=300, help="acknowledged messages between two SIGKILLs")
    parser.add_argument("--workers", type=int, default=2, help="[relay].workers: receiving processes, each killed once")
    parser.add_argument("--size", type=int, default=2048, help="bytes per message body")
    parser.add_argument("--folder", type=Path, default=None, help="work folder (default: a temporary one, removed at exit)")
    args = parser.parse_args(argv)

    folder = args.folder or private_folder("relay-crash-")
    sink = SmtpSink(folder / "sink").start()
    relay = start_relay(folder / "relay", sink, {"workers": args.workers})
    try:
        load = Load(relay.port, args.messages, args.size)
        threads = [threading.Thread(target=load.client, daemon=True) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        victims = [f"receiving process {i + 1}" for i in range(args.workers)] + ["agent"]
        threshold = args.kill_after
        for victim in victims:
            while len(load.acked) < threshold and any(t.is_alive() for t in threads):
                time.sleep(0.005)
            at_kill = len(load.acked)
            if victim == "agent":
                relay.kill()
                print(f"killed -9 the agent after {at_kill} acknowledged messages", flush=True)
                relay.start()
            else:
                pids = relay.pids()[1:]
                if not pids:
                    print(f"no receiving process to kill after {at_kill} acknowledged messages", flush=True)
                    continue
                os.kill(pids[0], signal.SIGKILL)
                print(f"killed -9 {victim} (pid {pids[0]}) after {at_kill} acknowledged messages", flush=True)
            threshold = at_kill + args.kill_every
        for thread in threads:
            thread.join(300)
        acked = set(load.acked)
        deadline = time.monotonic() + 120
        while True:
            seen = Counter(str(m.message["Message-ID"]) for m in sink.messages())
            missing = acked - set(seen)
            if not missing or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        duplicates = sum(n - 1 for mid, n in seen.items() if mid in acked and n > 1)
        restarted = relay.output().count("starting it again")
        print(f"receiving processes started again by the agent: {restarted}")
        print(
            f"acknowledged {len(acked)} delivered {len(acked & set(seen))} missing {len(missing)} "
            f"duplicates {duplicates} client retries {load.failures}"
        )
        return 0 if not missing else 1
    finally:
        relay.stop()
        sink.stop()


if __name__ == "__main__":
    sys.exit(main())
