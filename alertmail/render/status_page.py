"""The status page on the exporter's HTTP server (``/``): what ``alertmail status`` says, in the alert mail's style.

The alerts firing and pending are shown as an alert mail shows them (state badges,
conditions, charts), then the agent, silences, probes, the queue and the last mails.
Charts are PNGs inlined as ``data:`` URIs, so the page loads nothing else; the server
sends it with a Content-Security-Policy that allows nothing else either.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from alertmail.render.format import header_safe, human_duration
from alertmail.render.view import RenderContext
from alertmail.rules.model import AlertEvent

PENDING_COLOUR = "#5f6b7a"
PAGE_ROWS = 200  # alerts listed on the page; `alertmail status --json` lists every one
ALL_CLEAR = "#1e8449"


def _when(iso: str | None) -> float | None:
    return dt.datetime.fromisoformat(iso).timestamp() if iso else None


def _ago(iso: str | None, now: float) -> str:
    t = _when(iso)
    return "never" if t is None else f"{human_duration(max(now - t, 0))} ago"


def _until(iso: str | None, now: float) -> str:
    t = _when(iso)
    return "" if t is None else ("now" if t <= now else f"in {human_duration(t - now)}")


def facts(answer: Mapping[str, Any], ctx: RenderContext, now: float) -> dict[str, Any]:
    """The status answer (alertmail.control.status) as short strings for the page."""
    about = answer["agent"]
    reload = about.get("last_reload")
    if reload is None:
        reloaded = "none since start"
    else:
        outcome = "applied" if reload["ok"] else "refused: " + ("; ".join(reload.get("problems") or []) or "see the log")
        reloaded = f"{_ago(reload['at'], now)}, {header_safe(outcome, 500)}"
    queue = answer["queue"]
    return {
        "agent": [
            ("pid", str(about["pid"])),
            ("version", header_safe(about["version"], 40)),
            ("config", header_safe(about["config"] or "", 500)),
            ("up", f"{human_duration(about['uptime_seconds'])}, since {ctx.clock(_when(about['started']) or now, now)}"),
            ("last reload", reloaded),
        ],
        "silences": [
            {
                "id": header_safe(s["id"], 60),
                "matchers": header_safe(s["matchers"], 300),
                "when": (
                    f"ends {_until(s['ends'], now)} ({ctx.clock(_when(s['ends']) or now, now)})"
                    if s["ends"]
                    else header_safe(s["schedule"], 200)
                ),
                "active": s["active"],
                "comment": header_safe(s["comment"], 300),
                "expirable": s.get("source") == "cli",
            }
            for s in answer["silences"]
        ],
        "probes": [
            {
                "name": header_safe(p["name"], 60),
                "every": f"{p['interval']:g}s" if p["interval"] < 60 else human_duration(p["interval"]),
                "last": _ago(p["last_run"], now),
                "took": f"{p['duration']:.2f}s" if p["duration"] is not None else "-",
                "failures": f"{p['failures']} of {p['runs']}" if p["failures"] else "none",
                "error": header_safe(p["last_error"] or "", 300),
            }
            for p in answer["probes"]
        ],
        "queue": {
            "depth": queue["depth"],
            "oldest": _ago(queue["oldest"], now) if queue["oldest"] else "",
            "held": [
                {"id": h["id"], "reason": header_safe(h["reason"], 300), "since": _ago(h["since"], now)} for h in queue["held"]
            ],
            "waiting": [
                {
                    "id": w["id"],
                    "to": header_safe(", ".join(w["recipients"]), 300),
                    "attempts": w["attempts"],
                    "next": _until(w["next_try"], now) if w["next_try"] else "",
                    "error": header_safe(w["last_error"] or "", 300),
                }
                for w in queue["waiting"]
                if not w["held"]
            ],
        },
        "mails": [
            {
                "when": _ago(m["time"], now),
                "fate": header_safe(m["fate"], 30),
                "subject": header_safe(m["subject"] or "", 250),
                "detail": header_safe(m["detail"] or "", 300),
            }
            for m in answer["mails"]
        ],
    }


def render_status_page(
    events: Sequence[AlertEvent],
    silenced: Mapping[str, str],
    answer: Mapping[str, Any],
    ctx: RenderContext,
    now: float,
    controls: Mapping[str, str] | None = None,
) -> str:
    """The page's HTML: ``events`` are the alerts firing and pending as of ``now`` (``kind`` "firing" or
    "pending"), ``silenced`` maps an alert's incident id to the silence holding it back. ``controls``
    (``user``, ``token``: a signed-in user and their CSRF token) adds the forms that act: add and
    expire silences, retry queued mail; without it the page is read-only."""
    from alertmail.render.mail import mail_variables
    from alertmail.render.templating import _environment

    host = header_safe(ctx.hostname)
    images: list[tuple[str, bytes]] = []
    if events:
        variables, images = mail_variables(events[:PAGE_ROWS], ctx)  # worst first already: the rest only counted
        variables["alert_count"] = len(events)
        pending = [e for e in events if e.kind == "pending"]
        firing = len(events) - len(pending)
        variables["alerts"] = [replace(a, colour=PENDING_COLOUR) if a.kind == "pending" else a for a in variables["alerts"]]
        variables["detailed"] = [replace(a, colour=PENDING_COLOUR) if a.kind == "pending" else a for a in variables["detailed"]]
        if not firing:
            variables["colour"] = PENDING_COLOUR
        variables["headline"] = f"{firing} firing, {len(pending)} pending on {host}"
    else:
        variables = {"alerts": [], "detailed": [], "alert_count": 0, "colour": ALL_CLEAR, "notice": "", "rules": []}
        variables["headline"] = f"all clear on {host}"
    variables.update(
        subject=f"alertmail on {host}: {variables['headline']}",
        hostname=host,
        timezone=ctx.timezone,
        generated_at=ctx.clock(now),
        silenced={header_safe(k, 120): header_safe(v, 60) for k, v in silenced.items()},
        facts=facts(answer, ctx, now),
        controls={"user": header_safe(controls["user"], 60), "token": controls["token"]} if controls else None,
    )
    html = _environment(None).get_template("status.html.j2").render(variables)
    for cid, png in images:
        html = html.replace(f"cid:{cid[1:-1]}", "data:image/png;base64," + base64.b64encode(png).decode())
    return html
