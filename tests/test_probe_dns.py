"""The ``dns`` probe against dnsmasq on a loopback port of its own."""

from __future__ import annotations

import asyncio
import socket

import pytest

from alertmail.plugins.probes.netchecks import DNS, ChecksSettings, ServiceProbe
from alertmail.probes.runner import configure_probe
from tests.peers import Dnsmasq


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    records = [
        "host-record=www.example.test,127.0.0.80",
        "host-record=two.example.test,127.0.0.81",
        "host-record=two.example.test,127.0.0.82",
        "mx-host=example.test,mx1.example.test,10",
        "txt-record=example.test,v=spf1 -all",
    ]
    with Dnsmasq(tmp_path_factory.mktemp("dnsmasq"), records) as server:
        yield server


def collect(probe, checks):
    probe.configure(ChecksSettings(checks=checks))
    samples = asyncio.run(probe.collect())
    return {(s.metric, s.label_dict()["check"]): s.value for s in samples}


def test_an_answer_is_up_with_its_time_and_the_expected_values(dns):
    probe = ServiceProbe(DNS)
    got = collect(
        probe,
        [
            {"name": "www", "query": "www.example.test", "server": dns.address, "expect": "127.0.0.80"},
            {"name": "both", "query": "two.example.test", "server": dns.address, "expect": ["127.0.0.82", "127.0.0.81"]},
            {"name": "mx", "query": "example.test", "type": "MX", "server": dns.address, "expect": "10 MX1.example.test."},
            {"name": "spf", "query": "example.test", "type": "TXT", "server": dns.address, "expect": "v=spf1 -all"},
            {"name": "plain", "query": "www.example.test", "server": dns.address},
        ],
    )
    for check in ("www", "both", "mx", "spf"):
        assert (got[("dns.up", check)], got[("dns.answer_matches", check)]) == (1.0, 1.0), check
    assert 0 < got[("dns.response_seconds", "www")] < 10
    assert got[("dns.up", "plain")] == 1.0 and ("dns.answer_matches", "plain") not in got
    assert "127.0.0.80" in probe.detail("dns.up", {"check": "www"})


def test_an_unexpected_answer_is_up_but_does_not_match_and_says_what_is_missing(dns):
    probe = ServiceProbe(DNS)
    got = collect(probe, [{"name": "www", "query": "www.example.test", "server": dns.address, "expect": "127.0.0.99"}])
    assert (got[("dns.up", "www")], got[("dns.answer_matches", "www")]) == (1.0, 0.0)
    assert "expected 127.0.0.99 is not in the answer" in probe.detail("dns.answer_matches", {"check": "www"})


def test_a_name_not_found_is_down_and_says_so(dns):
    probe = ServiceProbe(DNS)
    got = collect(probe, [{"name": "gone", "query": "gone.example.test", "server": dns.address, "expect": "127.0.0.1"}])
    assert (got[("dns.up", "gone")], got[("dns.answer_matches", "gone")]) == (0.0, 0.0)
    assert "name not found (NXDOMAIN)" in probe.detail("dns.up", {"check": "gone"})


def test_a_missing_record_type_is_down_and_says_so(dns):
    probe = ServiceProbe(DNS)
    got = collect(probe, [{"name": "v6", "query": "www.example.test", "type": "AAAA", "server": dns.address}])
    assert got[("dns.up", "v6")] == 0.0
    assert "has no AAAA record" in probe.detail("dns.up", {"check": "v6"})


def test_a_server_that_never_answers_is_down_after_the_timeout():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        server = f"127.0.0.1:{silent.getsockname()[1]}"
        probe = ServiceProbe(DNS)
        got = collect(probe, [{"name": "mute", "query": "www.example.test", "server": server, "timeout": "0.5s"}])
    assert got == {("dns.up", "mute"): 0.0}
    assert "no answer within 0.5s" in probe.detail("dns.up", {"check": "mute"})


@pytest.mark.parametrize(
    ("check", "problem"),
    [
        ({"name": "a"}, "probes.dns.checks[0].query: missing;"),
        ({"name": "a", "query": "x", "type": "AXFR"}, "probes.dns.checks[0].type: expected one of 'A'"),
        ({"name": "a", "query": "x", "server": "ns1.example.com"}, "probes.dns.checks[0].server: expected an IP address"),
        ({"name": "a", "query": "x", "server": "127.0.0.1:0"}, "probes.dns.checks[0].server: expected an IP address"),
        ({"name": "a", "query": "x", "expect": []}, "probes.dns.checks[0].expect: expected a string or a list"),
    ],
)
def test_a_bad_dns_check_is_refused_with_the_key_path(check, problem):
    problems = configure_probe("dns", ServiceProbe(DNS), ChecksSettings(checks=[check]))
    assert any(p.startswith(problem) for p in problems), problems
