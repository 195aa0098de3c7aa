"""The alert mail readable anywhere: a phone's 390 px, dark mode, runbook links, charts described in words."""

from __future__ import annotations

import email
import email.policy
from html.parser import HTMLParser
from pathlib import Path

import pytest

from alertmail.config.schema import Checker
from alertmail.render.mail import render_alert
from alertmail.rules.config import rules_from_config
from alertmail.rules.model import AlertEvent
from tests.browser import AT, DISK, grouped_mail, inline_images, measure, single_mail
from tests.test_render import context, event


def html_of(msg) -> str:
    return msg.get_body(("html",)).get_content()


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content()


@pytest.mark.parametrize("build", [single_mail, grouped_mail], ids=["single", "grouped"])
def test_mail_fits_a_390_px_phone_screen_without_sideways_scrolling(build, tmp_path):
    layout = measure(inline_images(build()), 390, folder=tmp_path)
    assert layout.scroll_width <= 390, f"the mail is {layout.scroll_width} px wide: {layout.overflowing}"
    assert layout.overflowing == []
    assert layout.smallest_text >= 11, f"text as small as {layout.smallest_text} px"
    assert layout.images, "no chart in the mail"
    for image in layout.images:
        assert image["complete"] and image["natural"][0] > 0, image
        assert 0 < image["shown"][0] <= 390, image  # scaled to the column, the newest data on the right still in view
        assert abs(image["shown"][0] / image["shown"][1] - image["natural"][0] / image["natural"][1]) < 0.05, image


def test_charts_show_640_css_px_wide_on_a_wide_screen(tmp_path):
    layout = measure(inline_images(grouped_mail()), 800, folder=tmp_path)
    assert layout.scroll_width <= 800
    assert [image["shown"][0] for image in layout.images] == [640, 640, 640]


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_every_text_stands_out_from_its_background_in_light_and_dark_mode(dark, tmp_path):
    layout = measure(inline_images(grouped_mail(charts="off")), 390, folder=tmp_path, dark=dark)
    assert layout.low_contrast == []


class Styles(HTMLParser):
    """Each element's inline style, with the styles of the elements around it."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.found: list[tuple[str, str, list[str]]] = []  # tag, style, the styles above it
        self.metas: dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "meta" and attrs.get("name"):
            self.metas[attrs["name"]] = attrs.get("content") or ""
        style = (attrs.get("style") or "").replace(" ", "").lower()
        self.found.append((tag, style, [s for _, s in self.stack]))
        if tag not in self.VOID:
            self.stack.append((tag, style))

    def handle_endtag(self, tag):
        while self.stack:
            if self.stack.pop()[0] == tag:
                break


def styles(html: str) -> Styles:
    parser = Styles()
    parser.feed(html)
    return parser


def test_html_declares_light_and_dark_colour_schemes():
    found = styles(html_of(render_alert([event()], context())))
    assert found.metas["color-scheme"] == "light dark"
    assert found.metas["supported-color-schemes"] == "light dark"


def test_no_text_colour_relies_on_an_undeclared_white_background():
    """A forced dark mode darkens backgrounds it knows of: a text colour needs one declared on it or around it."""
    html = html_of(render_alert([event(), event(DISK, kind="resolved", labels=())], context()))
    found = styles(html)
    coloured = [(tag, style, above) for tag, style, above in found.found if "color:" in style.replace("background-color:", "")]
    assert coloured
    for tag, style, above in coloured:
        declared = any(("background-color:" in s or "background:" in s) for s in [style, *above])
        assert declared, f"<{tag} style={style!r}> has no background declared"


def test_state_badges_declare_their_text_and_background_colours():
    html = html_of(render_alert([event(), event(kind="resolved", labels=())], context()))
    badges = [
        style for tag, style, _ in styles(html).found if tag == "span" and "background-color:" in style and "#ffffff" in style
    ]
    assert len(badges) == 4  # each alert in the summary table and in its section
    assert all("color:#ffffff" in b.replace("background-color", "") for b in badges)


def runbook_rules(value: str):
    check = Checker(Path("."))
    raw = [{"name": "disk", "metric": "disk.used_percent", "above": 90, "runbook": value}]
    return rules_from_config(raw, check, default_to=["ops@example.com"]), check.problems


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("wiki/disk-full", "expected an http or https URL"),
        ("javascript:alert(1)", "expected an http or https URL"),
        ("https:///no-host", "no host"),
        ("https://wiki.example.com/run books", "encode a space as %20"),
        ("https://wiki.example.com:port/x", "not a URL"),
    ],
)
def test_a_runbook_that_is_not_an_http_url_is_refused_with_the_key_and_the_fix(value, says):
    rules, problems = runbook_rules(value)
    assert rules == []
    [problem] = problems
    assert problem.startswith("rules[0].runbook: ") and says in problem and "https://wiki.example.com/runbooks/" in problem


def test_a_runbook_is_a_link_in_the_html_part_and_a_url_line_in_the_text_part():
    [rule], problems = runbook_rules("https://wiki.example.com/runbooks/disk-full?host=web01&x=1")
    assert problems == []
    msg = email.message_from_bytes(render_alert([event(rule)], context()).as_bytes(), policy=email.policy.default)
    assert '<a class="am-link" href="https://wiki.example.com/runbooks/disk-full?host=web01&amp;x=1"' in html_of(msg)
    assert "  runbook     https://wiki.example.com/runbooks/disk-full?host=web01&x=1\n" in text_of(msg)


def test_a_rule_without_a_runbook_shows_no_runbook_line():
    msg = render_alert([event()], context())
    assert "runbook" not in text_of(msg) and "runbook" not in html_of(msg)


def test_chart_alt_text_says_metric_labels_span_threshold_and_value():
    msg = render_alert([event()], context(charts="in-process"))
    [alt] = [a for tag, a in _alts(html_of(msg))]
    assert alt == (
        "Chart of disk.used_percent on web01 (mount=/), 13:15 CET to 14:15 CET (1h): 93.4 % now, "
        "threshold above 90 %, clears below 85 %; shaded: while it fired (since 14:03 CET)"
    )


def test_a_recovery_chart_says_its_value_at_the_end_and_when_it_fired():
    resolved = AlertEvent("resolved", DISK, (("mount", "/"),), 83.0, 90, ">", "critical", AT - 1800, AT, "i")
    msg = render_alert([resolved], context(charts="in-process", history=lambda m, labels: [(AT - 600, 95.0), (AT, 83.0)]))
    [alt] = [a for _, a in _alts(html_of(msg))]
    assert "10m): 83 % at the end" in alt and "while it fired (" in alt and " to " in alt


def _alts(html: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []

    class Alts(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                found.append((tag, dict(attrs).get("alt") or ""))

    Alts().feed(html)
    return found
