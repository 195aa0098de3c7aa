"""What a receiver will make of the mail: SPF, DKIM and DMARC looked up on a real DNS server (dnsmasq)."""

from __future__ import annotations

from pathlib import Path

import pytest

from alertmail.cli.deliverability import DIRECT, LOCAL_MTA, SMART_HOST, check, who_sends
from alertmail.delivery.dkim import DkimSettings, generate_rsa, txt_strings, txt_value
from tests.peers import Dnsmasq

pytestmark = pytest.mark.peers


@pytest.fixture(scope="module")
def key(tmp_path_factory) -> tuple[Path, str]:
    """An RSA key file (mode 0600) and its p= value."""
    private, public = generate_rsa(2048)
    path = tmp_path_factory.mktemp("key") / "sel.key"
    path.write_bytes(private)
    path.chmod(0o600)
    return path, public


@pytest.fixture(scope="module")
def dns(tmp_path_factory, key):
    # argv reaches dnsmasq unquoted: a comma would start a second string of the record.
    records = [
        "txt-record=spf.test,v=spf1 ip4:192.0.2.10 -all",
        "txt-record=_dmarc.spf.test,v=DMARC1; p=reject",
        "txt-record=open.test,v=spf1 +all",
        f"txt-record=sel._domainkey.signed.test,{','.join(txt_strings(txt_value('rsa', key[1])))}",
        "txt-record=_dmarc.signed.test,v=DMARC1; p=quarantine",
        "txt-record=double.test,v=spf1 -all",
        "txt-record=double.test,v=spf1 ip4:192.0.2.1 -all",
    ]
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records) as server:
        yield server


def findings(report):
    return {f.check: f.state for f in report.findings}


def test_direct_unsigned_mail_from_a_domain_without_spf_is_likely_refused(dns):
    report = check("alertmail@bare.test", ["mx"], {"mx": {"mode": "mx"}}, None, dns.resolver(), sending_addresses=[])
    assert report.sender == DIRECT and findings(report) == {"SPF": "none", "DKIM": "off", "DMARC": "none"}
    assert report.likely_refused and "Gmail and Yahoo will likely refuse" in report.verdict
    text = "\n".join(report.lines())
    assert 'publish "v=spf1 ip4:<this host\'s public address> -all" at bare.test' in text
    assert "[mail.dkim]" in text and 'route = ["smtp"]' in text and "_dmarc.bare.test" in text


def test_a_strict_spf_record_carries_unsigned_mail_from_a_listed_smart_host(dns):
    report = check("alertmail@spf.test", ["smtp"], {"smtp": {}}, None, dns.resolver(), sending_addresses=["192.0.2.10"])
    assert report.sender == SMART_HOST and findings(report) == {"SPF": "pass", "DKIM": "off", "DMARC": "pass"}
    assert not report.likely_refused and "DMARC passes" in report.verdict
    assert any("turn on [mail.dkim]" in fix for fix in report.fixes)  # SPF breaks when forwarded


def test_without_the_sending_address_spf_is_not_guessed(dns):
    report = check("alertmail@spf.test", ["smtp"], {"smtp": {}}, None, dns.resolver())
    assert findings(report)["SPF"] == "unknown" and "--sending-address" in report.findings[0].detail
    assert findings(report)["DMARC"] == "fail" and report.likely_refused  # p=reject and nothing aligned passes


def test_a_published_key_that_matches_makes_signed_mail_pass(dns, key):
    dkim = DkimSettings(domain="signed.test", selector="sel", key_file=Path(key[0]))
    report = check("alertmail@signed.test", ["mx"], {"mx": {}}, dkim, dns.resolver(), sending_addresses=[])
    assert findings(report) == {"SPF": "none", "DKIM": "pass", "DMARC": "pass"} and not report.likely_refused


def test_an_unpublished_key_is_named(dns, key):
    dkim = DkimSettings(domain="bare.test", selector="sel", key_file=Path(key[0]))
    missing = check("a@bare.test", ["mx"], {}, dkim, dns.resolver())
    assert findings(missing)["DKIM"] == "neutral" and "no key published at sel._domainkey.bare.test" in missing.findings[1].detail
    assert any("publish the record `alertmail dkim keygen` printed" in fix for fix in missing.fixes)


def test_spf_that_allows_anyone_or_is_doubled(dns):
    anyone = check("a@open.test", ["mx"], {}, None, dns.resolver(), sending_addresses=["192.0.2.77"])
    assert findings(anyone)["SPF"] == "pass" and any("ends in +all" in fix for fix in anyone.fixes)
    doubled = check("a@double.test", ["mx"], {}, None, dns.resolver(), sending_addresses=[])
    assert findings(doubled)["SPF"] == "permerror" and doubled.likely_refused
    assert any("merge the 2 SPF records" in fix for fix in doubled.fixes)


def test_who_hands_the_mail_to_the_receiver():
    assert who_sends(["mx"], {"mx": {"mode": "mx-then-smarthost"}}) == DIRECT
    assert who_sends(["mx"], {"mx": {"mode": "smarthost"}}) == SMART_HOST
    assert who_sends(["pickup"], {}) == LOCAL_MTA


def test_check_deliverability_reads_the_config_and_asks_the_given_dns_server(tmp_path, dns):
    import json
    import re
    import subprocess
    import sys

    alertmail = [sys.executable, "-m", "alertmail"]
    keys = tmp_path / "keys"
    keys.mkdir()
    made = subprocess.run(
        [*alertmail, "dkim", "keygen", "--domain", "own.test", "--selector", "s1", "-o", str(keys)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    # The TXT record as published: its quoted strings, joined by dnsmasq's commas.
    strings = re.findall(r'"([^"]*)"', made.stdout)
    config = tmp_path / "config.toml"
    base = '[agent]\nstate_dir = "var"\n[mail]\nfrom = "alertmail@own.test"\nroute = ["mx"]\n'
    config.write_text(base)
    with Dnsmasq(tmp_path / "dns", [f"txt-record=s1._domainkey.own.test,{','.join(strings)}"]) as own:
        unsigned = subprocess.run(
            [*alertmail, "check", "-c", str(config), "--deliverability", "--resolver", own.address],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert unsigned.returncode == 0, unsigned.stderr
        assert "LIKELY REFUSED" in unsigned.stdout and "this host, directly" in unsigned.stdout
        config.write_text(base + f'[mail.dkim]\ndomain = "own.test"\nselector = "s1"\nkey_file = "{keys / "s1.key"}"\n')
        signed = subprocess.run(
            [*alertmail, "check", "-c", str(config), "--deliverability", "--resolver", own.address, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert signed.returncode == 0, signed.stderr
        report = json.loads(signed.stdout)
        assert not report["likely_refused"] and {f["check"]: f["state"] for f in report["findings"]}["DKIM"] == "pass"
