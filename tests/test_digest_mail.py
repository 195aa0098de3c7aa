"""The storm digest reads as the alert mail does: counts first, a table of the folded events, worst first."""

from __future__ import annotations

import email
import email.policy
import re
from pathlib import Path

from alertmail.notify.storm import StormGuard, render_digest
from alertmail.render.digest import MAX_ROWS
from alertmail.render.view import RenderContext
from alertmail.rules.model import AlertEvent, Rule
from tests.browser import AT, inline_images, measure

OPS = "ops@test.example"
JOURNAL = Path("/var/lib/alertmail/logs/alerts.jsonl")
MEM = Rule(name="a-mem", metric="memory.used_percent", above=90, severity="warning", to=(OPS,))
CPU = Rule(
    name="b-cpu", metric="cpu.percent", above=95, severity="critical", to=(OPS,), runbook="https://wiki.example.com/runbooks/cpu"
)
DISK = Rule(name="disk-full", metric="disk.used_percent", above=90, severity="warning", to=(OPS,))


def ev(kind: str, rule: Rule, t: float, incident: str, labels: tuple = (), value: float | None = None) -> AlertEvent:
    if value is None:
        value = 50.0 if kind == "resolved" else 99.0
    return AlertEvent(kind, rule, labels, value, rule.above, ">", rule.severity, AT - 3600, AT + t, incident)


def digest(events, ctx: RenderContext | None = None) -> email.message.EmailMessage:
    """The digest as a recipient's client reads it: rendered, sent as bytes, parsed again."""
    ctx = ctx or RenderContext(hostname="web01", timezone="Europe/Berlin")
    msg = render_digest(events, AT, StormGuard(10, 900.0), ctx, JOURNAL)
    msg["From"], msg["To"] = "alertmail@test.example", OPS
    return email.message_from_bytes(msg.as_bytes(policy=email.policy.SMTP), policy=email.policy.default)


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content().replace("\r\n", "\n")


def subject_of(msg) -> str:
    """The subject as a client shows it (the email package's folding of the encoded dash adds a space)."""
    return " ".join(str(msg["Subject"]).split())


def html_of(msg) -> str:
    return msg.get_body(("html",)).get_content()


def text_rows(msg) -> list[list[str]]:
    return [line.split() for line in text_of(msg).splitlines() if re.match(r"  (FIRING|RESOLVED|STILL|FLAPPING) ", line)]


def html_rows(msg) -> list[str]:
    return re.findall(r'<tr class="am-row">(.*?)</tr>', html_of(msg), re.S)


MIXED = [
    ev("firing", MEM, 10, "m1"),
    ev("resolved", MEM, 70, "m1"),  # the same alert, over by the time the digest goes
    ev("firing", MEM, 80, "m2", (("mount", "/srv"),)),
    ev("firing", CPU, 90, "c1"),
]


def test_subject_and_first_lines_count_alerts_still_firing_and_recovered_worst_severity_first():
    msg = digest(MIXED)
    assert subject_of(msg) == "[DIGEST] [CRITICAL] web01: 3 alerts, 2 still firing, 1 recovered — b-cpu, a-mem"
    first, second = text_of(msg).splitlines()[:2]
    assert first == "3 alerts on web01: 2 still firing (1 critical, 1 warning), 1 recovered"
    assert second == "4 events folded since 14:03 CET; none was dropped."
    html = html_of(msg)
    assert "3 alerts on web01: 2 still firing (1 critical, 1 warning), 1 recovered" in html
    assert "border-top:6px solid #c0392b" in html  # the worst open severity colours the card


def test_a_digest_of_recoveries_only_is_tagged_resolved_and_green():
    msg = digest([ev("firing", MEM, 10, "m1"), ev("resolved", MEM, 70, "m1")])
    assert subject_of(msg) == "[DIGEST] [RESOLVED] web01: 1 alert, 1 recovered — a-mem"
    assert "border-top:6px solid #1e8449" in html_of(msg)


def test_rows_say_state_severity_time_rule_labels_and_value_worst_first_in_both_parts():
    msg = digest(MIXED)
    assert text_rows(msg) == [
        ["FIRING", "critical", "14:04", "CET", "b-cpu", "cpu.percent", "99", ">", "95"],
        ["FIRING", "warning", "14:03", "CET", "a-mem", "memory.used_percent", "99", ">", "90"],
        ["FIRING", "warning", "14:04", "CET", "a-mem", "[mount=/srv]", "memory.used_percent", "99", ">", "90"],
        ["RESOLVED", "warning", "14:04", "CET", "a-mem", "memory.used_percent", "50,", "back", "below", "90"],
    ]
    rows = html_rows(msg)
    assert len(rows) == 4
    assert ">FIRING<" in rows[0] and "critical" in rows[0] and "b-cpu" in rows[0] and "cpu.percent 99 &gt; 95" in rows[0]
    assert "14:04 CET" in rows[0]
    assert "mount=/srv" in rows[2] and ">RESOLVED<" in rows[3]


def test_a_rule_with_a_runbook_gets_a_link_in_its_rows_and_a_line_in_the_text():
    msg = digest(MIXED)
    rows = html_rows(msg)
    assert '<a class="am-link" href="https://wiki.example.com/runbooks/cpu"' in rows[0]
    assert all("href" not in row for row in rows[1:])
    assert "Runbooks:\n  b-cpu  https://wiki.example.com/runbooks/cpu\n" in text_of(msg)


def test_hundreds_of_events_are_cut_to_a_table_that_says_how_many_more_and_where_they_are():
    events = [ev("firing", DISK, i, f"d{i}", (("mount", f"/srv/vol{i:03d}"),)) for i in range(300)]
    events += [ev("resolved", MEM, 400 + i, f"m{i}") for i in range(20)]
    msg = digest(events)
    assert subject_of(msg) == "[DIGEST] [WARNING] web01: 320 alerts, 300 still firing, 20 recovered — disk-full, a-mem"
    assert len(text_rows(msg)) == len(html_rows(msg)) == MAX_ROWS
    text = text_of(msg)
    assert "mount=/srv/vol049" in text and "mount=/srv/vol050" not in text
    more = len(events) - MAX_ROWS
    assert f"... and {more} more events (250 firing, 20 resolved), not listed here." in text
    assert f"recorded in the journal on web01:\n  {JOURNAL}\n" in text
    html = html_of(msg)
    assert f"and {more} more events (250 firing, 20 resolved)" in html and str(JOURNAL) in html
    assert len(msg.as_bytes()) < 200_000


def test_probe_data_cannot_break_a_header_or_a_row():
    evil = Rule(
        name="cpu\r\nBcc: victim@example.com", metric="cpu.percent", above=95, severity="critical\r\nX-Evil: 1", to=(OPS,)
    )
    events = [ev("firing", evil, 0, "e1", (("mount", "/x\r\nBcc: other@example.com"),)), *MIXED]
    msg = digest(events, RenderContext(hostname="web01\r\nX-Host: 1", timezone="Europe/Berlin"))
    assert msg["Bcc"] is None and msg["X-Evil"] is None and msg["X-Host"] is None
    assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
    assert subject_of(msg).startswith("[DIGEST] [CRITICAL] web01 X-Host: 1: 4 alerts, 3 still firing, 1 recovered — ")
    assert subject_of(msg).endswith(", cpu Bcc: victim@example.com")
    row = " ".join(next(r for r in text_rows(msg) if "X-Evil:" in r))
    assert "cpu Bcc: victim@example.com [mount=/x Bcc: other@example.com] cpu.percent 99 > 95" in row  # on its row


def test_digest_fits_a_390_px_phone_screen(tmp_path):
    long = (("mount", "/srv/backups/very-long-directory-name-without-breaks/" + "x" * 40), ("device", "/dev/mapper/vg0-lv0"))
    events = [ev("firing", DISK, i, f"d{i}", long) for i in range(80)] + MIXED
    layout = measure(inline_images(digest(events)), 390, folder=tmp_path)
    assert layout.scroll_width <= 390, f"the digest is {layout.scroll_width} px wide: {layout.overflowing}"
    assert layout.overflowing == [] and layout.low_contrast == []
    assert "https://wiki.example.com/runbooks/cpu" in layout.links
    assert layout.smallest_text >= 11, f"text as small as {layout.smallest_text} px"


def test_digest_text_stands_out_in_dark_mode(tmp_path):
    layout = measure(inline_images(digest(MIXED)), 390, folder=tmp_path, dark=True)
    assert layout.low_contrast == []


def test_check_renders_the_digest_and_heartbeat_templates_of_a_user_folder(tmp_path):
    from alertmail.render.mail import template_problems
    from alertmail.render.templating import BUILTIN_TEMPLATES

    assert template_problems(BUILTIN_TEMPLATES) == []
    (tmp_path / "digest.txt.j2").write_text("{{ headline }}\n{% for a in rows %}{{ a.rulle }}{% endfor %}\n")
    (tmp_path / "heartbeat.html.j2").write_text(
        '{% extends "builtin/heartbeat.html.j2" %}{% block footer %}\n{{ oncall }}{% endblock %}'
    )
    problems = template_problems(tmp_path)
    assert len(problems) == 2, problems
    assert problems[0].startswith("digest.txt.j2 line 2: fails on a sample digest of a long storm:")
    assert "rulle" in problems[0]
    assert problems[1].startswith("heartbeat.html.j2 line 2: fails on a sample heartbeat of a busy day:")
    assert "'oncall' is undefined" in problems[1]


def test_a_user_digest_template_is_used_for_the_digest(tmp_path):
    (tmp_path / "digest.txt.j2").write_text("{{ headline }}\nCall the on-call phone.\n")
    msg = digest(MIXED, RenderContext(hostname="web01", timezone="Europe/Berlin", templates_dir=tmp_path))
    assert text_of(msg) == "3 alerts on web01: 2 still firing (1 critical, 1 warning), 1 recovered\nCall the on-call phone.\n"
    assert '<tr class="am-row">' in html_of(msg)  # the HTML part stays the built-in one
