"""Running ``alertmail relay`` as a real process for tests and bench scripts.

The relay delivers through the mx transport in smart-host mode to an smtp-sink, so
what it accepted can be read back from the sink's dump folder.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from tests.peers import SmtpSink, free_port, need

REPO = Path(__file__).resolve().parent.parent
# The installed entry point's code, run by this interpreter (works without the venv's bin/ on PATH).
ALERTMAIL = [sys.executable, "-c", "import sys; from alertmail.cli import main; sys.argv[0] = 'alertmail'; main()"]
# The same, with every relay session built by aiosmtpd's own SMTP.__init__ (the path taken
# on an aiosmtpd release the relay's fast path was not checked against). The fast path is
# made uncallable, so a session that still took it would fail instead of passing unseen.
ALERTMAIL_AIOSMTPD_INIT = [
    sys.executable,
    "-c",
    "import sys; from alertmail.plugins.relay import server; server._FAST_INIT = False; "
    "server.RelaySMTP._init_fast = None; from alertmail.cli import main; sys.argv[0] = 'alertmail'; main()",
]


def private_folder(prefix: str) -> Path:
    """A fresh folder outside pytest's basetemp, removed at exit."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def relay_config(
    folder: Path,
    sink: SmtpSink,
    port: int,
    relay: dict[str, Any] | None = None,
    *,
    agent: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
) -> Path:
    """Write a config for a relay on 127.0.0.1:``port`` that delivers to ``sink``."""
    config: dict[str, Any] = {
        "agent": {"state_dir": str(folder / "var"), "hostname": "relay.test", "log_level": "info", **(agent or {})},
        "mail": {"route": ["mx"]},
        "queue": {"retry": ["1s"], **(queue or {})},
        "transports": {"mx": {"mode": "smarthost", "smart_host": f"[{sink.host}]:{sink.port}", "tls": "none"}},
        "relay": {
            "enabled": True,
            "listen": [f"127.0.0.1:{port}", *(relay or {}).pop("also_listen", [])],
            "hostname": "relay.test",
            "greet_pause": "0.3s",
            "pickup_interval": "0.2s",
            **(relay or {}),
        },
    }
    path = folder / "config.toml"
    path.write_text(tomli_w.dumps(config))
    return path


def self_signed(folder: Path, name: str = "relay.test") -> tuple[Path, Path]:
    """A throwaway certificate and key made with openssl (EC P-256: fast to make)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            need("openssl"),
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


@dataclass
class RelayProcess:
    """``alertmail relay -c CONFIG`` (or ``alertmail run``) in its own process, its stderr in a file."""

    config: Path
    port: int
    command: list[str] = field(default_factory=lambda: list(ALERTMAIL))
    subcommand: str = "relay"
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)
    _seen: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.log = self.config.parent / "relay.stderr"

    @property
    def state_dir(self) -> Path:
        return self.config.parent / "var"

    def start(self, timeout: float = 20.0) -> RelayProcess:
        self._seen = len(self.output())  # a restart looks for its own "listening" line, not the last start's
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [*self.command, self.subcommand, "-c", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                cwd=self.config.parent,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
        deadline = time.monotonic() + timeout
        mark = f"relay listening on 127.0.0.1:{self.port}"
        while not self._ready(mark):
            if self.proc.poll() is not None:
                raise RuntimeError(f"relay exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"relay did not start:\n{self.output()}")
            time.sleep(0.05)
        return self

    def _ready(self, mark: str) -> bool:
        if self.subcommand == "relay":
            return mark in self.output()[self._seen :]
        try:  # `alertmail run` says nothing when the relay listens: its banner says it
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                return conn.recv(4).startswith(b"220")
        except OSError:
            return False

    def pids(self) -> list[int]:
        """The relay's process and its receiving processes."""
        import psutil

        assert self.proc is not None
        return [self.proc.pid, *(child.pid for child in psutil.Process(self.proc.pid).children())]

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def start_relay(
    folder: Path,
    sink: SmtpSink,
    relay: dict[str, Any] | None = None,
    *,
    command: list[str] | None = None,
) -> RelayProcess:
    """A running relay on 127.0.0.1 (``relay["also_listen"]`` adds addresses) delivering to ``sink``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    return RelayProcess(relay_config(folder, sink, port, relay), port, command or list(ALERTMAIL)).start()


def users_file(folder: Path, users: dict[str, str]) -> Path:
    """A relay users file made by `alertmail relay passwd`, as an operator makes it."""
    path = folder / "relay-users"
    for user, password in users.items():
        subprocess.run(
            [*ALERTMAIL, "relay", "passwd", user, "--file", str(path), "--password-stdin"],
            input=password + "\n",
            text=True,
            check=True,
            capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    return path


def swaks_to(port: int, *args: str, mid: str | None = None, source: str = "127.0.0.1") -> str:
    """swaks to a relay on 127.0.0.1:``port`` from ``source``; the whole transcript."""
    from tests.peers import swaks

    head = ["--header", f"Message-Id: {mid}"] if mid else []
    result = swaks(
        "--server",
        f"127.0.0.1:{port}",
        "--local-interface",
        source,
        "--from",
        "app@client.test",
        "--helo",
        "client.test",
        *head,
        *args,
        timeout=20,
    )
    return result.stdout + result.stderr


def message_id() -> str:
    return f"<{uuid.uuid4().hex}@client.test>"


def received(sink: SmtpSink, mid: str, timeout: float = 15.0):
    """The sink's copies of the message with Message-ID ``mid`` (waits until one arrives)."""
    deadline = time.monotonic() + timeout
    while True:
        if sink.proc is None or sink.proc.poll() is not None:
            raise RuntimeError(f"smtp-sink is gone: {sink.proc.stderr.read().decode() if sink.proc else ''}")
        found = [m for m in sink.messages() if m.message["Message-ID"] == mid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
