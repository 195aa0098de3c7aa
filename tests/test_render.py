"""Alert mails: text + HTML alternatives, inline charts, context tables, templates, escaping."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email
import email.policy
import logging
import math
import re
import struct
import subprocess
import sys
from email.message import EmailMessage
from pathlib import Path

import pytest

from alertmail.render.context import ProcessRow, collect_context, growth_per_second, resource_of
from alertmail.render.format import human_duration
from alertmail.render.mail import render_alert
from alertmail.render.view import RenderContext, subject
from alertmail.rules.model import AlertEvent, Rule

REPO = Path(__file__).resolve().parents[1]
# 2025-01-15 13:03 UTC is 14:03 CET in Berlin (winter time).
SINCE = dt.datetime(2025, 1, 15, 13, 3, tzinfo=dt.UTC).timestamp()
AT = SINCE + 12 * 60
DISK_RULE = Rule(
    name="disk-root-full",
    metric="disk.used_percent",
    above=90,
    clear=85,
    severity="critical",
    description="Root filesystem nearly full.",
)
CPU_RULE = Rule(name="cpu-busy", metric="cpu.percent", above=90, severity="warning")


def event(
    rule: Rule = DISK_RULE,
    *,
    kind: str = "firing",
    labels=(("mount", "/"),),
    value: float = 93.4,
    since: float = SINCE,
    at: float = AT,
    severity: str | None = None,
) -> AlertEvent:
    return AlertEvent(
        kind=kind,
        rule=rule,
        labels=tuple(labels),
        value=value,
        threshold=rule.above,
        comparison=">",
        severity=severity or rule.severity,
        since=since,
        at=at,
        incident="i-1",
    )


def rising(metric, labels):
    """An hour of one-minute samples creeping up to and over 90."""
    return [(AT - 3600 + i * 60, 70 + 20 * (i / 60) ** 3 + math.sin(i)) for i in range(61)]


def context(**kw) -> RenderContext:
    kw.setdefault("hostname", "web01")
    kw.setdefault("timezone", "Europe/Berlin")
    kw.setdefault("history", rising)
    kw.setdefault("charts", "off")  # tests about charts ask for them: drawing one takes a tenth of a second
    return RenderContext(**kw)


def reparse(msg: EmailMessage) -> EmailMessage:
    """The message as a recipient's client sees it: bytes on the wire, parsed again."""
    return email.message_from_bytes(msg.as_bytes(), policy=email.policy.default)


def structure(msg: EmailMessage) -> list:
    if msg.is_multipart():
        return [msg.get_content_type(), [structure(p) for p in msg.iter_parts()]]
    return msg.get_content_type()


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def images(msg: EmailMessage) -> list[EmailMessage]:
    return [p for p in msg.walk() if p.get_content_maintype() == "image"]


def html_of(msg: EmailMessage) -> str:
    return msg.get_body(("html",)).get_content()


def text_of(msg: EmailMessage) -> str:
    return msg.get_body(("plain",)).get_content()


def test_subject_names_severity_host_rule_condition_and_duration():
    ev = event(at=SINCE + 120)
    assert subject([ev], context()) == "[CRITICAL] web01: disk-root-full / — disk.used_percent 93.4 > 90 (for 2m)"


def test_recovery_subject_says_the_value_is_back_over_the_clear_line():
    ev = event(kind="resolved", value=80.2, at=SINCE + 120)
    assert subject([ev], context()) == "[RESOLVED] web01: disk-root-full / — disk.used_percent 80.2, back below 85 (for 2m)"


def test_alert_mail_is_text_and_html_alternatives_with_the_chart_related_to_the_html():
    msg = reparse(render_alert([event()], context(charts="in-process")))
    assert structure(msg) == [
        "multipart/alternative",
        ["text/plain", ["multipart/related", ["text/html", "image/png"]]],
    ]
    assert msg["Subject"].startswith("[CRITICAL] web01: disk-root-full")


def test_html_references_the_chart_by_its_content_id():
    msg = reparse(render_alert([event()], context(charts="in-process")))
    [image] = images(msg)
    cid = image["Content-ID"].strip("<>")
    assert re.findall(r'src="cid:([^"]+)"', html_of(msg)) == [cid]
    assert image.get_content_disposition() == "inline"


def test_chart_is_a_png_that_decodes():
    msg = reparse(render_alert([event()], context(charts="in-process")))
    data = images(msg)[0].get_content()
    assert png_size(data) == (1280, 480)
    import io

    from PIL import Image

    picture = Image.open(io.BytesIO(data))
    picture.load()
    colours = picture.convert("RGB").getcolors(maxcolors=100_000)
    assert colours is not None and len(colours) > 20  # lines, shading and text, not a blank canvas


def test_subprocess_charts_are_drawn_in_a_child_and_keep_pillow_out():
    code = (
        "import sys, tests.test_render as t; from alertmail.render.mail import render_alert;"
        "msg = render_alert([t.event()], t.context(charts='subprocess'));"
        "imgs = t.images(msg); print(len(imgs), t.png_size(imgs[0].get_content()), 'PIL' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "1 (1280, 480) False"


def test_importing_the_renderer_loads_neither_jinja2_nor_the_imaging_library():
    code = (
        "import sys, alertmail.render.mail, alertmail.render.chart, alertmail.render.plot, alertmail.render.context;"
        "print(sorted(m for m in ('jinja2', 'PIL', 'matplotlib', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_chart_that_cannot_be_drawn_leaves_the_mail_intact(caplog):
    with caplog.at_level(logging.WARNING):
        msg = reparse(render_alert([event()], context(charts="subprocess", chart_timeout=0.001)))
    assert images(msg) == []
    assert "could not be drawn" in html_of(msg)
    assert "disk-root-full" in text_of(msg)
    assert "charts not drawn" in caplog.text


def test_chart_skips_samples_that_are_not_numbers():
    def broken(metric, labels):
        return [*rising(metric, labels), (AT - 30, math.nan), (AT - 20, math.inf)]

    msg = reparse(render_alert([event()], context(history=broken, charts="in-process")))
    assert png_size(images(msg)[0].get_content()) == (1280, 480)


def test_malformed_context_or_failing_history_costs_only_the_extras(caplog):
    def failing(metric, labels):
        raise OSError("history store gone")

    ctx = context(history=failing, charts="in-process", extra={"top_processes": {"cpu": [("x",)]}, "disk": {"/": None}})
    with caplog.at_level(logging.WARNING):
        msg = reparse(render_alert([event(), event(CPU_RULE, labels=())], ctx))
    assert "disk-root-full" in html_of(msg) and "cpu-busy" in text_of(msg)
    assert images(msg) == []
    assert "No chart: the chart could not be drawn" in html_of(msg)
    assert "history store gone" in caplog.text and "context for cpu-busy left out" in caplog.text


def test_series_without_history_gets_a_note_instead_of_a_chart():
    msg = reparse(render_alert([event()], context(history=lambda metric, labels: (), charts="in-process")))
    assert images(msg) == []
    assert "No chart: no samples of this series recorded yet." in html_of(msg)


def test_hostile_labels_and_names_reach_no_header_and_inject_no_html():
    rule = Rule(name="disk\r\nBcc: evil@x", metric="disk.used_percent", above=90, description='<img src=x onerror="alert(1)">')
    labels = (("mount", "/\r\nBcc: evil@x"), ("owner", "<script>alert(1)</script>"))
    ctx = context(
        extra={
            "top_processes": {"cpu": [("<script>x</script>", 1, 99.0, 1)]},
            "disk": {"/\r\nBcc: evil@x": {"total": 1, "used": 1, "free": 0, "percent": 100.0}},
        }
    )
    raw = render_alert([event(rule, labels=labels)], ctx).as_bytes()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Bcc"] is None
    assert not re.search(rb"^Bcc:", raw, re.MULTILINE | re.IGNORECASE)
    assert "\r" not in msg["Subject"] and "\n" not in msg["Subject"]
    html = html_of(msg)
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;img src=x onerror=" in html


def test_times_are_shown_in_the_configured_timezone_with_the_duration():
    msg = reparse(render_alert([event()], context(timezone="Europe/Berlin")))
    assert "firing for 12m, since 14:03 CET" in text_of(msg)
    assert "firing for 12m, since 14:03 CET" in html_of(msg)
    utc = reparse(render_alert([event()], context(timezone="UTC")))
    assert "firing for 12m, since 13:03 UTC" in text_of(utc)


def test_a_start_on_another_day_shows_the_day():
    ev = event(since=SINCE - 86400, kind="resolved")
    msg = reparse(render_alert([ev], context()))
    assert "resolved at 14:15 CET after 1d, since Tue 14 Jan 14:03 CET" in text_of(msg)


@pytest.mark.parametrize(
    "kind, extra, status",
    [
        ("reminder", {}, "still firing: for 12m, since 14:03 CET"),
        ("escalated", {"previous_severity": "warning"}, "firing for 12m, since 14:03 CET; raised from warning to critical"),
        ("flapping", {"percent_change": 34.5}, "flapping for 12m, since 14:03 CET (34.5 % state change)"),
        ("flap-ended", {}, "settled at 14:15 CET after 12m, since 14:03 CET"),
    ],
)
def test_each_kind_of_event_says_what_happened(kind, extra, status):
    ev = dataclasses.replace(event(kind=kind), **extra)
    msg = reparse(render_alert([ev], context()))
    assert status in text_of(msg) and status in html_of(msg)


@pytest.mark.parametrize("seconds, words", [(45, "45s"), (720, "12m"), (7500, "2h5m"), (7200, "2h"), (93600, "1d2h")])
def test_durations_read_as_the_config_writes_them(seconds, words):
    assert human_duration(seconds) == words


def test_grouped_mail_lists_all_events_and_caps_the_charts():
    events = [event(labels=(("mount", f"/srv/{n}"),)) for n in range(200)]
    msg = reparse(render_alert(events, context(charts="in-process", max_charts=3)))
    html, text = html_of(msg), text_of(msg)
    for n in range(200):
        assert f"mount=/srv/{n}<" in html
        assert f"[mount=/srv/{n}]" in text
    assert len(images(msg)) == 3
    assert "Details and charts for the first 3 of 200 alerts" in html
    assert "Details for the first 3 of 200 alerts; all are listed above." in text
    assert msg["Subject"] == "[CRITICAL] web01: 200 firing — disk-root-full"


def test_a_notice_from_the_notifier_stands_above_the_alerts_escaped():
    ctx = context(extra={"notice": "200 events were folded into this digest <none dropped>"})
    msg = reparse(render_alert([event(), event(kind="resolved")], ctx))
    assert text_of(msg).startswith("200 events were folded into this digest <none dropped>\n")
    assert "folded into this digest &lt;none dropped&gt;" in html_of(msg)


def test_grouped_mail_takes_the_colour_of_its_most_urgent_alert():
    events = [event(kind="resolved"), event(CPU_RULE, labels=()), event(severity="critical")]
    html = html_of(reparse(render_alert(events, context())))
    assert "border-top:6px solid #c0392b" in html


def test_cpu_alert_shows_top_processes_by_cpu():
    rows = [ProcessRow(f"worker-{n}", 100 + n, 90.0 - n, (n + 1) * 2**20) for n in range(5)]
    ctx = context(extra={"top_processes": {"cpu": rows, "memory": rows[::-1]}})
    msg = reparse(render_alert([event(CPU_RULE, labels=())], ctx))
    html = html_of(msg)
    assert "Top processes by CPU" in html
    assert list(re.findall(r"worker-\d", html)) == [f"worker-{n}" for n in range(5)]
    assert "90.0 %" in html and "1.0 MiB" in html
    assert "worker-0" in text_of(msg)


MEMORY_RULE = Rule(name="memory-high", metric="memory.used_percent", above=90, severity="warning")


def test_a_recovery_mail_shows_no_top_processes_table():
    """The table is read when the mail is made: after a recovery it describes a machine that is fine."""
    rows = [ProcessRow("ffmpeg", 4821, 181.3, 412 * 2**20)]
    ctx = context(extra={"top_processes": {"cpu": rows, "memory": rows}})
    msg = reparse(render_alert([event(CPU_RULE, kind="resolved", labels=(), value=40.0)], ctx))
    for body in (html_of(msg), text_of(msg)):
        assert "Top processes" not in body and "ffmpeg" not in body


def test_a_mixed_mail_shows_top_processes_only_under_the_alert_still_firing():
    rows = [ProcessRow("ffmpeg", 4821, 181.3, 412 * 2**20)]
    ctx = context(extra={"top_processes": {"cpu": rows, "memory": rows}})
    events = [event(CPU_RULE, labels=()), event(MEMORY_RULE, kind="resolved", labels=(), value=80.0)]
    msg = reparse(render_alert(events, ctx))
    for body in (html_of(msg), text_of(msg)):
        assert body.count("Top processes by CPU") == 1 and "Top processes by memory" not in body
        assert body.count("ffmpeg") == 1
    text = text_of(msg)
    assert text.index("ffmpeg") < text.index("RESOLVED: memory-high")  # under the firing CPU alert


def test_collect_context_reads_no_processes_for_alerts_that_recovered():
    resolved = [event(CPU_RULE, kind="resolved", labels=()), event(MEMORY_RULE, kind="resolved", labels=())]
    assert "top_processes" not in collect_context(resolved, interval=0.05)
    assert "top_processes" in collect_context([*resolved, event(CPU_RULE, labels=())], interval=0.05)


def test_disk_alert_shows_size_free_growth_and_time_to_full():
    disk = {
        "/": {
            "total": 50 * 2**30,
            "used": 46 * 2**30,
            "free": 4 * 2**30,
            "percent": 92.0,
            "growth_per_hour": 2**30,
            "full_in_hours": 4.0,
        }
    }
    msg = reparse(render_alert([event()], context(extra={"disk": disk})))
    html = html_of(msg)
    for shown in ("Disk /", "50.0 GiB", "46.0 GiB (92 %)", "4.0 GiB", "+1.0 GiB/h", "full in ~4h"):
        assert shown in html


@pytest.mark.parametrize("broken", ["{% if %}", "{{ no_such_variable }}", "{{ alerts[0].rule.nope() }}", "{{ 1 // 0 }}"])
def test_broken_user_template_falls_back_to_the_builtin_one_with_a_warning(tmp_path, caplog, broken):
    (tmp_path / "alert.html.j2").write_text(f"<p>mine</p>{broken}")
    with caplog.at_level(logging.WARNING, logger="alertmail.render.mail"):
        msg = reparse(render_alert([event()], context(templates_dir=tmp_path)))
    assert "Sent by alertmail on web01" in html_of(msg)
    assert "<p>mine</p>" not in html_of(msg)
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert str(tmp_path / "alert.html.j2") in record.getMessage()
    assert "using the built-in one" in record.getMessage()


def test_user_templates_replace_or_extend_the_builtin_ones(tmp_path):
    (tmp_path / "alert.txt.j2").write_text("{{ alerts[0].state }} {{ alerts[0].rule }}: {{ alerts[0].status }}\n")
    (tmp_path / "alert.html.j2").write_text(
        "{% extends 'builtin/alert.html.j2' %}{% block footer %}<tr><td>Call {{ extra.oncall }}</td></tr>{% endblock %}"
    )
    ctx = context(templates_dir=tmp_path, extra={"oncall": "<ops>"}, charts="in-process")
    msg = reparse(render_alert([event()], ctx))
    assert text_of(msg) == "FIRING disk-root-full: firing for 12m, since 14:03 CET\n"
    html = html_of(msg)
    assert "Call &lt;ops&gt;" in html and "Sent by alertmail" not in html
    assert len(images(msg)) == 1 and "cid:" in html


def test_metrics_map_to_the_resource_whose_context_helps():
    assert [
        resource_of(m)
        for m in (
            "cpu.percent",
            "load.1",
            "memory.used_percent",
            "swap.used_bytes",
            "disk.free_bytes",
            "diskio.busy_percent",
            "net.rx_bytes_per_s",
        )
    ] == ["cpu", "cpu", "memory", "memory", "disk", None, None]


def test_growth_is_the_least_squares_slope():
    assert growth_per_second([(0, 1.0), (10, 2.0), (20, 3.0)]) == pytest.approx(0.1)
    assert growth_per_second([(5, 1.0)]) is None


def test_collect_context_reads_processes_for_cpu_and_the_mount_for_disk():
    def history(metric, labels):
        return [(AT - 3600 + i * 60, 50 + i * 0.1) for i in range(61)]  # +6 percentage points per hour

    got = collect_context([event(CPU_RULE, labels=()), event()], history, interval=0.05)
    cpu, memory = got["top_processes"]["cpu"], got["top_processes"]["memory"]
    assert 0 < len(cpu) <= 5 and 0 < len(memory) <= 5
    assert [r.rss for r in memory] == sorted((r.rss for r in memory), reverse=True)
    assert all(isinstance(r.pid, int) and r.cpu_percent >= 0 for r in cpu)
    root = got["disk"]["/"]
    assert root["total"] > 0 and root["used"] + root["free"] <= root["total"]
    assert root["growth_per_hour"] == pytest.approx(0.06 * root["total"])
    assert root["full_in_hours"] == pytest.approx(root["free"] / root["growth_per_hour"])


def test_collect_context_leaves_out_what_it_cannot_read():
    assert collect_context([event(labels=(("mount", "/no/such/mount"),))]) == {}
    assert collect_context([event(Rule(name="r", metric="net.rx_bytes_per_s", above=1), labels=())]) == {}


def test_a_flap_that_settles_ok_is_announced_as_a_recovery():
    from alertmail.render.view import RenderContext, subject
    from alertmail.rules.model import AlertEvent, Rule

    rule = Rule(name="disk-busy", metric="disk.busy_percent", above=90, clear=80, severity="warning", to=("ops@example.com",))
    event = AlertEvent(
        kind="flap-ended",
        rule=rule,
        labels=(),
        value=50.0,
        threshold=90.0,
        comparison=">",
        severity="warning",
        since=1000.0,
        at=1600.0,
        incident="abc",
        state="ok",
    )
    text = subject([event], RenderContext(hostname="web01"))
    assert text.startswith("[RESOLVED] web01: disk-busy")
    assert "50, back below 80" in text


# -- the worst news leads ------------------------------------------------------------------

MEM_RULE = Rule(name="a-mem", metric="memory.used_percent", above=90, severity="warning")
CPU_CRIT = Rule(name="b-cpu", metric="cpu.percent", above=95, severity="critical")


def test_grouped_subject_follows_the_worst_news_and_counts_firing_and_resolved():
    recovery = event(MEM_RULE, kind="resolved", labels=(), value=50.0)
    new_critical = event(CPU_CRIT, labels=(), value=99.0)
    ctx = RenderContext(hostname="vm")
    assert subject([recovery, new_critical], ctx) == "[CRITICAL] vm: 1 firing, 1 resolved — b-cpu, a-mem"


def test_critical_leads_warning_and_a_group_of_recoveries_is_resolved():
    warning = event(MEM_RULE, labels=(), value=95.0)
    critical = event(CPU_CRIT, labels=(), value=99.0)
    ctx = RenderContext(hostname="vm")
    assert subject([warning, critical], ctx) == "[CRITICAL] vm: 2 firing — b-cpu, a-mem"
    gone = [event(MEM_RULE, kind="resolved", labels=()), event(CPU_CRIT, kind="resolved", labels=())]
    assert subject(gone, ctx) == "[RESOLVED] vm: 2 resolved — a-mem, b-cpu"


def test_sections_of_a_grouped_mail_follow_the_worst_news():
    recovery = event(MEM_RULE, kind="resolved", labels=(), value=50.0)
    warning = event(DISK_RULE, labels=(("mount", "/"),), severity="warning")
    critical = event(CPU_CRIT, labels=(), value=99.0)
    msg = reparse(render_alert([recovery, warning, critical], context()))
    text, html = text_of(msg), html_of(msg)
    for body in (text, html):
        cpu, disk, mem = body.index("b-cpu"), body.index("disk-root-full"), body.index("a-mem")
        assert cpu < disk < mem, body
    sections = [line.split(":")[0] for line in text.splitlines() if line.endswith(" on web01") and ": " in line]
    assert sections == ["FIRING", "FIRING", "RESOLVED"]
    assert "2 firing, 1 resolved on web01" in html


# -- numbers and words that are true ---------------------------------------------------------


def test_thresholds_print_as_configured_and_values_with_the_digits_they_need():
    from alertmail.render.format import format_value

    tiny = Rule(name="err-rate", metric="http.error_ratio", above=0.01, severity="warning")
    ev = event(tiny, labels=(), value=0.012)
    msg = reparse(render_alert([ev], context()))
    assert msg["Subject"] == "[WARNING] web01: err-rate — http.error_ratio 0.012 > 0.01 (for 12m)"
    assert "threshold   > 0.01" in text_of(msg) and "&gt; 0.01" in html_of(msg)
    # A value just over the line is never printed as the line itself.
    assert "disk.used_percent 90.04 > 90" in subject([event(value=90.04)], context())
    assert "cpu.percent 89.97, back below 90" in subject([event(CPU_RULE, kind="resolved", labels=(), value=89.97)], context())
    assert format_value(93.4123) == "93.4" and format_value(0.25) == "0.25" and format_value(1234.56) == "1234.6"
    assert format_value(0.0004567) == "0.000457" and format_value(0) == "0"


def test_a_flapping_mail_that_starts_on_a_recovery_makes_no_false_comparison():
    flap = dataclasses.replace(event(CPU_RULE, kind="flapping", labels=(), value=50.0), threshold=90.0, percent_change=24.2)
    text = subject([flap], context())
    assert "50 > 90" not in text
    assert text == "[FLAPPING] web01: cpu-busy — cpu.percent 50, not above 90 (for 12m)"
    body = text_of(reparse(render_alert([flap], context())))
    assert "condition   cpu.percent 50, not above 90" in body


def test_durations_in_mails_are_written_as_the_config_accepts_them():
    from alertmail.units import parse_duration

    for seconds in (45, 720, 7500, 7200, 93600):
        assert parse_duration(human_duration(seconds)) == seconds
    body = text_of(reparse(render_alert([event()], context())))
    assert "firing for 12m, since 14:03 CET" in body and "12 min" not in body
