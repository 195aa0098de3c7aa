"""The heartbeat reads as the alert mail does: a one-line verdict, the facts of the period, HTML and text."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
import types
import zoneinfo

import pytest

from alertmail.notify.heartbeat import RuleSummary, Summary, render_heartbeat, watching
from tests.browser import inline_images, measure

END = dt.datetime(2026, 11, 27, 8, 0, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin")).timestamp()
START = END - 86400


def summary(**kw) -> Summary:
    values = {
        "start": START,
        "end": END,
        "rules": {
            "disk-full": RuleSummary("disk-full", {"firing": 1, "resolved": 1}, 754.0, 1, 0),
            "load-high": RuleSummary("load-high", {"firing": 1, "reminder": 2}, 7200.0, 1, 1),
        },
        "silenced": 1,
        "mails": {"alert": 3, "digest": 1},
        "mail_ids": [],
        "queue": {
            "queued": 1,
            "deferred": 1,
            "oldest_seconds": 600.0,
            "badmail": 0,
            "accepted_since_start": 12,
            "last_error": "451 4.7.1 try again later",
            "mail_outcomes": {"delivered": 3, "waiting": 1, "failed": 0},
        },
        "silences": ["a1b2c3: rule=load-*; until 10:00 CET — kernel update"],
        "watching": {"probes": ["cpu", "disk", "memory"], "intervals": [30.0, 60.0], "rules": 8, "missed": {"disk": 2}},
    }
    return Summary(**{**values, **kw})


def mail(s: Summary, hostname: str = "web01") -> email.message.EmailMessage:
    msg = render_heartbeat(s, hostname=hostname, timezone="Europe/Berlin")
    msg["From"], msg["To"] = "alertmail@test.example", "ops@test.example"
    return email.message_from_bytes(msg.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


def html_of(msg) -> str:
    return msg.get_body(("html",)).get_content()


def test_heartbeat_has_an_html_part_leading_with_the_verdict_and_the_facts():
    msg = mail(summary())
    assert msg["Subject"] == "[OK] web01: alertmail still watching — 5 alert events, 1 firing now"
    html = html_of(msg)
    assert "Still watching web01: 1 alert firing now" in html
    facts = dict(re.findall(r'<tr class="am-fact"><td[^>]*>([^<]*)</td><td[^>]*>([^<]*)</td></tr>', html))
    assert facts["watching"] == "3 probes (cpu, disk, memory) every 30s to 1m, 8 rules"
    assert facts["firing now"] == "1 (load-high)"
    assert facts["mails"] == "4 queued in the period (3 alert, 1 digest): 3 delivered, 1 waiting, 0 given up"
    assert facts["queue"] == "1 waiting (1 deferred, oldest 10m); given up (badmail) in the period: 0"
    assert facts["last error"] == "451 4.7.1 try again later"
    assert facts["missed runs"].startswith("disk 2 since the agent started")
    rows = re.findall(r'<tr class="am-row">(.*?)</tr>', html, re.S)
    assert [re.search(r"<strong>(.*?)</strong>", r).group(1) for r in rows] == ["load-high", "disk-full"]
    assert "1 firing, 2 reminder" in rows[0] and "2h" in rows[0]
    assert "kernel update" in html
    assert "border-top:6px solid #a85d00" in html  # something fires: amber, not the all-clear green


def test_plain_part_says_the_same_in_aligned_lines():
    text = text_of(mail(summary()))
    assert text.startswith(
        "Still watching web01: 1 alert firing now\n"
        "This mail comes every 1d; if it stops coming, the agent or its mail path is down.\n\n"
        "Period:      2026-11-26 08:00 CET to 2026-11-27 08:00 CET\n"
        "Watching:    3 probes (cpu, disk, memory) every 30s to 1m, 8 rules\n"
    )
    assert "Firing now:  1 (load-high)\n" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  ") and line.split()[0] in ("load-high", "disk-full")]
    assert [r[:4] for r in rows] == [["load-high", "1", "2h", "1"], ["disk-full", "1", "12m34s", "0"]]


def test_a_quiet_day_is_green_and_says_nothing_fires():
    quiet = summary(rules={}, silenced=0, mails={}, silences=[], queue={"queued": 0, "deferred": 0, "badmail": 0})
    msg = mail(quiet)
    assert msg["Subject"] == "[OK] web01: alertmail still watching — 0 alert events"
    assert text_of(msg).startswith("Still watching web01: nothing firing now\n")
    html = html_of(msg)
    assert "border-top:6px solid #1e8449" in html and 'class="am-row"' not in html
    assert "Silences in force now" not in html


def test_what_the_agent_watches_is_read_from_the_agent():
    agent = types.SimpleNamespace(
        probes={"cpu": (object(), 30.0, 5.0), "disk": (object(), 60.0, 5.0)}, rules=[1, 2, 3], missed={"disk": 1}
    )
    assert watching(agent) == {"probes": ["cpu", "disk"], "intervals": [30.0, 60.0], "rules": 3, "missed": {"disk": 1}}


def test_probe_data_and_names_cannot_break_a_header():
    bad = summary(
        rules={"x\r\nBcc: victim@example.com": RuleSummary("x\r\nBcc: victim@example.com", {"firing": 1}, 60.0, 1, 1)},
        silences=["s1: rule=x\r\nBcc: other@example.com"],
    )
    msg = mail(bad, hostname="web01\r\nX-Evil: 1")
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "[OK] web01 X-Evil: 1: alertmail still watching — 1 alert events, 1 firing now"
    text = text_of(msg)
    assert "Firing now:  1 (x Bcc: victim@example.com)\n" in text
    assert "  s1: rule=x Bcc: other@example.com\n" in text


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_heartbeat_fits_a_390_px_phone_screen(dark, tmp_path):
    long = {
        f"rule-with-a-rather-long-name-{i}-" + "x" * 30: RuleSummary(f"r{i}", {"firing": 3}, 3600.0 * i, 2, 1) for i in range(5)
    }
    for name, rule in long.items():
        rule.rule = name
    layout = measure(inline_images(mail(summary(rules=long))), 390, folder=tmp_path, dark=dark)
    assert layout.scroll_width <= 390, f"the heartbeat is {layout.scroll_width} px wide: {layout.overflowing}"
    assert layout.overflowing == [] and layout.low_contrast == []
    assert layout.smallest_text >= 11, f"text as small as {layout.smallest_text} px"
