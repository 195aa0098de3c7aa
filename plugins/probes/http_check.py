"""Runs one ``http`` check with httpx: a fresh connection each run, the answer read whole.

A fresh connection each run, not a kept-alive one: the check is "can a client reach the
service now", and only a new connection shows a refused port or a new certificate. The
TLS context is made once per ``ca_file`` (tcp_check.client_context). Imported by
``netchecks`` only when an ``http`` check is configured.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx

from alertmail import Sample
from alertmail.plugins.probes.netchecks import describe_error
from alertmail.plugins.probes.tcp_check import (
    certificate_problem,
    client_context,
    days_left_of,
    days_text,
    unverified_context,
    verify_reason,
)

# The most of a body read to match ``contains`` against; the rest is read and dropped.
MAX_BODY = 1 << 20
USER_AGENT = "alertmail-http-check"


@dataclass
class Result:
    up: bool
    detail: str
    status: int | None = None
    seconds: float | None = None
    days_left: float | None = None

    def samples(self, check: dict[str, Any], stamp: float) -> list[Sample]:
        labels = {"check": check["name"]}
        out = [Sample("http.up", 1.0 if self.up else 0.0, labels, stamp)]
        if self.status is not None:
            out.append(Sample("http.status_code", self.status, labels, stamp))
        if self.seconds is not None:
            out.append(Sample("http.response_seconds", self.seconds, labels, stamp))
        if self.days_left is not None:
            out.append(Sample("http.cert_days_left", self.days_left, labels, stamp))
        return out


def _client(check: dict[str, Any], verify: bool) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=client_context(check["ca_file"]) if verify else unverified_context(),
        timeout=check["timeout"],
        follow_redirects=check["follow_redirects"],
        headers={"User-Agent": USER_AGENT, **(check["headers"] or {})},
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


async def _fetch(check: dict[str, Any], verify: bool) -> tuple[int, str, float | None, float, str]:
    """(status, body text, certificate days left, seconds, reason phrase) of one request."""
    start = time.perf_counter()
    async with _client(check, verify) as client, client.stream(check["method"], check["url"]) as response:
        stream = response.extensions.get("network_stream")
        ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
        days = days_left_of(ssl_object)
        body = bytearray()
        async for chunk in response.aiter_bytes():
            if len(body) < MAX_BODY:
                body += chunk[: MAX_BODY - len(body)]
        seconds = time.perf_counter() - start
        text = body.decode(response.encoding or "utf-8", "replace")
        return response.status_code, text, days, seconds, response.reason_phrase


def _reason(exc: BaseException) -> str:
    """The system's reason behind a library's error ("connection refused"), else the library's words."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno is not None:
            return describe_error(cause)
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


async def run(check: dict[str, Any]) -> Result:
    """One run of one check; never raises for what the server does."""
    url = check["url"]
    https = url.lower().startswith("https:")
    try:
        status, body, days, seconds, phrase = await asyncio.wait_for(_fetch(check, verify=True), check["timeout"])
    except (httpx.TimeoutException, TimeoutError):
        return Result(False, f"{url}: no answer within {check['timeout']:g}s")
    except httpx.TransportError as exc:
        bad_cert = verify_reason(exc)
        if bad_cert is None:
            return Result(False, f"{url}: {_reason(exc)}")
        detail = f"{url}: certificate not valid: {certificate_problem(bad_cert)}"
        days = None
        try:  # once more, unchecked, only to read the certificate's dates
            days = (await asyncio.wait_for(_fetch(check, verify=False), check["timeout"]))[2]
        except (httpx.HTTPError, ValueError, TimeoutError):
            pass
        if days is not None:
            detail += f"; it {days_text(days)}"
        return Result(False, detail, days_left=days)
    except httpx.HTTPError as exc:  # a redirect loop, a bad redirect address
        return Result(False, f"{url}: {exc}")
    expected = check["expect_status"]
    ok_status = status in expected if expected else status < 400
    detail = f"{url}: HTTP {status} {phrase} in {seconds * 1000:.0f} ms".rstrip()
    up = ok_status
    if not ok_status:
        want = ", ".join(map(str, expected)) if expected else "below 400"
        detail += f"; expected {want}"
    elif check["contains"] is not None and not check["contains"].search(body):
        up = False
        detail += f"; the body does not match {check['contains'].pattern!r}"
    if https and days is not None:
        detail += f"; certificate {days_text(days)}"
    return Result(up, detail, status, seconds, days)
