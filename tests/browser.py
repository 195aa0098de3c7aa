"""Alert mails in a real browser (headless Chromium): sample mails, layout measured in a frame, screenshots.

Headless Chromium lays out no narrower than 500 px, so a phone's 390 px viewport is an
iframe of that width inside a wider window: its document is measured by a script of the
outer page (``--dump-dom`` prints the DOM after the script wrote the figures into it), and
screenshots are cropped to the frame.
"""

from __future__ import annotations

import base64
import html as html_mod
import io
import json
import math
import re
import subprocess
import tempfile
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from alertmail.render.context import ProcessRow
from alertmail.render.mail import render_alert
from alertmail.render.view import RenderContext
from alertmail.rules.model import AlertEvent, Rule
from tests.peers import need

AT = 1768482180.0  # 2026-01-15 13:03 UTC, 14:03 CET
MIN_WINDOW = 500  # headless Chromium's narrowest layout viewport

DISK = Rule(
    name="disk-root-full",
    metric="disk.used_percent",
    above=90,
    clear=85,
    severity="critical",
    description="Root filesystem nearly full: rotate /var/log or grow the volume.",
    runbook="https://wiki.example.com/runbooks/disk-full",
)
CPU = Rule(name="cpu-busy", metric="cpu.percent", above=85, clear=70, severity="warning")
MEMORY = Rule(name="memory-high", metric="memory.used_percent", above=90, severity="warning")
PROCESSES = [
    ProcessRow("ffmpeg", 48211, 181.3, 412 * 2**20),
    ProcessRow("postgres", 1022, 22.5, int(1.8 * 2**30)),
    ProcessRow("python3", 3310, 9.1, 96 * 2**20),
    ProcessRow("nginx", 871, 2.4, 24 * 2**20),
    ProcessRow("alertmail", 640, 0.3, 31 * 2**20),
]
EXTRA = {
    "top_processes": {"cpu": PROCESSES, "memory": sorted(PROCESSES, key=lambda p: -p.rss)},
    "disk": {
        "/": {
            "total": 50 * 2**30,
            "used": 46.7 * 2**30,
            "free": 3.3 * 2**30,
            "percent": 93.4,
            "growth_per_hour": 1.1 * 2**30,
            "full_in_hours": 3.0,
        }
    },
}


def history(metric: str, labels) -> list[tuple[float, float]]:
    """An hour of samples as an agent keeps them: a disk filling, a CPU that got busy, memory that recovered."""
    if metric.startswith("disk"):
        # Filling faster and faster: crosses 90 % at 13:51 CET, when the alert fired, 93.4 % at 14:03.
        def used(i: int) -> float:
            return 72 + 18 * (i / 48) ** 2.2 + 0.5 * math.sin(i / 2) * (1 - i / 48) if i <= 48 else 90 + 3.4 * (i - 48) / 12

        return [(AT - 3600 + i * 60, used(i)) for i in range(61)]
    if metric.startswith("memory"):
        # Above 90 from 13:32 to 14:01 CET, then back down: resolved at 14:02.
        ago = [(60 - i / 2, AT - 3600 + i * 30) for i in range(119)]
        return [(t, 82 + 4 * math.sin(m / 2.5) if m > 31 else 93 + 1.5 * math.sin(m) if m > 1.5 else 83.1) for m, t in ago]
    return [(AT - 3600 + i * 30, (96 + 2 * math.sin(i) if i >= 110 else 28 + 9 * abs(math.sin(i / 5)))) for i in range(121)]


def context(charts: str = "in-process") -> RenderContext:
    return RenderContext(hostname="web01", timezone="Europe/Berlin", history=history, extra=EXTRA, charts=charts)


def single_mail(charts: str = "in-process") -> EmailMessage:
    """One disk alert with its chart, the disk's figures and a runbook link."""
    disk = AlertEvent(
        "firing", DISK, (("device", "/dev/sda1"), ("mount", "/")), 93.4, 90, ">", "critical", AT - 12 * 60, AT, "disk-1"
    )
    return render_alert([disk], context(charts))


def grouped_mail(charts: str = "in-process") -> EmailMessage:
    """A grouped mail: a critical disk alert, a busy CPU and a memory alert that recovered."""
    events = [
        AlertEvent(
            "firing", DISK, (("device", "/dev/sda1"), ("mount", "/")), 93.4, 90, ">", "critical", AT - 12 * 60, AT, "disk-1"
        ),
        AlertEvent("firing", CPU, (), 97.2, 85, ">", "warning", AT - 5 * 60, AT, "cpu-1"),
        AlertEvent("resolved", MEMORY, (), 83.1, 90, ">", "warning", AT - 31 * 60, AT - 60, "mem-1"),
    ]
    return render_alert(events, context(charts))


def digest_mail(disks: int = 8) -> EmailMessage:
    """A storm digest as the notifier folds one: ``disks`` disk alerts, a CPU alert still firing and a
    memory alert that recovered (more than 46 disks: cut to 50 rows and "and N more")."""
    from alertmail.notify.storm import StormGuard, render_digest

    events = [
        AlertEvent(
            "firing",
            DISK,
            (("device", f"/dev/sd{chr(97 + i % 4)}1"), ("mount", f"/srv/vol{i:02d}")),
            90.5 + i % 8,
            90,
            ">",
            "critical",
            AT - 900 + 10 * i,
            AT - 900 + 10 * i,
            f"disk-{i}",
        )
        for i in range(disks)
    ]
    events += [
        AlertEvent("firing", CPU, (), 97.2, 85, ">", "warning", AT - 840, AT - 840, "cpu-1"),
        AlertEvent("firing", MEMORY, (), 93.5, 90, ">", "warning", AT - 1800, AT - 800, "mem-1"),
        AlertEvent("resolved", MEMORY, (), 83.1, 90, ">", "warning", AT - 1800, AT - 60, "mem-1"),
        AlertEvent("reminder", CPU, (), 98.0, 85, ">", "warning", AT - 840, AT - 30, "cpu-1"),
    ]
    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin")
    return render_digest(events, AT - 900, StormGuard(10, 900.0), ctx, Path("/var/lib/alertmail/logs/alerts.jsonl"))


def heartbeat_mail() -> EmailMessage:
    """A daily heartbeat: a busy day with one alert still firing, a deferred message and a silence."""
    from alertmail.notify.heartbeat import RuleSummary, Summary, render_heartbeat

    summary = Summary(
        start=AT - 86400,
        end=AT,
        rules={
            "disk-root-full": RuleSummary("disk-root-full", {"firing": 1, "reminder": 2}, 720.0, 1, 1),
            "memory-high": RuleSummary("memory-high", {"firing": 2, "resolved": 2}, 3540.0, 2, 0),
            "cpu-busy": RuleSummary("cpu-busy", {"firing": 1, "resolved": 1}, 300.0, 1, 0),
        },
        silenced=1,
        mails={"alert": 7, "digest": 1},
        mail_ids=[],
        queue={
            "queued": 1,
            "deferred": 1,
            "oldest_seconds": 540.0,
            "badmail": 0,
            "accepted_since_start": 31,
            "last_error": "451 4.7.1 greylisted, try again later",
            "mail_outcomes": {"delivered": 7, "waiting": 1, "failed": 0},
        },
        silences=["7f3a: rule=backup-*; every Sun 02:00–04:00 CET — weekly backup window"],
        watching={"probes": ["cpu", "disk", "load", "memory", "net"], "intervals": [30.0, 60.0], "rules": 9},
    )
    return render_heartbeat(summary, hostname="web01", timezone="Europe/Berlin")


def inline_images(msg: EmailMessage) -> str:
    """The HTML part with each cid: image replaced by a data: URI, as a mail client shows it."""
    body = msg.get_body(("html",))
    assert body is not None, "the mail has no HTML part"
    html = body.get_content()
    for part in msg.walk():
        if part.get("Content-ID"):
            data = base64.b64encode(part.get_content()).decode()
            html = html.replace(f"cid:{part['Content-ID'].strip('<>')}", f"data:image/png;base64,{data}")
    return html


def chromium(*args: str, profile: Path) -> subprocess.CompletedProcess:
    binary = need("chromium")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


# The outer page's script: once the frame has loaded, its document's size, the images' state,
# and every element that reaches past the frame's right edge, as JSON in <body data-layout>.
MEASURE = r"""<script>
const frame = document.getElementById('mail');
function measure() {
  const doc = frame.contentDocument, root = doc.documentElement, width = frame.clientWidth;
  const wide = [...doc.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > width + 0.5)
    .map(e => e.tagName.toLowerCase() + ' ' + Math.round(e.getBoundingClientRect().right) + ': '
         + (e.textContent || e.getAttribute('alt') || '').trim().slice(0, 60));
  document.body.dataset.layout = JSON.stringify({
    frame: width, scrollWidth: root.scrollWidth, height: Math.ceil(root.getBoundingClientRect().height),
    images: [...doc.images].map(i => ({complete: i.complete, natural: [i.naturalWidth, i.naturalHeight],
                                       shown: [i.clientWidth, i.clientHeight], alt: i.alt})),
    links: [...doc.links].map(a => a.href),
    overflowing: wide.slice(0, 20),
    lowContrast: lowContrast(doc).slice(0, 20),
    smallestText: smallestText(doc),
  });
}
// The smallest font size any visible text is drawn in, in CSS px.
function smallestText(doc) {
  let least = Infinity;
  for (const e of doc.body.querySelectorAll('*')) {
    if (![...e.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())) continue;
    if (!e.getClientRects().length) continue;
    least = Math.min(least, parseFloat(getComputedStyle(e).fontSize));
  }
  return least === Infinity ? 0 : least;
}
// Text whose colour does not stand out from the background it is drawn on (WCAG 2 contrast:
// 4.5:1, 3:1 for large text). The background is the nearest one declared, else the canvas.
function rgb(text) { return (text.match(/[\d.]+/g) || []).map(Number); }
function luminance(c) {
  const [r, g, b] = c.slice(0, 3).map(v => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}
function lowContrast(doc) {
  const probe = doc.createElement('div');
  probe.style.backgroundColor = 'Canvas';
  doc.body.appendChild(probe);
  const canvas = rgb(getComputedStyle(probe).backgroundColor);
  probe.remove();
  const found = [];
  for (const e of doc.body.querySelectorAll('*')) {
    const text = [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
    if (!text) continue;
    const style = getComputedStyle(e);
    let back = null;
    for (let a = e; a && a.nodeType === 1; a = a.parentElement) {
      const c = rgb(getComputedStyle(a).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0)) { back = c; break; }
    }
    const [l1, l2] = [luminance(rgb(style.color)), luminance(back || canvas)].sort((x, y) => y - x);
    const ratio = (l1 + 0.05) / (l2 + 0.05);
    const size = parseFloat(style.fontSize), bold = parseInt(style.fontWeight) >= 700;
    const needed = size >= 24 || (bold && size >= 18.66) ? 3 : 4.5;
    const under = back ? 'rgb(' + back.join(', ') + ')' : 'the canvas';
    if (ratio < needed) found.push(ratio.toFixed(2) + ' ' + style.color + ' on ' + under + ': ' + text.slice(0, 40));
  }
  return found;
}
// Until the srcdoc loads, the frame holds an empty about:blank document, complete already.
const loaded = () => frame.contentDocument && frame.contentDocument.URL === 'about:srcdoc'
                     && frame.contentDocument.readyState === 'complete';
if (loaded()) measure(); else frame.addEventListener('load', measure);
</script>"""


def frame_page(mail_html: str, width: int, height: int) -> str:
    """An outer page holding the mail in an iframe ``width`` px wide at the top left corner."""
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8"></head>'
        '<body style="margin:0;padding:0;background:#fff;">'
        f'<iframe id="mail" width="{width}" height="{height}" style="border:0;display:block;" '
        f'srcdoc="{html_mod.escape(mail_html, quote=True)}"></iframe>'
    )


@dataclass
class Layout:
    frame: int
    scroll_width: int
    height: int
    images: list[dict]
    links: list[str]
    overflowing: list[str]
    low_contrast: list[str]
    smallest_text: float  # px: the smallest font any visible text uses


def measure(mail_html: str, width: int, *, folder: Path, dark: bool = False) -> Layout:
    """How the mail lays out in a frame ``width`` px wide, as Chromium measures it (``dark``: the
    reader's system asks for dark mode, ``prefers-color-scheme: dark``)."""
    page = folder / f"frame-{width}.html"
    page.write_text(frame_page(mail_html, width, 900) + MEASURE + "</body></html>", encoding="utf-8")
    done = chromium(
        "--dump-dom",
        "--virtual-time-budget=10000",
        f"--window-size={max(width, MIN_WINDOW)},900",
        *(["--force-dark-mode"] if dark else []),
        page.as_uri(),
        profile=folder / "profile",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'data-layout="([^"]*)"', done.stdout)
    assert found, f"the measuring script did not run: {done.stderr[-2000:]}"
    data = json.loads(html_mod.unescape(found.group(1)))
    return Layout(
        data["frame"],
        data["scrollWidth"],
        data["height"],
        data["images"],
        data["links"],
        data["overflowing"],
        data["lowContrast"],
        data["smallestText"],
    )


def screenshot(mail_html: str, width: int, out: Path, *, dark: bool = False) -> Layout:
    """A PNG of the whole mail as it shows in a viewport ``width`` px wide (cropped to it); its layout."""
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        layout = measure(mail_html, width, folder=folder, dark=dark)
        height = layout.height
        page = folder / "shot.html"
        page.write_text(frame_page(mail_html, width, height) + "</body></html>", encoding="utf-8")
        shot = folder / "shot.png"
        done = chromium(
            f"--screenshot={shot}",
            "--virtual-time-budget=10000",
            f"--window-size={max(width, MIN_WINDOW)},{height}",
            *(["--force-dark-mode"] if dark else []),
            page.as_uri(),
            profile=folder / "profile",
        )
        assert shot.exists(), done.stderr[-2000:]
        picture = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB").crop((0, 0, width, height))
    out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the picture sharp at a third of the bytes in the repository.
    picture.quantize(colors=256).save(out, optimize=True)
    return layout
