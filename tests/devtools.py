"""Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``):
JSON messages ended by NUL on file descriptors 3 (to Chromium) and 4 (from it), no WebSocket."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.peers import need

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--remote-debugging-pipe",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


class Browser:
    """One headless Chromium with one page; ``call`` a DevTools method, ``wait_event`` for an event."""

    def __init__(self, profile: Path) -> None:
        to_chromium, self._out = os.pipe()
        self._in, from_chromium = os.pipe()

        def descriptors() -> None:  # in the child: the pipe's ends on 3 and 4, as Chromium expects
            a, b = os.dup(to_chromium), os.dup(from_chromium)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [need("chromium"), *FLAGS, f"--user-data-dir={profile}", "about:blank"],
            close_fds=False,
            preexec_fn=descriptors,  # noqa: PLW1509  only dup2 in the child, before exec
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            assert time.monotonic() < deadline, "Chromium did not answer"
            chunk = os.read(self._in, 65536)
            assert chunk, "Chromium closed the pipe"
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, *, session: bool = False, timeout: float = 30.0, **params: Any) -> dict[str, Any]:
        self._next += 1
        message: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next:
                assert "error" not in answer, answer
                return answer["result"]
            if "method" in answer:
                self._events.append(answer)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self._events):
                if event["method"] == method:
                    return self._events.pop(i)
            self._events.append(self._read(deadline))

    def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (DevTools runs it whatever the page's CSP allows)."""
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str) -> None:
        self._events = [e for e in self._events if e["method"] != "Page.loadEventFired"]
        self.call("Page.navigate", session=True, url=url)
        self.wait_event("Page.loadEventFired")

    def close(self) -> None:
        for fd in (self._out, self._in):
            os.close(fd)
        self.proc.kill()
        self.proc.wait(10)
