"""A probe's ``detail(metric, labels)`` text reaches the alert mail: gathered per series
before rendering, shown line by line, cleaned of control characters."""

from __future__ import annotations

import logging

from alertmail.render.context import probe_details, series_key
from alertmail.render.mail import render_alert
from alertmail.rules.model import Rule
from tests.test_render import context, event, text_of

NAGIOS_RULE = Rule(name="smtp-down", metric="nagios.status", above=1, severity="critical")


class Says:
    name = "says"

    def detail(self, metric, labels):
        return (
            f"CRITICAL: {labels['check']} refused\x1b[31m\nsecond line\r\nBcc: evil@example.com"
            if metric == "nagios.status"
            else None
        )


class Breaks:
    name = "breaks"

    def detail(self, metric, labels):
        raise RuntimeError("boom")


def test_the_first_probe_with_a_detail_for_the_series_is_asked_and_a_failing_one_is_skipped(caplog):
    ev = event(NAGIOS_RULE, labels=(("check", "smtp"),), value=2)
    with caplog.at_level(logging.WARNING):
        details = probe_details([ev, ev], {"breaks": Breaks(), "quiet": object(), "says": Says()})
    assert list(details) == [series_key("nagios.status", (("check", "smtp"),))] == ["nagios.status{check=smtp}"]
    assert "boom" in caplog.text


def test_the_mail_shows_the_detail_line_by_line_with_control_characters_replaced():
    ev = event(NAGIOS_RULE, labels=(("check", "smtp"),), value=2)
    msg = render_alert([ev], context(extra={"details": probe_details([ev], {"says": Says()})}))
    text = text_of(msg)
    assert "The probe said:\n    CRITICAL: smtp refused" in text
    assert "\x1b" not in text and "    second line\n    Bcc: evil@example.com" in text
    assert msg["Bcc"] is None
