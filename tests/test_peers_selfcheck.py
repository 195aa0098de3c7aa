"""The test peers themselves work: a message sent with swaks lands in smtp-sink; dnsmasq answers MX."""

from tests.peers import Dnsmasq, swaks


def test_swaks_message_reaches_smtp_sink_with_envelope(smtp_sink):
    result = swaks("--server", smtp_sink.address, "--from", "a@x.test", "--to", "b@y.test,c@y.test", "--header", "Subject: hello")
    assert result.returncode == 0, result.stdout + result.stderr
    [got] = smtp_sink.wait_for(1)
    assert got.sender == "a@x.test"
    assert got.recipients == ["b@y.test", "c@y.test"]
    assert got.message["Subject"] == "hello"


def test_dnsmasq_serves_mx_null_mx_and_nxdomain(tmp_path):
    import dns.resolver

    records = ["mx-host=example.test,mx1.example.test,10", "host-record=mx1.example.test,127.0.0.2", "mx-host=nullmx.test,.,0"]
    with Dnsmasq(tmp_path, records) as dns_server:
        res = dns_server.resolver()
        [mx] = res.resolve("example.test", "MX")
        assert (mx.preference, str(mx.exchange)) == (10, "mx1.example.test.")
        assert [r.address for r in res.resolve("mx1.example.test", "A")] == ["127.0.0.2"]
        [null] = res.resolve("nullmx.test", "MX")
        assert str(null.exchange) == "."
        try:
            res.resolve("missing.test", "MX")
        except dns.resolver.NXDOMAIN:
            pass
        else:
            raise AssertionError("missing.test should be NXDOMAIN")
