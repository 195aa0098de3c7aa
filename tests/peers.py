"""Real peers for integration tests, all on loopback: smtp-sink, dnsmasq, swaks.

Each helper starts a real process on a free port of a loopback address and stops it
on exit. Tests that need a peer which is not installed are skipped with the reason,
except under CI (CI=true), where a missing peer is a failure.
"""

from __future__ import annotations

import email
import email.policy
import os
import random
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


_PICK = random.SystemRandom()  # not the module's generator: Hypothesis seeds that one alike in every worker


def ephemeral_low() -> int:
    """The lowest port the kernel gives the local end of an outgoing connection."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", kind: int = socket.SOCK_STREAM) -> int:
    """A port nobody holds now on ``host``, for a peer started a little later.

    It is chosen below the kernel's ephemeral range: a port the kernel handed out (a bind to
    port 0) goes back into the pool the moment it is free, and any outgoing connection on the
    machine may take it as its local port before the peer binds it ("Address already in use").
    Ports below the range are only ever taken by an explicit bind.
    """
    assert host in LOOPBACK, host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    low = ephemeral_low()
    for _ in range(200):
        port = _PICK.randrange(max(1024, low - 20000), low)
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} on {host}")


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


class PortTaken(RuntimeError):
    """A peer could not bind its port (another test run holds it)."""


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
        # A port we chose may be taken by another test run before smtp-sink binds it: then
        # ours exits, and we try another. A port the test chose (its config names it) is kept.
        chosen = not self.port
        for attempt in range(5 if chosen else 1):
            if chosen:
                self.port = free_port(self.host)
            try:
                return self._launch(binary)
            except PortTaken:
                if attempt == 4 or not chosen:
                    raise
        raise AssertionError("unreachable")

    def _launch(self, binary: str) -> SmtpSink:
        # As root smtp-sink must be told a user: the test's own. As "nobody" it lost its dump folder
        # whenever another pytest session started, as pytest then closes /tmp/pytest-of-root (0700):
        # the sink died at its next message.
        user = ["-u", "root"] if os.geteuid() == 0 else []
        addr = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        self.proc = subprocess.Popen(
            [binary, *user, "-d", f"{self.folder}/%H%M%S.", *self.options, addr, "256"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # With the port taken, something else answers on it while ours exits, and mail sent to
        # the port lands in the other run's sink. A busy machine can let that other listener
        # answer long before ours even tries to bind, so wait until the listening socket is the
        # one our process holds, not merely until the port answers.
        deadline = time.monotonic() + 10.0
        while not self._listening():
            if self.proc.poll() is not None:
                error = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.proc = None
                raise PortTaken(f"smtp-sink on {addr} exited at start: {error.strip()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"smtp-sink does not listen on {addr} after 10s")
            time.sleep(0.05)
        wait_port(self.host, self.port)
        return self

    def _listening(self) -> bool:
        """Whether our smtp-sink process itself holds the listening socket on our port."""
        assert self.proc is not None
        try:
            inodes = {
                os.readlink(fd).removeprefix("socket:[").removesuffix("]")
                for fd in Path(f"/proc/{self.proc.pid}/fd").iterdir()
                if os.readlink(fd).startswith("socket:[")
            }
        except OSError:
            return False
        table = Path("/proc/net/tcp6" if ":" in self.host else "/proc/net/tcp")
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == self.port and inode in inodes:
                return True
        return False

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
        return [Received.parse(data) for data in self.dumps()]

    def dumps(self) -> list[bytes]:
        """The dump file of every complete transaction so far, oldest first.

        smtp-sink creates the dump file at MAIL FROM and writes it in buffer-sized
        chunks while DATA comes in; it closes the file (complete, ending with the
        empty line of its dump format) before it answers the final dot, and removes
        the file of a transaction cut short. A file the sink still holds open, or that
        does not end with that empty line yet, is a transaction in progress: it is
        left for a later call, never read as a message of its own.
        """
        found = []
        writing = self._held_open()
        for path in self.folder.iterdir():
            if path.name.startswith(".") or path.name in writing:
                continue
            try:  # smtp-sink removes the dump of a transaction cut short, at any moment
                stamp, data = path.stat().st_mtime, path.read_bytes()
            except FileNotFoundError:
                continue
            if data.endswith(b"\n\n") and path.name not in self._held_open():
                found.append((stamp, path.name, data))
        return [data for _, _, data in sorted(found)]

    def _held_open(self) -> set[str]:
        """The names of the dump files the running sink has open for writing."""
        if self.proc is None or self.proc.poll() is not None:
            return set()
        names = set()
        fds = Path(f"/proc/{self.proc.pid}/fd")
        try:
            entries = list(fds.iterdir())
        except OSError:  # no /proc (or the sink just exited): the dump format check remains
            return set()
        for fd in entries:
            try:
                target = Path(os.readlink(fd))
            except OSError:
                continue
            if target.parent == self.folder.resolve():
                names.add(target.name)
        return names

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
