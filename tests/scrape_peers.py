"""A real Prometheus node_exporter (Debian's prometheus-node-exporter) on an ephemeral loopback port,
with a textfile-collector folder the test writes into."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.peers import free_port, wait_port


def need_node_exporter() -> str:
    path = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if path is None:
        message = "prometheus-node-exporter is not installed (Debian: prometheus-node-exporter); .ci/peers installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def write_prom(folder: Path, name: str, text: str) -> Path:
    """Write a textfile-collector file as cron jobs should: whole, by rename."""
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.part"
    part.write_text(text)
    os.replace(part, folder / name)
    return folder / name


@dataclass
class NodeExporter:
    textfiles: Path
    port: int = 0
    proc: subprocess.Popen | None = None

    def start(self) -> NodeExporter:
        binary = need_node_exporter()
        self.textfiles.mkdir(parents=True, exist_ok=True)
        for _ in range(3):  # another test run may take the port between free_port() and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    f"--collector.textfile.directory={self.textfiles}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                wait_port("127.0.0.1", self.port)
            except TimeoutError:
                self.stop()
                continue
            time.sleep(0.05)
            if self.proc.poll() is None:
                return self
        raise RuntimeError("node_exporter did not start on a free loopback port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def __enter__(self) -> NodeExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
