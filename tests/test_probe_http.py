"""The ``http`` probe against real HTTP and HTTPS servers on loopback (a throwaway CA,
certificates about to expire and expired), and its checks list refused with every fault."""

from __future__ import annotations

import asyncio

import pytest

from alertmail.plugins.probes.netchecks import HTTP, ChecksSettings, ServiceProbe
from alertmail.probes.runner import configure_probe
from tests.peers import free_port
from tests.service_peers import HttpServer, make_certs


def collect(probe, checks):
    probe.configure(ChecksSettings(checks=checks))
    samples = asyncio.run(probe.collect())
    return {(s.metric, s.label_dict()["check"]): s.value for s in samples}


def test_a_healthy_page_is_up_with_its_status_and_time():
    probe = ServiceProbe(HTTP)
    with HttpServer() as server:
        got = collect(probe, [{"name": "home", "url": server.url("/"), "contains": "all g..d"}])
    assert got[("http.up", "home")] == 1.0
    assert got[("http.status_code", "home")] == 200.0
    assert 0 < got[("http.response_seconds", "home")] < 10
    assert ("http.cert_days_left", "home") not in got  # plain http has no certificate
    assert "HTTP 200" in probe.detail("http.up", {"check": "home"})


def test_a_500_is_down_and_the_detail_names_the_status():
    probe = ServiceProbe(HTTP)
    with HttpServer() as server:
        got = collect(probe, [{"name": "api", "url": server.url("/broken")}])
    assert got[("http.up", "api")] == 0.0
    assert got[("http.status_code", "api")] == 500.0
    assert "HTTP 500" in probe.detail("http.up", {"check": "api"})


def test_expect_status_and_contains_decide_up():
    probe = ServiceProbe(HTTP)
    with HttpServer() as server:
        got = collect(
            probe,
            [
                {"name": "wants-500", "url": server.url("/broken"), "expect_status": [500]},
                {"name": "wrong-body", "url": server.url("/"), "contains": "^maintenance"},
                {"name": "redirect", "url": server.url("/moved")},
                {"name": "followed", "url": server.url("/moved"), "follow_redirects": True, "expect_status": 200},
            ],
        )
    assert got[("http.up", "wants-500")] == 1.0
    assert got[("http.up", "wrong-body")] == 0.0
    assert "does not match '^maintenance'" in probe.detail("http.up", {"check": "wrong-body"})
    assert (got[("http.up", "redirect")], got[("http.status_code", "redirect")]) == (1.0, 302.0)
    assert (got[("http.up", "followed")], got[("http.status_code", "followed")]) == (1.0, 200.0)


def test_a_refused_connection_is_down_and_says_connection_refused():
    probe = ServiceProbe(HTTP)
    got = collect(probe, [{"name": "gone", "url": f"http://127.0.0.1:{free_port()}/"}])
    assert got == {("http.up", "gone"): 0.0}
    assert "connection refused" in probe.detail("http.up", {"check": "gone"})


def test_no_answer_within_the_timeout_is_down_and_says_so():
    probe = ServiceProbe(HTTP)
    with HttpServer() as server:
        got = collect(probe, [{"name": "slow", "url": server.url("/slow"), "timeout": "0.5s"}])
    assert got == {("http.up", "slow"): 0.0}
    assert "no answer within 0.5s" in probe.detail("http.up", {"check": "slow"})


def test_https_reports_the_days_left_of_a_certificate_about_to_expire(tmp_path):
    certs = make_certs(tmp_path, days=2.5)
    probe = ServiceProbe(HTTP)
    with HttpServer(certs.server_context()) as server:
        got = collect(probe, [{"name": "shop", "url": server.url("/"), "ca_file": str(certs.ca)}])
    assert got[("http.up", "shop")] == 1.0
    assert 2.4 < got[("http.cert_days_left", "shop")] < 2.6
    assert "certificate expires in 2.5 days" in probe.detail("http.cert_days_left", {"check": "shop"})


def test_an_expired_certificate_is_down_with_negative_days_and_says_expired(tmp_path):
    certs = make_certs(tmp_path, days=-3)
    probe = ServiceProbe(HTTP)
    with HttpServer(certs.server_context()) as server:
        got = collect(probe, [{"name": "shop", "url": server.url("/"), "ca_file": str(certs.ca)}])
    assert got[("http.up", "shop")] == 0.0
    assert -3.1 < got[("http.cert_days_left", "shop")] < -2.9
    detail = probe.detail("http.up", {"check": "shop"})
    assert "certificate not valid: certificate has expired" in detail
    assert "expired 3.0 days ago" in detail


def test_an_untrusted_or_misnamed_certificate_is_down_and_says_why(tmp_path):
    certs = make_certs(tmp_path / "other-names", days=30, names=("other.test",))
    probe = ServiceProbe(HTTP)
    with HttpServer(certs.server_context()) as server:
        got = collect(
            probe,
            [
                {"name": "untrusted", "url": server.url("/")},  # the system's CAs do not know the test CA
                {"name": "misnamed", "url": server.url("/"), "ca_file": str(certs.ca)},
            ],
        )
    assert got[("http.up", "untrusted")] == got[("http.up", "misnamed")] == 0.0
    assert "unable to get local issuer certificate" in probe.detail("http.up", {"check": "untrusted"})
    assert "mismatch" in probe.detail("http.up", {"check": "misnamed"}).lower()


def test_the_detail_belongs_to_the_check_and_to_http_metrics_only():
    probe = ServiceProbe(HTTP)
    with HttpServer() as server:
        collect(probe, [{"name": "a", "url": server.url("/")}, {"name": "b", "url": server.url("/broken")}])
    assert "HTTP 200" in probe.detail("http.up", {"check": "a"})
    assert "HTTP 500" in probe.detail("http.up", {"check": "b"})
    assert probe.detail("http.up", {"check": "c"}) is None
    assert probe.detail("tcp.up", {"check": "a"}) is None


@pytest.mark.parametrize(
    ("checks", "problem"),
    [
        ("http://x", "probes.http.checks: expected a list of tables"),
        ([{"url": "http://x"}], "probes.http.checks[0].name: missing;"),
        ([{"name": "a"}], "probes.http.checks[0].url: missing;"),
        ([{"name": "a", "url": "ftp://x"}], "probes.http.checks[0].url: expected an http:// or https:// URL"),
        ([{"name": "a", "url": "http://x", "methd": "GET"}], "probes.http.checks[0].methd: unknown key; did you mean 'method'?"),
        ([{"name": "a", "url": "http://x", "contains": "("}], "probes.http.checks[0].contains: not a regular expression"),
        ([{"name": "a", "url": "http://x", "expect_status": [99]}], "probes.http.checks[0].expect_status: expected an HTTP"),
        ([{"name": "a", "url": "http://x", "ca_file": "/nonexistent.pem"}], "probes.http.checks[0].ca_file: no such file"),
        ([{"name": "a", "url": "http://x"}, {"name": "a", "url": "http://y"}], "probes.http.checks[1].name: 'a' is used twice"),
    ],
)
def test_a_bad_checks_list_is_refused_with_the_key_path(checks, problem):
    problems = configure_probe("http", ServiceProbe(HTTP), ChecksSettings(checks=checks))
    assert any(p.startswith(problem) for p in problems), problems


def test_the_metric_catalogue_documents_every_service_metric_and_check_key():
    from pathlib import Path

    from alertmail.plugins.probes.netchecks import PROBES

    doc = (Path(__file__).parent.parent / "docs" / "metrics.md").read_text()
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip() for line in doc.splitlines() if line.startswith("| `")
    }
    for probe in PROBES:
        for info in probe.metrics:
            assert rows.get(info.name) == (info.unit or "—"), f"docs/metrics.md: {info.name} ({info.unit}) missing or stale"
        section = doc.split(f"### `{probe.name}` — ", 1)[1].split("\n### ", 1)[0]
        for key in probe.keys:
            assert f"| `{key}` |" in section, f"docs/metrics.md: {probe.name} check key {key} missing"


def test_httpx_is_imported_only_when_an_http_check_is_configured():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from alertmail.plugins.probes.netchecks import HTTP, TCP, ServiceProbe\n"
        "http, tcp = ServiceProbe(HTTP), ServiceProbe(TCP)\n"
        "http.configure(http.options(checks=[]))\n"
        "tcp.configure(tcp.options(checks=[{'name': 'a', 'host': '127.0.0.1', 'port': 1}]))\n"
        "print('httpx' in sys.modules, 'alertmail.plugins.probes.tcp_check' in sys.modules)\n"
        "http.configure(http.options(checks=[{'name': 'a', 'url': 'http://127.0.0.1:1/'}]))\n"
        "print('httpx' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["False", "True", "True"]
