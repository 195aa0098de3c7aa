"""MTA-STS (RFC 8461) in the mx transport, against a real dnsmasq (MX, TXT and A records), a
real HTTPS server on 127.0.0.1 serving the policies with a certificate from a throwaway CA,
and real SMTP servers on 127.0.0.2 and 127.0.0.3. The policy server's port is given with
``mta_sts_port``, the option documented as for tests only; everything else is as in production.

sts.test and testing.test have two MX hosts: mx.elsewhere.test (preference 5, 127.0.0.2),
which their policies do not list, and mx.sts.test (preference 10, 127.0.0.3), which they do.
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading

import pytest
from aiosmtpd.controller import Controller

from alertmail.model import Envelope, Status
from alertmail.plugins.transports.mtasts import PolicyError, mx_matches, parse_policy, parse_txt
from tests.certs import make_tls_files
from tests.peers import Dnsmasq, SmtpSink
from tests.test_transport_mx import common_mx_port, run, send_all, transport
from tests.test_transport_smtp import Recorder

RECORDS = [
    *(f"mx-host={d},mx.elsewhere.test,5" for d in ("sts.test", "testing.test", "down.test")),
    *(f"mx-host={d},mx.sts.test,10" for d in ("sts.test", "testing.test", "down.test")),
    "host-record=mx.elsewhere.test,127.0.0.2",
    "host-record=mx.sts.test,127.0.0.3",
    "txt-record=_mta-sts.sts.test,v=STSv1; id=20261204T1",
    "txt-record=_mta-sts.testing.test,v=STSv1; id=1",
    "txt-record=_mta-sts.down.test,v=STSv1; id=1",
    "host-record=mta-sts.sts.test,127.0.0.1",
    "host-record=mta-sts.testing.test,127.0.0.1",
    "host-record=mta-sts.down.test,127.0.0.1",
]
POLICIES = {
    "mta-sts.sts.test": "version: STSv1\nmode: enforce\nmx: *.sts.test\nmax_age: 86400\n",
    "mta-sts.testing.test": "version: STSv1\r\nmode: testing\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n",
}
NAMES = ("mx.sts.test", "mx.elsewhere.test", *POLICIES, "mta-sts.down.test")


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records=RECORDS) as server:
        yield server


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_files(tmp_path_factory.mktemp("tls"), names=NAMES)


class PolicyServer:
    """A real HTTPS server on 127.0.0.1 serving each mta-sts.<domain> its policy by Host header."""

    def __init__(self, context: ssl.SSLContext, content_type: str = "text/plain", status: int = 200) -> None:
        served = self.requests = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
                served.append((host, self.path))
                body = POLICIES.get(host, "").encode()
                if self.path != "/.well-known/mta-sts.txt" or not body:
                    self.send_error(404)
                    return
                self.send_response(status)
                if status in (301, 302):
                    self.send_header("Location", f"https://{host}/elsewhere.txt")
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> PolicyServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Mx:
    """An aiosmtpd server standing in for an MX host; ``tls_context`` None offers no STARTTLS."""

    def __init__(self, address: str, port: int, name: str, tls_context: ssl.SSLContext | None) -> None:
        self.handler = Recorder()
        self.server = Controller(self.handler, hostname=address, port=port, server_hostname=name, tls_context=tls_context)

    def __enter__(self) -> Recorder:
        self.server.start()
        return self.handler

    def __exit__(self, *exc) -> None:
        self.server.stop()


def mx_transport(tmp_path, dns, tls, policy_port: int, port: int):
    return transport(tmp_path, resolver=dns.address, port=port, ca_file=str(tls.ca), mta_sts_port=policy_port)


def test_enforced_policy_skips_an_mx_it_does_not_list_and_uses_verified_tls(tmp_path, dns, tls):
    port = common_mx_port()
    with (
        PolicyServer(tls.server_context()) as policies,
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
        Mx("127.0.0.3", port, "mx.sts.test", tls.server_context()) as listed,
    ):
        [result] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@sts.test"]))
        assert elsewhere.messages() == []  # preference 5, but not in the policy
    status = result.recipients["ops@sts.test"]
    assert status.status is Status.DELIVERED
    assert status.remote == f"mx.sts.test[127.0.0.3]:{port}"
    assert listed.messages[0][4]  # over TLS
    assert policies.requests == [("mta-sts.sts.test", "/.well-known/mta-sts.txt")]


@pytest.mark.parametrize("offer", ["no STARTTLS", "a certificate nobody signed"])
def test_enforced_policy_keeps_the_mail_when_the_listed_mx_has_no_valid_tls(tmp_path, dns, tls, offer):
    port = common_mx_port()
    context = None if offer == "no STARTTLS" else tls.server_context(rogue=True)
    with (
        PolicyServer(tls.server_context()) as policies,
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
        Mx("127.0.0.3", port, "mx.sts.test", context) as listed,
    ):
        [result] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@sts.test"]))
        assert elsewhere.messages() == []
    assert listed.messages == []
    status = result.recipients["ops@sts.test"]
    assert status.status is Status.TEMPORARY
    assert status.enhanced in ("4.7.4", "4.7.5")
    assert "the MTA-STS policy of sts.test (mode enforce) forbids sending in clear text" in status.message


def test_testing_policy_delivers_as_without_a_policy_and_warns(tmp_path, dns, tls, caplog):
    port = common_mx_port()
    with (
        PolicyServer(tls.server_context()) as policies,
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
        caplog.at_level(logging.WARNING, logger="alertmail.transport.mx"),
    ):
        [result] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@testing.test"]))
        assert len(elsewhere.wait_for(1, 10)) == 1
    assert result.delivered == ["ops@testing.test"]
    assert "mail server mx.elsewhere.test is not listed in the MTA-STS policy of testing.test (mode testing)" in caplog.text


@pytest.mark.parametrize("offer", ["no STARTTLS", "a certificate nobody signed"])
def test_testing_policy_reports_what_enforce_would_refuse_and_delivers(tmp_path, dns, tls, caplog, offer):
    port = common_mx_port()
    context = None if offer == "no STARTTLS" else tls.server_context(rogue=True)
    with (
        PolicyServer(tls.server_context()) as policies,
        Mx("127.0.0.2", port, "mx.elsewhere.test", context) as elsewhere,
        caplog.at_level(logging.WARNING, logger="alertmail.transport.mx"),
    ):
        [result] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@testing.test"]))
    assert result.delivered == ["ops@testing.test"]
    assert elsewhere.messages[0][4] is (offer != "no STARTTLS")  # encrypted when TLS was offered
    assert "the MTA-STS policy of testing.test (mode testing) would refuse" in caplog.text


def test_cached_policy_survives_a_restart_and_an_outage_of_the_policy_server(tmp_path, dns, tls):
    port = common_mx_port()
    with PolicyServer(tls.server_context()) as policies:
        with Mx("127.0.0.3", port, "mx.sts.test", tls.server_context()) as listed:
            [first] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@sts.test"]))
        assert first.delivered == ["ops@sts.test"]
    assert (tmp_path / "mta-sts.json").exists()
    # A new transport (the agent restarted), the policy server gone: the cached policy still rules.
    with (
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
        Mx("127.0.0.3", port, "mx.sts.test", None),
    ):
        [second] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), ["ops@sts.test"]))
        assert elsewhere.messages() == []
    assert second.recipients["ops@sts.test"].status is Status.TEMPORARY
    assert "MTA-STS policy of sts.test" in second.recipients["ops@sts.test"].message
    assert len(listed.messages) == 1


@pytest.mark.parametrize("fault", ["a certificate nobody signed", "Content-Type text/html", "a redirect", "no policy server"])
def test_a_policy_that_cannot_be_fetched_safely_is_not_used_and_is_reported(tmp_path, dns, tls, caplog, fault):
    # RFC 8461 §5: no valid policy and none cached: deliver as without MTA-STS.
    port = common_mx_port()
    context = tls.server_context(rogue=fault == "a certificate nobody signed")
    server = PolicyServer(
        context,
        content_type="text/html" if fault == "Content-Type text/html" else "text/plain",
        status=302 if fault == "a redirect" else 200,
    )
    domain = "down.test" if fault == "no policy server" else "sts.test"
    with (
        server as policies,
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
        caplog.at_level(logging.WARNING, logger="alertmail.transport.mx"),
    ):
        [result] = run(send_all(mx_transport(tmp_path, dns, tls, policies.port, port), [f"ops@{domain}"]))
        assert len(elsewhere.wait_for(1, 10)) == 1
    assert result.delivered == [f"ops@{domain}"]
    assert f"MTA-STS policy of {domain} (id " in caplog.text and "cannot be fetched" in caplog.text
    assert not (tmp_path / "mta-sts.json").exists()


def test_deliveries_at_the_same_time_share_one_policy_fetch(tmp_path, dns, tls):
    import asyncio

    from tests.test_transport_smtp import MESSAGE

    port = common_mx_port()
    with (
        PolicyServer(tls.server_context()) as policies,
        Mx("127.0.0.3", port, "mx.sts.test", tls.server_context()) as listed,
    ):
        t = mx_transport(tmp_path, dns, tls, policies.port, port)

        async def burst():
            try:
                return await asyncio.gather(*(t.send(MESSAGE, Envelope("a@host.test", ("ops@sts.test",))) for _ in range(6)))
            finally:
                await t.close()

        results = run(burst())
    assert all(r.delivered == ["ops@sts.test"] for r in results)
    assert len(listed.messages) == 6
    assert len(policies.requests) == 1


def test_mta_sts_can_be_turned_off(tmp_path, dns, tls):
    port = common_mx_port()
    with (
        PolicyServer(tls.server_context()) as policies,
        SmtpSink(tmp_path / "elsewhere", host="127.0.0.2", port=port) as elsewhere,
    ):
        t = transport(tmp_path, resolver=dns.address, port=port, mta_sts=False, mta_sts_port=policies.port)
        [result] = run(send_all(t, ["ops@sts.test"]))
        assert len(elsewhere.wait_for(1, 10)) == 1
    assert result.delivered == ["ops@sts.test"]
    assert policies.requests == []


# -- the policy language (pure units) --------------------------------------------------


def test_mx_patterns_match_one_leftmost_label_only():
    assert mx_matches("mail.example.com", "MAIL.example.com.")
    assert mx_matches("*.example.com", "mx1.example.com")
    assert not mx_matches("*.example.com", "example.com")
    assert not mx_matches("*.example.com", "a.b.example.com")
    assert not mx_matches("mail.example.com", "mail.example.com.evil.test")


def test_txt_record_needs_version_first_and_a_valid_id():
    assert parse_txt([b"v=STSv1; id=20160831085700Z;"]) == "20160831085700Z"
    assert parse_txt([b"v=STSv1; ", b"id=abc"]) == "abc"
    assert parse_txt([b"id=abc; v=STSv1"]) is None
    assert parse_txt([b"v=STSv1; id=not-alnum"]) is None
    assert parse_txt([b"v=STSv1"]) is None


def test_policy_body_is_checked():
    policy = parse_policy("version: STSv1\nmode: enforce\nmx: a.test\nmx: *.b.test\nmax_age: 600\nextension: x\n", "1", 0.0)
    assert (policy.mode, policy.mx, policy.max_age) == ("enforce", ("a.test", "*.b.test"), 600)
    assert policy.expired(600.0) and not policy.expired(599.0)
    for bad in (
        "mode: enforce\nmx: a.test\nmax_age: 600\n",  # no version
        "version: STSv1\nmode: strict\nmx: a.test\nmax_age: 600\n",
        "version: STSv1\nmode: enforce\nmax_age: 600\n",  # no mx
        "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 99999999\n",
        "version: STSv1\nmode: enforce\nmx: a.test\n",
    ):
        with pytest.raises(PolicyError):
            parse_policy(bad, "1", 0.0)


# -- the cache (units: DNS and HTTPS stood in for by functions) ---------------------------


def cache_only(path, txt=None):
    """An MtaSts whose TXT lookup answers ``txt`` (None: no record) and whose fetch always fails."""
    from types import SimpleNamespace

    from alertmail.plugins.transports.mtasts import MtaSts

    async def query(name, rdtype):
        return [SimpleNamespace(strings=[txt.encode()])] if txt else None

    async def addresses(host):
        return []  # the policy host has no address: every fetch fails

    return MtaSts(path, query=query, addresses=addresses)


def write_cache(path, fetched: float, max_age: int = 3600):
    import json

    policy = {"id": "1", "mode": "enforce", "mx": ["mx.sts.test"], "max_age": max_age, "fetched": fetched}
    path.write_text(json.dumps({"policies": {"sts.test": policy}}))


def test_a_cached_policy_applies_without_its_txt_record_until_it_expires(tmp_path):
    import time

    path = tmp_path / "mta-sts.json"
    write_cache(path, time.time() - 60)
    policy = run(cache_only(path).policy("sts.test"))
    assert policy is not None and policy.mode == "enforce"
    write_cache(path, time.time() - 7200)  # max_age 3600: expired
    assert run(cache_only(path).policy("sts.test")) is None


def test_a_new_txt_id_with_a_failed_fetch_keeps_the_cached_policy(tmp_path, caplog):
    import time

    path = tmp_path / "mta-sts.json"
    write_cache(path, time.time() - 60)
    with caplog.at_level(logging.WARNING, logger="alertmail.transport.mx"):
        policy = run(cache_only(path, "v=STSv1; id=2").policy("sts.test"))
    assert policy is not None and policy.id == "1"
    assert "keeping the cached policy (mode enforce)" in caplog.text


def test_a_damaged_cache_is_set_aside_and_the_cache_starts_empty(tmp_path, caplog):
    path = tmp_path / "mta-sts.json"
    path.write_bytes(b'{"policies": {"sts.test": {"id": 1')
    with caplog.at_level(logging.WARNING, logger="alertmail.transport.mx"):
        assert run(cache_only(path).policy("sts.test")) is None
    assert not path.exists()
    assert (tmp_path / "mta-sts.json.damaged").read_bytes().startswith(b'{"policies"')
    assert "cannot be read" in caplog.text
