"""Every kind of mail alertmail writes scores at most 1.0 with SpamAssassin's local rules (5.0 marks spam).

An alert that lands in the spam folder is an alert lost. Each kind is built through the
real code (tests/mail_kinds.py, charts drawn) and scored by `spamassassin -L -t`.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from alertmail.replay import MailCollector
from alertmail.rules.model import Rule
from tests import mail_kinds

pytestmark = pytest.mark.skipif(shutil.which("spamassassin") is None, reason="spamassassin is not installed")
LIMIT = 1.0


def score(data: bytes) -> tuple[float, list[str]]:
    """SpamAssassin's score with its local rules, and the rules that added points."""
    done = subprocess.run(["spamassassin", "-L", "-t"], input=data, capture_output=True, timeout=120)
    report = done.stdout.decode(errors="replace")
    total = re.search(r"Content analysis details:\s+\((-?[\d.]+) points", report)
    assert total, report[-2000:]
    hits = [f"{name}({pts})" for pts, name in re.findall(r"^\s*(-?\d+\.\d+)\s+([A-Z0-9_]+)\s", report, re.M) if float(pts) != 0.0]
    return float(total.group(1)), hits


def minimal_alert(folder: Path) -> bytes:
    """The shortest alert there is: a terse rule, no description, nothing about processes or disks."""
    rule = Rule(name="x", metric="m", above=1, to=(mail_kinds.OPS,))

    async def build() -> bytes:
        queue = MailCollector()
        notifier = mail_kinds.notifier(folder, queue)
        await notifier.notify([mail_kinds.event("firing", rule, mail_kinds.T0, 2.0, "m1")], mail_kinds.T0)
        return queue.mails[0].data

    return asyncio.run(build())


def test_every_kind_of_mail_scores_at_most_one_point(tmp_path):
    mails = mail_kinds.build_all(tmp_path / "kinds")
    mails["single alert, minimal"] = minimal_alert(tmp_path / "minimal")
    assert len(mails) == 10
    with ThreadPoolExecutor(4) as pool:
        scores = dict(zip(mails, pool.map(score, mails.values()), strict=True))
    table = "\n".join(f"{kind:<24} {total:5.1f}  {' '.join(hits)}" for kind, (total, hits) in scores.items())
    assert all(total <= LIMIT for total, _ in scores.values()), "\n" + table


def test_the_score_is_read_right_a_spammy_mail_scores_high():
    """The check can fail: a message built to look like spam scores above the limit."""
    spam = (
        b"From: winner@example.com\r\nTo: you@example.com\r\nSubject: FREE MONEY!!! ACT NOW!!!\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/html\r\n\r\n"
        b"<html><body><img src='http://x.example/a.jpg'><font size=7>CLICK HERE "
        b"100% FREE viagra cash bonus guaranteed!!!</font></body></html>\r\n"
    )
    total, hits = score(spam)
    assert total > LIMIT and hits
