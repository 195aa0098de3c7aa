"""Screenshots of the mails for docs/templates.md, taken with headless Chromium.

    .venv/bin/python docs/screenshots.py [--dark] [OUTPUT_FOLDER]

Renders a single-alert mail and a grouped mail with the built-in templates and charts
(an hour of made-up history, the in-process renderer), a storm digest and a heartbeat, and
writes ``{single,grouped,digest,heartbeat}-{390,800}.png`` into OUTPUT_FOLDER (default:
docs/screenshots/).
390 px is a phone: headless Chromium lays out no narrower than 500 px, so the mail is
shown in a 390 px frame and the picture cropped to it. ``--dark`` shows the mails as a
client in dark mode does (``prefers-color-scheme: dark``), into files named ``*-dark.png``.
Needs chromium on the PATH (Debian: chromium).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the browser helpers live with the tests

from tests.browser import digest_mail, grouped_mail, heartbeat_mail, inline_images, screenshot, single_mail  # noqa: E402

WIDTHS = (390, 800)


def main(argv: list[str]) -> int:
    dark = "--dark" in argv
    args = [a for a in argv if a != "--dark"]
    folder = Path(args[0]) if args else REPO / "docs" / "screenshots"
    kinds = (("single", single_mail), ("grouped", grouped_mail), ("digest", digest_mail), ("heartbeat", heartbeat_mail))
    for name, build in kinds:
        page = inline_images(build())
        for width in WIDTHS:
            out = folder / f"{name}-{width}{'-dark' if dark else ''}.png"
            layout = screenshot(page, width, out, dark=dark)
            wide = f"; WIDER THAN THE SCREEN: {layout.scroll_width} px {layout.overflowing[:3]}" if layout.overflowing else ""
            print(f"wrote {out.relative_to(REPO) if out.is_relative_to(REPO) else out} ({width}x{layout.height}){wide}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
