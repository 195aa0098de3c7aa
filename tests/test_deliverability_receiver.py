"""``check --deliverability`` gives the verdict a receiver gives, case by case.

The receiver is Node's ``mailauth`` (``authenticate()``: SPF, DKIM and DMARC with its own
public-suffix handling), shares no code with pyspf, dkimpy or publicsuffixlist, and reads
the same records from a real DNS server (dnsmasq) on loopback. Each case signs a message
with the keys the config would use, hands it to both with the same sending address, and
compares SPF, every DKIM signature, the DMARC result and the policy that applies.
The sending addresses (192.0.2.0/24, TEST-NET-1) are only values in SPF records: nothing is sent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from alertmail.cli.deliverability import check, sample_message
from alertmail.delivery.dkim import DkimSettings, Signer, generate_ed25519, generate_rsa, txt_strings, txt_value
from tests.peers import Dnsmasq

NODE_PEERS = Path(os.environ.get("ALERTMAIL_NODE_PEERS", "/opt/alertmail-peers"))
SENDING = "192.0.2.10"
ELSEWHERE = "192.0.2.99"
pytestmark = pytest.mark.peers

# authenticate() without ARC and BIMI (whose HTTP client does not load on Debian 12's Node.js):
# the same calls, in the same order, as mailauth's authenticate() makes them.
RECEIVER = r"""
const fs = require('fs');
const dns = require('dns');
const { dkimVerify } = require('mailauth/lib/dkim/verify');
const { spf } = require('mailauth/lib/spf');
const { evaluateDmarc } = require('mailauth/lib/dmarc');
const [port, file, ip, sender] = process.argv.slice(2);
const resolver = new dns.promises.Resolver({ timeout: 3000, tries: 1 });
resolver.setServers([`127.0.0.1:${port}`]);
const lookup = (name, type) => resolver.resolve(name, type);
(async () => {
  const message = fs.readFileSync(file);
  const dkim = await dkimVerify(message, { resolver: lookup, sender });
  const spfResult = await spf({ ip, sender, helo: 'sender.test', mta: 'mx.receiver.test', resolver: lookup });
  const { response: dmarc } = await evaluateDmarc({
    headerFrom: dkim.headerFrom,
    fromFields: dkim.fromFields,
    spfDomains: [].concat((spfResult && spfResult.status.result === 'pass' && spfResult.domain) || []),
    dkimDomains: (dkim.results || []).filter((r) => r.status.result === 'pass').map((r) => ({
      id: r.id, domain: r.signingDomain, aligned: r.status.aligned, underSized: r.status.underSized,
    })),
    resolver: lookup,
  });
  console.log(JSON.stringify({
    spf: spfResult && spfResult.status.result,
    dkim: dkim.results.map((s) => ({ algo: s.algo, d: s.signingDomain, result: s.status.result, comment: s.status.comment })),
    dmarc: dmarc && dmarc.status.result,
    policy: dmarc && dmarc.policy,
  }));
})().catch((err) => { console.error(err); process.exit(2); });
"""


def _need_mailauth() -> None:
    if shutil.which("node") is None or not (NODE_PEERS / "node_modules" / "mailauth").is_dir():
        message = f"Node.js mailauth is not installed in {NODE_PEERS}; .ci/peers installs it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Keys and a zone: the config's keys (rsa, ed) and others (other_rsa, other_ed) published where a case says."""
    folder = tmp_path_factory.mktemp("keys")
    keys = {}
    for name, make in (
        ("rsa", generate_rsa),
        ("other_rsa", generate_rsa),
        ("ed", generate_ed25519),
        ("other_ed", generate_ed25519),
    ):
        private, public = make()
        path = folder / f"{name}.key"
        path.write_bytes(private)
        path.chmod(0o600)
        keys[name] = (path, public)

    def dkim(name: str, key: str, kind: str = "rsa", public: str | None = None) -> str:
        value = txt_value(kind, keys[key][1] if public is None else public)
        return f"txt-record={name},{','.join(txt_strings(value))}"

    records = [
        # aligned and published: the control
        dkim("sel._domainkey.good.test", "rsa"),
        "txt-record=_dmarc.good.test,v=DMARC1; p=reject",
        f"txt-record=good.test,v=spf1 ip4:{SENDING} -all",
        # a brand whose mail is signed by another domain
        "txt-record=_dmarc.brand.test,v=DMARC1; p=reject",
        dkim("sel._domainkey.example.test", "rsa"),
        # SPF that lists another address
        f"txt-record=spffail.test,v=spf1 ip4:{ELSEWHERE} -all",
        "txt-record=_dmarc.spffail.test,v=DMARC1; p=reject",
        f"txt-record=softfail.test,v=spf1 ip4:{ELSEWHERE} ~all",
        "txt-record=_dmarc.softfail.test,v=DMARC1; p=quarantine",
        f"txt-record=spfpass.test,v=spf1 ip4:{SENDING} -all",
        "txt-record=_dmarc.spfpass.test,v=DMARC1; p=reject",
        # DMARC only at the organizational domain
        "txt-record=_dmarc.org.test,v=DMARC1; p=reject",
        dkim("sel._domainkey.org.test", "rsa"),
        "txt-record=_dmarc.sporg.test,v=DMARC1; p=reject; sp=quarantine",
        # strict DKIM alignment
        "txt-record=_dmarc.strict.test,v=DMARC1; p=reject; adkim=s",
        dkim("sel._domainkey.strict.test", "rsa"),
        # keys that are not the config's
        dkim("sel._domainkey.otherkey.test", "other_rsa"),
        "txt-record=_dmarc.otherkey.test,v=DMARC1; p=reject",
        dkim("sel._domainkey.revoked.test", "rsa", public=""),
        "txt-record=_dmarc.revoked.test,v=DMARC1; p=quarantine",
        dkim("sel._domainkey.ed.test", "rsa"),
        dkim("ed._domainkey.ed.test", "other_ed", "ed25519"),
        "txt-record=_dmarc.ed.test,v=DMARC1; p=reject",
    ]
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records) as server:
        yield server, keys


def receiver(dns: Dnsmasq, message: bytes, ip: str, sender: str, folder: Path) -> dict:
    (folder / "message.eml").write_bytes(message)
    (folder / "receiver.js").write_text(RECEIVER)
    env = {**os.environ, "NODE_PATH": str(NODE_PEERS / "node_modules")}
    out = subprocess.run(
        ["node", str(folder / "receiver.js"), str(dns.port), str(folder / "message.eml"), ip, sender],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# (case, From address, DKIM domain or None, Ed25519 too, sending address)
CASES = [
    ("aligned-dkim-and-spf", "alertmail@good.test", "good.test", False, SENDING),
    ("p-reject-signed-by-another-domain", "alertmail@brand.test", "example.test", False, SENDING),
    ("spf-fail-no-dkim-p-reject", "alertmail@spffail.test", None, False, SENDING),
    ("spf-softfail-no-dkim-p-quarantine", "alertmail@softfail.test", None, False, SENDING),
    ("spf-pass-aligned-no-dkim", "alertmail@spfpass.test", None, False, SENDING),
    ("dmarc-at-the-organizational-domain", "alertmail@mail.org.test", None, False, SENDING),
    ("organizational-sp-quarantine", "alertmail@mail.sporg.test", None, False, SENDING),
    ("relaxed-dkim-alignment-with-the-organizational-domain", "alertmail@mail.org.test", "org.test", False, SENDING),
    ("strict-dkim-alignment-refuses-the-parent-domain", "alertmail@mail.strict.test", "strict.test", False, SENDING),
    ("another-rsa-key-published", "alertmail@otherkey.test", "otherkey.test", False, SENDING),
    ("revoked-rsa-key", "alertmail@revoked.test", "revoked.test", False, SENDING),
    ("another-ed25519-key-published", "alertmail@ed.test", "ed.test", True, SENDING),
]


@pytest.mark.parametrize(("case", "sender", "d", "ed25519", "ip"), CASES, ids=[c[0] for c in CASES])
def test_the_check_gives_the_receivers_verdict(world, tmp_path, case, sender, d, ed25519, ip):
    _need_mailauth()
    dns, keys = world
    domain = sender.rpartition("@")[2]
    options = None
    message = sample_message(sender, domain)
    if d is not None:
        options = DkimSettings(domain=d, selector="sel", key_file=Path(keys["rsa"][0]))
        if ed25519:
            options = replace(options, ed25519_selector="ed", ed25519_key_file=Path(keys["ed"][0]))
        signer = Signer.from_options(options)
        assert signer is not None
        message = signer.signatures(message) + message
    theirs = receiver(dns, message, ip, sender, tmp_path)
    ours = check(sender, ["smtp"], {"smtp": {}}, options, dns.resolver(), sending_addresses=[ip], signed_sample=message)
    print(case, json.dumps(theirs), *ours.lines(), sep="\n")

    by_check = {f.check: f.state for f in ours.findings}
    assert by_check["SPF"] == theirs["spf"]
    assert [(s["algorithm"].split("-")[0], s["d"], s["result"]) for s in ours.signatures] == [
        (s["algo"].split("-")[0], s["d"], s["result"])
        for s in theirs["dkim"]
        if "algo" in s  # not "message not signed"
    ]
    assert ours.dmarc["result"] == theirs["dmarc"]
    if theirs["dmarc"] != "none":
        assert ours.dmarc["policy"] == theirs["policy"]
    assert ours.likely_refused == (theirs["dmarc"] == "fail" and theirs["policy"] in ("reject", "quarantine"))


def test_the_receivers_verdicts_are_the_ones_the_issue_names(world, tmp_path):
    """The table itself, from the check's report alone (what the text and --json show)."""
    dns, keys = world

    def run(sender, d=None, ed=False):
        options = None
        if d is not None:
            options = DkimSettings(domain=d, selector="sel", key_file=Path(keys["rsa"][0]))
            if ed:
                options = replace(options, ed25519_selector="ed", ed25519_key_file=Path(keys["ed"][0]))
        return check(sender, ["smtp"], {"smtp": {}}, options, dns.resolver(), sending_addresses=[SENDING])

    brand = run("alertmail@brand.test", "example.test")
    assert brand.dmarc == {**brand.dmarc, "result": "fail", "policy": "reject"} and brand.likely_refused
    assert any('set [mail.dkim] domain = "brand.test"' in f for f in brand.fixes)
    spf_fail = run("alertmail@spffail.test")
    assert [f.state for f in spf_fail.findings if f.check == "SPF"] == ["fail"] and spf_fail.likely_refused
    assert any(f"add ip4:{SENDING} to the SPF record of spffail.test" in f for f in spf_fail.fixes)
    soft = run("alertmail@softfail.test")
    assert soft.dmarc["policy"] == "quarantine" and soft.likely_refused and "put it in spam" in soft.verdict
    org = run("alertmail@mail.org.test")
    assert org.dmarc["record_at"] == "org.test" and org.dmarc["policy"] == "reject"
    assert not any("_dmarc.mail.org.test" in f for f in org.fixes)  # no weaker policy suggested for the subdomain
    other = run("alertmail@otherkey.test", "otherkey.test")
    assert [s["result"] for s in other.signatures] == ["fail"]
    assert any("publishes another key than [mail.dkim].key_file" in f for f in other.fixes)
    assert not any("turn on [mail.dkim]" in f for f in other.fixes)
    revoked = run("alertmail@revoked.test", "revoked.test")
    assert any("revoked" in f for f in revoked.fixes)
    ed = run("alertmail@ed.test", "ed.test", ed=True)
    assert [s["result"] for s in ed.signatures] == ["pass", "fail"]
    assert any("[mail.dkim].ed25519_key_file" in f for f in ed.fixes) and not ed.likely_refused


def test_check_deliverability_on_the_command_line_text_and_json(world, tmp_path):
    dns, keys = world
    config = tmp_path / "config.toml"
    config.write_text(
        '[agent]\nstate_dir = "var"\n[mail]\nfrom = "alertmail@brand.test"\nroute = ["smtp"]\n'
        '[transports.smtp]\nservers = ["[127.0.0.1]:25"]\n'
        f'[mail.dkim]\ndomain = "example.test"\nselector = "sel"\nkey_file = "{keys["rsa"][0]}"\n'
    )
    base = [sys.executable, "-m", "alertmail", "check", "-c", str(config), "--deliverability", "--resolver", dns.address]
    text = subprocess.run([*base, "--sending-address", SENDING], capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "LIKELY REFUSED: DMARC fails (p=reject at _dmarc.brand.test)" in text.stdout
    assert "does not align with the From domain brand.test" in text.stdout
    as_json = subprocess.run([*base, "--sending-address", SENDING, "--json"], capture_output=True, text=True, timeout=60)
    report = json.loads(as_json.stdout)
    assert report["likely_refused"] and report["dmarc"]["result"] == "fail" and report["dmarc"]["policy"] == "reject"
    assert report["signatures"][0]["result"] == "pass" and not report["signatures"][0]["aligned"]
    wrong = subprocess.run([*base, "--sending-address", "not-an-ip"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 64 and "not an IP address" in wrong.stderr
