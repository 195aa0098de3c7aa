"""The HTML alert mail in a real browser (headless Chromium): the chart shows, the page is not blank.

Run as a script to refresh the README's picture: ``python -m tests.test_render_browser docs/alert-mail.png``.
"""

from __future__ import annotations

import base64
import io
import math
import re
import subprocess
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

from alertmail.render.context import ProcessRow
from alertmail.render.mail import render_alert
from alertmail.render.view import RenderContext
from alertmail.rules.model import AlertEvent, Rule
from tests.peers import need

AT = 1768482180.0  # 2026-01-15 13:03 UTC, 14:03 CET
PROBE = (
    "<script>window.addEventListener('load', () => { document.body.dataset.images = "
    "[...document.images].map(i => i.complete + ':' + i.naturalWidth + 'x' + i.naturalHeight).join(' '); });</script>"
)


def sample_mail() -> EmailMessage:
    """A grouped mail of a disk and a CPU alert with their charts and context, as the agent sends it."""
    disk = Rule(
        name="disk-root-full",
        metric="disk.used_percent",
        above=90,
        clear=85,
        severity="critical",
        description="Root filesystem nearly full: rotate /var/log or grow the volume.",
    )
    cpu = Rule(name="cpu-busy", metric="cpu.percent", above=85, clear=70, severity="warning")
    events = [
        AlertEvent(
            "firing", disk, (("device", "/dev/sda1"), ("mount", "/")), 93.4, 90, ">", "critical", AT - 12 * 60, AT, "disk-1"
        ),
        AlertEvent("firing", cpu, (), 97.2, 85, ">", "warning", AT - 5 * 60, AT, "cpu-1"),
    ]

    def history(metric: str, labels) -> list[tuple[float, float]]:
        if metric.startswith("disk"):
            return [(AT - 3600 + i * 60, 71 + 20 * (i / 60) ** 3 + 0.8 * math.sin(i / 2)) for i in range(61)]
        return [(AT - 3600 + i * 30, (96 + 2 * math.sin(i) if i > 108 else 28 + 9 * abs(math.sin(i / 5)))) for i in range(121)]

    processes = [
        ProcessRow("ffmpeg", 48211, 181.3, 412 * 2**20),
        ProcessRow("postgres", 1022, 22.5, 1.8 * 2**30),
        ProcessRow("python3", 3310, 9.1, 96 * 2**20),
        ProcessRow("nginx", 871, 2.4, 24 * 2**20),
        ProcessRow("alertmail", 640, 0.3, 31 * 2**20),
    ]
    extra = {
        "top_processes": {"cpu": processes, "memory": sorted(processes, key=lambda p: -p.rss)},
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
    ctx = RenderContext(hostname="web01", timezone="Europe/Berlin", history=history, extra=extra, charts="in-process")
    return render_alert(events, ctx)


def inline_images(msg: EmailMessage) -> str:
    """The HTML part with each cid: image replaced by a data: URI, as a mail client shows it."""
    html = msg.get_body(("html",)).get_content()
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
        f"--user-data-dir={profile}",
    ]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=90)


def screenshot(html: Path, out: Path, size: str = "760,1380") -> None:
    with tempfile.TemporaryDirectory() as profile:
        done = chromium(f"--screenshot={out}", f"--window-size={size}", "--hide-scrollbars", html.as_uri(), profile=Path(profile))
    assert out.exists(), done.stderr[-2000:]


def test_alert_mail_shows_its_charts_and_tables_in_chromium(tmp_path):
    need("chromium")
    msg = sample_mail()
    page = tmp_path / "mail.html"
    page.write_text(inline_images(msg).replace("</body>", PROBE + "</body>"))

    dom = chromium("--dump-dom", "--virtual-time-budget=5000", page.as_uri(), profile=tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    images = re.search(r'data-images="([^"]*)"', dom.stdout)
    assert images, "the page's load handler did not run"
    assert images.group(1).split() == ["true:1280x480", "true:1280x480"]  # 2x pixel density
    assert "Top processes by CPU" in dom.stdout and "full in ~3h" in dom.stdout

    shot = tmp_path / "shot.png"
    screenshot(page, shot, "760,1200")
    from PIL import Image

    picture = Image.open(io.BytesIO(shot.read_bytes())).convert("RGB")
    assert picture.size == (760, 1200)
    colours = picture.getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, "the screenshot is blank"
    background = max(colours)[0] / (760 * 1200)
    assert background < 0.9, "one colour covers almost all of the screenshot"


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/alert-mail.png").resolve()
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "mail.html"
        page.write_text(inline_images(sample_mail()))
        screenshot(page, target)
    from PIL import Image

    # 256 colours keep the picture sharp at a third of the bytes in the repository.
    Image.open(target).convert("RGB").quantize(colors=256).save(target, optimize=True)
    print(f"wrote {target}")
