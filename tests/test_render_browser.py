"""The HTML alert mail in a real browser (headless Chromium): the chart shows, the page is not blank.

Run as a script to refresh the README's picture: ``python -m tests.test_render_browser docs/alert-mail.png``.
"""

from __future__ import annotations

import io
import re
import sys
import tempfile
from email.message import EmailMessage
from pathlib import Path

from alertmail.render.mail import render_alert
from alertmail.rules.model import AlertEvent
from tests.browser import AT, CPU, DISK, chromium, context, inline_images
from tests.peers import need

PROBE = (
    "<script>window.addEventListener('load', () => { document.body.dataset.images = "
    "[...document.images].map(i => i.complete + ':' + i.naturalWidth + 'x' + i.naturalHeight).join(' '); });</script>"
)


def sample_mail() -> EmailMessage:
    """A grouped mail of a disk and a CPU alert with their charts and context, as the agent sends it."""
    events = [
        AlertEvent(
            "firing", DISK, (("device", "/dev/sda1"), ("mount", "/")), 93.4, 90, ">", "critical", AT - 12 * 60, AT, "disk-1"
        ),
        AlertEvent("firing", CPU, (), 97.2, 85, ">", "warning", AT - 5 * 60, AT, "cpu-1"),
    ]
    return render_alert(events, context())


def screenshot(html: Path, out: Path, size: str = "760,1380") -> None:
    with tempfile.TemporaryDirectory() as profile:
        done = chromium(f"--screenshot={out}", f"--window-size={size}", html.as_uri(), profile=Path(profile))
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
