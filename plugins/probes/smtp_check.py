"""Runs one ``smtp`` check: banner, EHLO, optionally STARTTLS, QUIT, each step timed.

Spoken by hand over asyncio streams rather than through an SMTP library: the check must
do exactly these steps, time each, and never start TLS or anything else on its own.
Imported by ``netchecks`` only when an ``smtp`` check is configured.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Any

from alertmail import Sample
from alertmail.plugins.probes.netchecks import describe_error
from alertmail.plugins.probes.tcp_check import certificate_problem, client_context, close, read_reply, unverified_context


@dataclass
class Result:
    up: bool
    detail: str
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds, for the steps that completed

    def samples(self, check: dict[str, Any], stamp: float) -> list[Sample]:
        out = [Sample("smtp.up", 1.0 if self.up else 0.0, {"check": check["name"]}, stamp)]
        out += [
            Sample("smtp.response_seconds", seconds, {"check": check["name"], "step": step}, stamp)
            for step, seconds in self.steps.items()
        ]
        return out


class Refused(Exception):
    """The server answered a step with something else than expected."""


async def _dialogue(check: dict[str, Any], steps: dict[str, float]) -> None:
    host, port = check["host"], check["port"]
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(host, port)
    try:

        async def step(name: str, command: str | None, expect: str) -> str:
            began = time.perf_counter()
            if command is not None:
                writer.write(command.encode() + b"\r\n")
                await writer.drain()
            answer = await read_reply(reader, "smtp")
            if not answer.startswith(expect):
                raise Refused(f"{name}: the server answered {answer.splitlines()[-1][:200]!r}")
            steps[name] = time.perf_counter() - (start if name == "banner" else began)
            return answer

        ehlo = check["ehlo"] or socket.gethostname() or "alertmail.invalid"
        await step("banner", None, "220")
        extensions = await step("ehlo", f"EHLO {ehlo}", "250")
        if check["starttls"]:
            if "STARTTLS" not in extensions.upper():
                raise Refused("starttls: not offered in the EHLO answer")
            began = time.perf_counter()
            await step("starttls", "STARTTLS", "220")
            context = client_context(check["ca_file"]) if check["verify"] else unverified_context()
            await writer.start_tls(context, server_hostname=host)
            steps["starttls"] = time.perf_counter() - began
            await step("ehlo_tls", f"EHLO {ehlo}", "250")
            del steps["ehlo_tls"]
        await step("quit", "QUIT", "221")
        steps["total"] = time.perf_counter() - start
    finally:
        await close(writer)


async def run(check: dict[str, Any]) -> Result:
    """One run of one check; never raises for what the server does."""
    where = f"{check['host']}:{check['port']}"
    steps: dict[str, float] = {}
    try:
        await asyncio.wait_for(_dialogue(check, steps), check["timeout"])
    except TimeoutError:
        done = ", ".join(steps) or "nothing"
        return Result(False, f"{where}: no answer within {check['timeout']:g}s (done: {done})", steps)
    except Refused as exc:
        return Result(False, f"{where}: {exc}", steps)
    except ssl.SSLCertVerificationError as exc:
        return Result(False, f"{where}: STARTTLS certificate not valid: {certificate_problem(exc)}", steps)
    except ssl.SSLError as exc:
        return Result(False, f"{where}: STARTTLS handshake failed: {exc.reason or exc}", steps)
    except (OSError, EOFError) as exc:
        return Result(False, f"{where}: {describe_error(exc)}", steps)
    timings = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in steps.items())
    return Result(True, f"{where} answered: {timings}", steps)
