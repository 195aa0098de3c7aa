"""Real peers for integration tests, all on loopback: smtp-sink, dnsmasq, swaks.

Each helper starts a real process on a free port of a loopback address and stops it
on exit. Tests that need a peer which is not installed are skipped with the reason,
except under CI (CI=true), where a missing peer is a failure.
"""

from __future__ import annotations

import email
import email.policy
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest

LOOPBACK = ("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4", "::1")


def need(binary: str) -> str:
    """The path of ``binary``; skip (or fail under CI) when it is missing."""
    path = shutil.which(binary) or next((p for p in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.path.exists(p)), None)
    if path is None:
        message = f"{binary} is not installed (Debian: postfix, swaks, dnsmasq-base); .ci/run installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    assert host in LOOPBACK, host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.05)


@dataclass
class SmtpSink:
    """Postfix's smtp-sink: a real SMTP server that dumps each message to a file.

    ``options`` are passed as they are, for fault injection: ``["-f", "rcpt"]`` answers
    5xx to RCPT, ``["-r", "rcpt"]`` 4xx, ``["-q", "data"]`` drops the connection after
    DATA, ``["-Q", "mail"]`` sends 421 and disconnects.
    """

    folder: Path
    host: str = "127.0.0.1"
    port: int = 0
    options: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def start(self) -> SmtpSink:
        binary = need("smtp-sink")
        assert self.host in LOOPBACK
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            # smtp-sink writes as "nobody": every folder above the dump folder must let it through.
            for folder in (self.folder, *self.folder.parents):
                if folder == Path(folder.anchor):
                    break
                os.chmod(folder, os.stat(folder).st_mode | (0o777 if folder == self.folder else 0o711))
        self.port = self.port or free_port(self.host)
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.proc = subprocess.Popen(
            [binary, *user, "-d", f"{self.folder}/%H%M%S.", *self.options, addr, "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_port(self.host, self.port)
        # Something else may answer on the port (another test run took it meanwhile): then ours has exited.
        time.sleep(0.05)
        if self.proc.poll() is not None:
            error = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"smtp-sink on {addr} exited at start: {error.strip()}")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def restart(self, options: list[str] | None = None) -> SmtpSink:
        self.stop()
        if options is not None:
            self.options = options
        return self.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def messages(self) -> list[Received]:
        """Every message received so far, oldest first, with its envelope."""
        found = []
        for path in self.folder.iterdir():
            if path.name.startswith("."):
                continue
            try:  # smtp-sink removes the dump of a transaction cut short, at any moment
                found.append((path.stat().st_mtime, path.name, path.read_bytes()))
            except FileNotFoundError:
                continue
        return [Received.parse(data) for _, _, data in sorted(found)]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.messages()
            if len(got) >= count or time.monotonic() > deadline:
                return got
            time.sleep(0.1)

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class Received:
    """One message as smtp-sink dumped it: envelope lines first, then the message."""

    sender: str
    recipients: list[str]
    client: str
    message: EmailMessage

    @classmethod
    def parse(cls, data: bytes) -> Received:
        msg = email.message_from_bytes(data, policy=email.policy.default)
        sender = (msg.get("X-Mail-Args") or "").split(" ")[0].strip("<>")
        rcpts = [str(v).split(" ")[0].strip("<>") for v in msg.get_all("X-Rcpt-Args") or []]
        return cls(sender=sender, recipients=rcpts, client=str(msg.get("X-Client-Addr", "")), message=msg)


@dataclass
class Dnsmasq:
    """A real DNS server (dnsmasq) on a high loopback port, serving only what it is told.

    ``records`` are dnsmasq options without the leading dashes, e.g.
    ``"mx-host=example.test,mx1.example.test,10"``, ``"host-record=mx1.example.test,127.0.0.2"``,
    ``"mx-host=nullmx.test,.,0"`` (a null MX). Names under .test that are not
    declared answer NXDOMAIN.
    """

    folder: Path
    records: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> Dnsmasq:
        """Start on ``port``, or on a free one: dnsmasq binds UDP and TCP, and a port free for
        UDP may be taken for TCP by another test run, so a chosen port is tried up to 5 times."""
        binary = need("dnsmasq")
        assert self.host in LOOPBACK
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "dnsmasq.conf"
        conf.write_text("")
        chosen = not self.port
        for attempt in range(5 if chosen else 1):
            if chosen:
                self.port = free_port(self.host, socket.SOCK_DGRAM)
            args = [
                binary,
                "--keep-in-foreground",
                "-C",
                str(conf),
                "--no-resolv",
                "--no-hosts",
                f"--listen-address={self.host}",
                "--bind-interfaces",
                f"--port={self.port}",
                "--local=/test/",
                f"--pid-file={self.folder / 'dnsmasq.pid'}",
            ]
            if os.geteuid() == 0:
                args.append("--user=root")
            args += [f"--{r}" for r in self.records]
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                self._wait()
                return self
            except RuntimeError as exc:
                if "Address already in use" not in str(exc) or attempt == (4 if chosen else 0):
                    raise
        return self

    def _wait(self, timeout: float = 10.0) -> None:
        import dns.message
        import dns.query

        deadline = time.monotonic() + timeout
        query = dns.message.make_query("ready.test", "A")
        while True:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                dns.query.udp(query, self.host, port=self.port, timeout=0.3)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def resolver(self):
        """A dnspython resolver that asks only this server (never the machine's resolv.conf)."""
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.host]
        res.port = self.port
        res.lifetime = 3.0
        return res

    def __enter__(self) -> Dnsmasq:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def swaks(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run swaks (a real SMTP client) and return its result; output is text."""
    binary = need("swaks")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def smtp_sink(tmp_path):
    """A running smtp-sink on 127.0.0.1 dumping into tmp_path/sink."""
    with SmtpSink(tmp_path / "sink") as sink:
        yield sink
