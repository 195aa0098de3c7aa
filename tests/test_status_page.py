"""The status page at "/" of the [exporter] server: the agent's alerts, silences, queue and probes, read-only."""

from __future__ import annotations

import re
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import measure, screenshot
from tests.peers import free_port, need
from tests.test_status import CONFIG, RunningAgent, alertmail


def page_config() -> str:
    # The exporter takes no port 0; a free one is picked as the other exporter tests do.
    return CONFIG + textwrap.dedent(f"""
    [exporter]
    listen = "127.0.0.1:{free_port()}"
    """)


@pytest.fixture
def agent(tmp_path):
    running = RunningAgent(tmp_path, page_config(), value="80")
    try:
        running.wait_for("control socket")
        yield running
    finally:
        running.stop()


def stage_picture(running: RunningAgent) -> None:
    """What the docs' pictures show beside the firing alert: a silence, and some seconds of history for its chart."""
    alertmail(
        "silence", "add", "-c", "config.toml", "--rule", "gauge-slow", "--for", "2h", "--comment", "known", cwd=running.folder
    )
    time.sleep(8)


def page_url(agent: RunningAgent) -> str:
    agent.wait_for("serving metrics on")
    found = re.search(r"serving metrics on (http://\S+)/metrics", agent.log.read_text())
    assert found
    return found.group(1) + "/"


def fetch(url: str) -> tuple[int, dict[str, str], str]:
    with urllib.request.urlopen(url, timeout=30) as answer:
        return answer.status, dict(answer.headers), answer.read().decode()


def page_with(agent: RunningAgent, *needles: str) -> tuple[dict[str, str], str]:
    url = page_url(agent)
    deadline = time.monotonic() + 30
    while True:
        status, headers, body = fetch(url)
        assert status == 200
        if all(n in body for n in needles):
            return headers, body
        assert time.monotonic() < deadline, body
        time.sleep(0.5)


def test_the_page_shows_alerts_silences_queue_mails_and_probes(agent):
    alertmail(
        "silence", "add", "-c", "config.toml", "--rule", "gauge-slow", "--for", "2h", "--comment", "known", cwd=agent.folder
    )
    headers, body = page_with(agent, "gauge-high", "gauge-slow", "[CRITICAL]")
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "1 firing, 1 pending on" in body
    assert "test.gauge 80 &gt; 50" in body
    assert "silenced by " in body and "known" in body
    assert "Queue" in body and "Last mails" in body and "Probes" in body
    assert str((agent.folder / "config.toml").resolve()) in body
    assert "<script" not in body


def test_the_page_is_read_only(agent):
    url = page_url(agent)
    request = urllib.request.Request(url, data=b"x=1", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 405


def test_metrics_stay_where_they_were(agent):
    status, headers, body = fetch(page_url(agent) + "metrics")
    assert status == 200 and "alertmail_" in body and headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_page_reads_at_390_px_in_chromium(agent, dark):
    need("chromium")
    _, body = page_with(agent, "gauge-high", "[CRITICAL]")
    with tempfile.TemporaryDirectory() as tmp:
        layout = measure(body, 390, folder=Path(tmp), dark=dark)
    assert layout.scroll_width <= 390, layout
    assert not layout.overflowing, layout.overflowing
    assert not layout.low_contrast, layout.low_contrast
    assert layout.smallest_text >= 11


def test_the_page_has_a_chart_of_the_firing_alert(agent):
    _, body = page_with(agent, "gauge-high", "data:image/png;base64,")
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/=]+"', body)


if __name__ == "__main__":  # python -m tests.test_status_page docs/status-page.png: the README's picture
    import sys

    with tempfile.TemporaryDirectory() as tmp:
        running = RunningAgent(Path(tmp), page_config(), value="80")
        try:
            running.wait_for("control socket")
            stage_picture(running)
            _, html = page_with(running, "gauge-high", "data:image/png;base64,")
            screenshot(html, 390, Path(sys.argv[1]))
        finally:
            running.stop()


def test_a_thousand_alerts_list_the_first_200_and_count_the_rest():
    from alertmail.render.status_page import render_status_page
    from alertmail.render.view import RenderContext
    from alertmail.rules.model import AlertEvent, Rule

    rule = Rule(name="disk-full", metric="disk.used_percent", above=95, severity="critical")
    now = 1_768_482_180.0
    events = [
        AlertEvent("firing", rule, (("mount", f"/srv/{n}"),), 96.0, 95.0, ">", "critical", now - 60, now, f"i{n}")
        for n in range(1000)
    ]
    answer = {
        "agent": {
            "pid": 1,
            "version": "x",
            "config": "/etc/alertmail/config.toml",
            "uptime_seconds": 60.0,
            "started": "2026-01-15T13:02:00+00:00",
            "last_reload": None,
        },
        "silences": [],
        "probes": [],
        "queue": {"depth": 0, "oldest": None, "held": [], "waiting": []},
        "mails": [],
    }
    html = render_status_page(events, {}, answer, RenderContext(hostname="vm", charts="off"), now)
    assert "1000 firing, 0 pending on vm" in html
    assert "The first 200 of 1000 alerts" in html
    assert html.count("/srv/") < 1000
