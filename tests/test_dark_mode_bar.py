"""In dark mode the bar across the top of a mail keeps its severity colour (red for critical), as in light mode."""

from __future__ import annotations

from PIL import Image

from tests.browser import digest_mail, inline_images, screenshot, single_mail
from tests.peers import need

RED = (0xC0, 0x39, 0x2B)


def widest_run(picture: Image.Image, colour: tuple[int, int, int]) -> int:
    """The longest horizontal run of pixels near ``colour`` in any row."""
    rgb = picture.convert("RGB")
    best = 0
    for y in range(rgb.height):
        run = 0
        for x in range(rgb.width):
            if sum(abs(a - b) for a, b in zip(rgb.getpixel((x, y)), colour)) < 40:
                run += 1
                best = max(best, run)
            else:
                run = 0
    return best


def bar_width(msg, tmp_path, *, dark: bool) -> int:
    out = tmp_path / f"shot-{dark}.png"
    screenshot(inline_images(msg), 390, out, dark=dark)
    picture = Image.open(out)
    return widest_run(picture.crop((0, 0, picture.width, 120)), RED)


def test_the_critical_bar_stays_red_in_dark_mode(tmp_path):
    need("chromium")
    msg = single_mail(charts="off")
    assert bar_width(msg, tmp_path, dark=False) > 300  # the bar across the card, 390 px wide
    assert bar_width(msg, tmp_path, dark=True) > 300


def test_the_digest_bar_stays_red_in_dark_mode(tmp_path):
    need("chromium")
    assert bar_width(digest_mail(disks=2), tmp_path, dark=True) > 300
