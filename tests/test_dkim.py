"""DKIM: [mail.dkim] checks, keygen, signing once at queue time, and independent verifiers.

The verifiers are not dkimpy (which signs): Perl's Mail::DKIM (RSA; Debian 12's release
predates its Ed25519 support) and the Node.js ``mailauth`` library (RSA and Ed25519),
each reading the public keys as TXT records from a real DNS server (dnsmasq) on loopback.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import os
import shutil
import smtplib
import stat
import subprocess
import sys
import textwrap
from dataclasses import replace
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from alertmail.cli.app import cli
from alertmail.config.load import load_config
from alertmail.delivery.delivery import Delivery, QueueSettings
from alertmail.delivery.dkim import Signer, generate_ed25519, generate_rsa, txt_strings, txt_value
from alertmail.delivery.outbox import signing
from alertmail.model import DeliveryResult, Envelope, RecipientStatus, Status
from alertmail.queue.spool import Queue
from tests.peers import Dnsmasq, Received

NODE_PEERS = Path(os.environ.get("ALERTMAIL_NODE_PEERS", "/opt/alertmail-peers"))
DOMAIN = "example.test"


# -- keys and config ---------------------------------------------------------------------


def write_key(folder: Path, name: str, data: bytes, mode: int = 0o600) -> Path:
    path = folder / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, object]:
    """One RSA and one Ed25519 key for the module: files (mode 0600) and their p= values."""
    folder = tmp_path_factory.mktemp("keys")
    rsa_private, rsa_public = generate_rsa(2048)
    ed_private, ed_public = generate_ed25519()
    return {
        "folder": folder,
        "rsa": write_key(folder, "sel.key", rsa_private),
        "ed25519": write_key(folder, "ed.key", ed_private),
        "rsa_public": rsa_public,
        "ed25519_public": ed_public,
    }


def write_config(tmp_path: Path, dkim: str) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent("""
        [agent]
        state_dir = "var"

        [mail]
        from = "alerts@example.test"
        to = ["ops@example.test"]
        """)
        + textwrap.dedent(dkim)
    )
    return config


def check(config: Path):
    return CliRunner().invoke(cli, ["check", "--config", str(config)])


def test_config_with_dkim_passes_check_and_builds_the_signer(tmp_path, keys):
    config = write_config(
        tmp_path,
        f"""
        [mail.dkim]
        domain = "example.test"
        selector = "sel"
        key_file = "{keys["rsa"]}"
        ed25519_selector = "ed"
        ed25519_key_file = "{keys["ed25519"]}"
        """,
    )
    result = check(config)
    assert result.exit_code == 0, result.output
    cfg = load_config(config)
    assert "dkim" not in cfg.mail.keys_to_fields()  # the nested table is its own section
    args = signing(cfg)
    assert args["sign_origins"] == {"agent", "dsn"}
    assert isinstance(args["sign"], Signer) and args["sign"].ed25519_selector == "ed"


def test_the_outbox_opens_a_queue_that_signs_the_agents_mail_and_a_reload_changes_the_keys(tmp_path, keys):
    from alertmail.delivery.outbox import Outbox
    from alertmail.loader import load_plugins

    config = write_config(
        tmp_path,
        f"""
        [mail.dkim]
        domain = "example.test"
        selector = "sel"
        key_file = "{keys["rsa"]}"
        """,
    )
    cfg = load_config(config)

    with open(config, "a") as fh:  # the same config plus an Ed25519 key, for a reload
        fh.write(f'ed25519_selector = "ed"\ned25519_key_file = "{keys["ed25519"]}"\n')
    reloaded = load_config(config)

    async def main() -> tuple[bytes, bytes]:
        outbox = Outbox(cfg, load_plugins([]))
        await outbox.open()
        try:
            await outbox.delivery.stop()  # keep it queued: only the stored bytes matter here
            envelope = Envelope("alerts@example.test", ("ops@example.test",))
            first = await outbox.queue.read(await outbox.queue.put(alert_mail(), envelope))
            await outbox.reconfigure(reloaded, outbox.build_transports(reloaded))
            second = await outbox.queue.read(await outbox.queue.put(alert_mail(), envelope))
            return first, second
        finally:
            await outbox.close()

    first, second = asyncio.run(main())
    assert first.startswith(b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.test;")
    assert first.count(b"DKIM-Signature:") == 1 and second.count(b"DKIM-Signature:") == 2  # a reload takes the new key


def test_without_dkim_nothing_is_signed_and_dkimpy_is_never_loaded(tmp_path):
    config = write_config(tmp_path, "")
    code = textwrap.dedent(f"""
        import sys
        from alertmail.config.load import load_config
        from alertmail.delivery.outbox import signing
        import alertmail.agent
        cfg = load_config({str(config)!r})
        assert signing(cfg) == {{}}
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("dkim", "nacl", "cryptography")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'domain = "example.test"\nselector = "sel"\nkey_file = "missing.key"',
            ["mail.dkim.key_file:", "does not exist", "alertmail dkim keygen"],
        ),
        ('domain = "example.test"\nkey_file = "{rsa}"', ["mail.dkim.selector: missing"]),
        (
            'domain = "example.test"\nselector = "sel"\nkey_file = "{ed25519}"',
            ["mail.dkim.key_file:", "not a PEM RSA private key"],
        ),
        (
            'domain = "example.test"\nselector = "sel"\nkey_file = "{rsa}"\ned25519_key_file = "{rsa}"\ned25519_selector = "ed"',
            ["mail.dkim.ed25519_key_file:", "not an Ed25519 one"],
        ),
        (
            'domain = "example.test"\nselector = "sel"\nkey_file = "{rsa}"\ned25519_key_file = "{ed25519}"',
            ["set both or neither"],
        ),
        (
            'domain = "example.test"\nselector = "sel"\nkey_file = "{rsa}"\nkeyfile = "x"',
            ["mail.dkim.keyfile: unknown key", "key_file"],
        ),
    ],
)
def test_check_names_the_key_path_and_the_fix(tmp_path, keys, table, expected):
    config = write_config(tmp_path, "[mail.dkim]\n" + table.format(rsa=keys["rsa"], ed25519=keys["ed25519"]) + "\n")
    result = check(config)
    assert result.exit_code == 78, result.output
    for text in expected:
        assert text in result.output


def test_a_key_readable_by_others_is_refused_at_check_time(tmp_path, keys):
    open_key = write_key(tmp_path, "open.key", keys["rsa"].read_bytes(), mode=0o644)  # type: ignore[union-attr]
    config = write_config(
        tmp_path,
        f"""
        [mail.dkim]
        domain = "example.test"
        selector = "sel"
        key_file = "{open_key}"
        """,
    )
    result = check(config)
    assert result.exit_code == 78, result.output
    assert f"mail.dkim.key_file: {open_key} is readable by group or others (mode 0644)" in result.output
    assert f"chmod 600 {open_key}" in result.output
    open_key.chmod(0o600)
    assert check(config).exit_code == 0


def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["dkim", "keygen", "--domain", "Example.test", "--selector", "s1", "-o", str(tmp_path / "k")])
    assert result.exit_code == 0, result.output
    key = tmp_path / "k" / "s1.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    record = result.stdout.strip()
    assert record.startswith('s1._domainkey.example.test IN TXT "v=DKIM1; k=rsa; p=MII')
    strings = record.split(" IN TXT ", 1)[1].strip('"').split('" "')
    assert len(strings) == 2 and all(len(s.encode()) <= 255 for s in strings)
    # The key it wrote passes the check; a second run never overwrites it.
    again = runner.invoke(cli, ["dkim", "keygen", "--domain", "example.test", "--selector", "s1", "-o", str(tmp_path / "k")])
    assert again.exit_code == 73 and "exists" in again.output
    ed = runner.invoke(
        cli, ["dkim", "keygen", "--domain", "example.test", "--selector", "e1", "--ed25519", "-o", str(tmp_path / "k")]
    )
    assert ed.exit_code == 0, ed.output
    assert ed.stdout.startswith('e1._domainkey.example.test IN TXT "v=DKIM1; k=ed25519; p=')
    config = write_config(
        tmp_path,
        f"""
        [mail.dkim]
        domain = "example.test"
        selector = "s1"
        key_file = "{key}"
        ed25519_selector = "e1"
        ed25519_key_file = "{tmp_path / "k" / "e1.key"}"
        """,
    )
    assert check(config).exit_code == 0


def test_public_key_is_the_p_value_to_publish(keys):
    from alertmail.delivery.dkim import DkimSettings, public_key

    settings = DkimSettings(domain=DOMAIN, selector="sel", key_file=keys["rsa"])
    assert public_key(settings) == keys["rsa_public"]
    assert public_key(DkimSettings()) is None


def test_txt_strings_are_at_most_255_bytes():
    value = txt_value("rsa", "A" * 600)
    parts = txt_strings(value)
    assert "".join(parts) == value and [len(p) for p in parts] == [255, 255, len(value) - 510]


# -- signing ---------------------------------------------------------------------------------


def alert_mail(subject: str = "[firing] disk / is 97% full on web-1") -> bytes:
    """An alert-shaped mail: text and HTML, threading headers, non-ASCII in the subject."""
    msg = EmailMessage()
    msg["From"] = "Alertmail <alerts@example.test>"
    msg["To"] = "ops@example.test"
    msg["Cc"] = "oncall@example.test"
    msg["Subject"] = subject + " — Größe"
    msg["Date"] = format_datetime(__import__("datetime").datetime(2026, 11, 30, 9, 0, tzinfo=__import__("datetime").UTC))
    msg["Message-ID"] = make_msgid(domain="example.test")
    msg["In-Reply-To"] = "<incident-1@example.test>"
    msg["References"] = "<incident-1@example.test>"
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("The disk / is 97% full (threshold 90%).\n\n" + "detail line\n" * 40)
    msg.add_alternative("<p>The disk <b>/</b> is 97% full.</p>\n", subtype="html")
    return msg.as_bytes(policy=email.policy.SMTP)


def signer(keys) -> Signer:
    return Signer(
        domain=DOMAIN,
        selector="sel",
        rsa_key=keys["rsa"].read_bytes(),
        ed25519_selector="ed",
        ed25519_key=keys["ed25519"].read_bytes().strip(),
    )


def test_signature_headers(keys):
    original = alert_mail()
    signed = signer(keys)(original)
    msg = email.message_from_bytes(signed, policy=email.policy.default)
    sigs = [" ".join(str(s).split()) for s in msg.get_all("DKIM-Signature")]
    assert len(sigs) == 2
    assert "a=rsa-sha256" in sigs[0] and "s=sel" in sigs[0] and "d=example.test" in sigs[0]
    assert "a=ed25519-sha256" in sigs[1] and "s=ed" in sigs[1]
    for sig in sigs:
        assert "c=relaxed/relaxed" in sig
        oversigned = " : ".join(f"{h} : {h}" for h in ("from", "subject", "reply-to", "sender", "to", "cc", "date", "message-id"))
        assert f"h={oversigned} : in-reply-to : references :" in sig
        assert "auto-submitted" in sig
    assert signed.endswith(original)  # the signatures go on top; the message is untouched


def test_mail_already_signed_with_this_domain_and_selector_is_not_signed_again(keys):
    """The relay signs its allow clients' mail: an agent's mail that arrives signed by the same key keeps its signatures."""
    sign = signer(keys)
    once = sign(alert_mail())
    assert once.count(b"DKIM-Signature:") == 2
    assert sign(once) == once
    other = Signer(domain="other.test", selector="sel", rsa_key=keys["rsa"].read_bytes())
    assert other(once).count(b"DKIM-Signature:") == 3  # another domain's signer still adds its own


def test_keygen_under_umask_000_makes_a_folder_only_its_owner_may_enter(tmp_path):
    folder = tmp_path / "new" / "dkim"
    made = subprocess.run(
        [sys.executable, "-m", "alertmail", "dkim", "keygen", "--domain", "example.test", "--selector", "s1", "-o", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        umask=0,
    )
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "s1.key").stat().st_mode) == 0o600


class FlakyTransport:
    """Answers 4xx to the first attempt and 250 after; keeps the bytes of every attempt."""

    name = "flaky"
    options: ClassVar[dict] = {}

    def __init__(self) -> None:
        self.attempts: list[bytes] = []

    async def send(self, message: bytes, envelope: Envelope) -> DeliveryResult:
        self.attempts.append(bytes(message))
        status = Status.TEMPORARY if len(self.attempts) == 1 else Status.DELIVERED
        return DeliveryResult.all(envelope.recipients, RecipientStatus(status, 451 if len(self.attempts) == 1 else 250))


def test_signed_once_when_queued_so_a_retry_sends_the_same_bytes(tmp_path, keys):
    calls: list[bytes] = []
    sign = signer(keys)

    def counting(data: bytes) -> bytes:
        calls.append(data)
        return sign(data)

    async def main() -> list[bytes]:
        queue = Queue(tmp_path / "queue", fsync=False, sign=counting, sign_origins={"agent", "dsn"})
        await queue.start()
        transport = FlakyTransport()
        policy = QueueSettings(retry=[0.2], delay_notice=0.0, expire=60.0, send_timeout=5.0, scan_interval=0.05)
        delivery = Delivery(
            queue, {"flaky": transport}, replace(policy, concurrency=1), state_dir=tmp_path, hostname="h", default_route=["flaky"]
        )
        await delivery.start()
        try:
            await queue.put(alert_mail(), Envelope("alerts@example.test", ("ops@example.test",)), origin="agent")
            await queue.put(
                b"From: x@example.net\r\nSubject: relayed\r\n\r\nhi\r\n", Envelope("x@example.net", ("a@b.test",)), origin="relay"
            )
            for _ in range(200):
                if len(transport.attempts) >= 3:
                    break
                await asyncio.sleep(0.05)
        finally:
            await delivery.stop()
            await queue.close()
        return transport.attempts

    attempts = asyncio.run(main())
    assert len(calls) == 1  # the relay's message was not the agent's to sign
    agent_attempts = [a for a in attempts if b"Subject: relayed" not in a]
    assert len(agent_attempts) == 2, attempts
    first, retry = agent_attempts
    assert first == retry and first.startswith(b"DKIM-Signature: v=1; a=rsa-sha256")
    relayed = next(a for a in attempts if b"Subject: relayed" in a)
    assert b"DKIM-Signature" not in relayed


# -- independent verifiers -----------------------------------------------------------------------

PERL_VERIFIER = r"""
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;
my ($port, $file) = @ARGV;
Mail::DKIM::DNS::resolver(Net::DNS::Resolver->new(
    nameservers => ['127.0.0.1'], port => $port, recurse => 0, udp_timeout => 3, tcp_timeout => 3, retry => 1));
my $dkim = Mail::DKIM::Verifier->new();
open(my $fh, '<', $file) or die "$file: $!";
binmode $fh;
while (my $line = <$fh>) {
    $line =~ s/\015?\012$//;
    $dkim->PRINT("$line\015\012");
}
$dkim->CLOSE;
foreach my $sig ($dkim->signatures) {
    my $detail = $sig->result_detail ne $sig->result ? " (" . $sig->result_detail . ")" : "";
    printf "%s s=%s %s%s\n", $sig->algorithm, $sig->selector, $sig->result, $detail;
}
printf "overall %s\n", $dkim->result;
"""

NODE_VERIFIER = r"""
const fs = require('fs');
const dns = require('dns');
const { dkimVerify } = require('mailauth/lib/dkim/verify');
const [port, file] = process.argv.slice(2);
const resolver = new dns.promises.Resolver({ timeout: 3000, tries: 1 });
resolver.setServers([`127.0.0.1:${port}`]);
dkimVerify(fs.readFileSync(file), { resolver: (name, type) => resolver.resolve(name, type) }).then((out) => {
  for (const r of out.results) {
    console.log(`${r.algo} s=${r.selector} ${r.status.result}${r.status.comment ? ' (' + r.status.comment + ')' : ''}`);
  }
}).catch((err) => { console.error(err); process.exit(2); });
"""


def _need_verifiers() -> None:
    problems = []
    if shutil.which("perl") is None or subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e1"], capture_output=True).returncode:
        problems.append("Perl's Mail::DKIM (Debian: libmail-dkim-perl)")
    if shutil.which("node") is None or not (NODE_PEERS / "node_modules" / "mailauth").is_dir():
        problems.append(f"Node.js mailauth in {NODE_PEERS} (npm install --prefix {NODE_PEERS} mailauth)")
    if problems:
        message = f"not installed: {', '.join(problems)}; .ci/peers installs them"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def dkim_dns(tmp_path_factory, keys):
    """dnsmasq on 127.0.0.1 answering sel._domainkey and ed._domainkey of example.test with the keys' records."""
    records = []
    for selector, key_type, public in (("sel", "rsa", keys["rsa_public"]), ("ed", "ed25519", keys["ed25519_public"])):
        # One argv item each: no shell, so no quotes (dnsmasq would keep them); a comma starts the next string.
        strings = ",".join(txt_strings(txt_value(key_type, str(public))))
        records.append(f"txt-record={selector}._domainkey.{DOMAIN},{strings}")
    with Dnsmasq(tmp_path_factory.mktemp("dns"), records=records) as server:
        answer = server.resolver().resolve(f"sel._domainkey.{DOMAIN}", "TXT")
        assert b"".join(answer[0].strings) == txt_value("rsa", str(keys["rsa_public"])).encode()
        yield server


def verify(dns: Dnsmasq, data: bytes, folder: Path) -> dict[str, str]:
    """The verdicts of both verifiers on ``data``: {"perl rsa-sha256": "pass", "node ed25519-sha256": "pass", ...}."""
    message = folder / "message.eml"
    message.write_bytes(data)
    (folder / "verify.pl").write_text(PERL_VERIFIER)
    (folder / "verify.js").write_text(NODE_VERIFIER)
    verdicts: dict[str, str] = {}
    runs = {
        "perl": ["perl", str(folder / "verify.pl"), str(dns.port), str(message)],
        "node": ["node", str(folder / "verify.js"), str(dns.port), str(message)],
    }
    for name, argv in runs.items():
        env = {**os.environ, "NODE_PATH": str(NODE_PEERS / "node_modules")}
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        print(f"{name}:\n{out.stdout}", end="")
        for line in out.stdout.splitlines():
            algorithm, _, rest = line.partition(" ")
            if algorithm != "overall":
                verdicts[f"{name} {algorithm}"] = rest.split(" ", 2)[1]
    return verdicts


@pytest.mark.peers
def test_rsa_and_ed25519_signatures_verify_independently(tmp_path, keys, dkim_dns):
    _need_verifiers()
    signed = signer(keys)(alert_mail())
    verdicts = verify(dkim_dns, signed, tmp_path)
    assert verdicts["perl rsa-sha256"] == "pass"
    assert verdicts["node rsa-sha256"] == "pass"
    assert verdicts["node ed25519-sha256"] == "pass"


@pytest.mark.peers
@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda b: b.replace(b"97% full (threshold", b"17% full (threshold"), id="body"),
        pytest.param(lambda b: b.replace(b"Subject: [firing]", b"Subject: [resolved]"), id="subject"),
        pytest.param(lambda b: b"From: boss@example.test\r\n" + b, id="second-from"),
        pytest.param(lambda b: b"Subject: [resolved] all clear\r\n" + b, id="second-subject"),
        pytest.param(lambda b: b"Reply-To: attacker@example.net\r\n" + b, id="added-reply-to"),
        pytest.param(lambda b: b"Sender: attacker@example.net\r\n" + b, id="added-sender"),
        pytest.param(lambda b: b"To: more@example.net\r\n" + b, id="second-to"),
        pytest.param(lambda b: b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n" + b, id="second-date"),
    ],
)
def test_a_message_altered_after_signing_fails(tmp_path, keys, dkim_dns, tamper):
    _need_verifiers()
    signed = signer(keys)(alert_mail())
    altered = tamper(signed)
    assert altered != signed
    verdicts = verify(dkim_dns, altered, tmp_path)
    assert verdicts["perl rsa-sha256"] == "fail"
    assert verdicts["node rsa-sha256"] in ("fail", "neutral")
    assert verdicts["node ed25519-sha256"] in ("fail", "neutral")
    assert "pass" not in verdicts.values()


@pytest.mark.peers
def test_oversigning_is_what_stops_a_second_from(tmp_path, keys, dkim_dns, monkeypatch):
    """The control for the "second-from" case: with From signed once, a From added on top still verifies."""
    _need_verifiers()
    import alertmail.delivery.dkim as dkim_module

    monkeypatch.setattr(dkim_module, "SIGNED_HEADERS", dkim_module.SIGNED_HEADERS[1:])
    forged = b"From: boss@example.test\r\n" + signer(keys)(alert_mail())
    assert verify(dkim_dns, forged, tmp_path)["perl rsa-sha256"] == "pass"


@pytest.mark.peers
def test_what_the_queue_holds_verifies(tmp_path, keys, dkim_dns):
    """The bytes stored in the spool (what every attempt sends) carry signatures that verify."""
    _need_verifiers()

    async def main() -> bytes:
        queue = Queue(tmp_path / "queue", fsync=False, sign=signer(keys))
        await queue.start()
        try:
            msg_id = await queue.put(alert_mail(), Envelope("alerts@example.test", ("ops@example.test",)), origin="agent")
            return await queue.read(msg_id)
        finally:
            await queue.close()

    verdicts = verify(dkim_dns, asyncio.run(main()), tmp_path)
    verdicts.pop("perl ed25519-sha256")  # Debian 12's Mail::DKIM predates Ed25519: "invalid (unsupported algorithm)"
    assert set(verdicts.values()) == {"pass"}, json.dumps(verdicts)


@pytest.mark.peers
def test_relay_signs_mail_from_allow_clients_only(tmp_path, keys, dkim_dns):
    """``[relay] dkim = true``: mail from an ``allow`` client leaves signed; a local-domain message from elsewhere does not."""
    _need_verifiers()
    from tests.peers import SmtpSink, free_port
    from tests.relay_peers import ALERTMAIL, RelayProcess, relay_config

    with SmtpSink(tmp_path / "sink") as sink:
        port = free_port()
        (tmp_path / "relay").mkdir()
        config = relay_config(
            tmp_path / "relay",
            sink,
            port,
            {
                "dkim": True,
                "allow": ["127.0.0.1/32"],
                "local_domains": ["local.test"],
                "local_recipients": ["bob@local.test"],
                "also_listen": [f"127.0.0.2:{port}"],
            },
        )
        with open(config, "a") as fh:
            fh.write(f'\n[mail.dkim]\ndomain = "{DOMAIN}"\nselector = "sel"\nkey_file = "{keys["rsa"]}"\n')
        relay = RelayProcess(config, port, list(ALERTMAIL)).start()
        try:
            for client, subject in (("127.0.0.1", "from an allow client"), ("127.0.0.2", "from elsewhere")):
                msg = EmailMessage()
                msg["From"] = "app@example.test"
                msg["To"] = "bob@local.test"
                msg["Subject"] = subject
                msg["Message-ID"] = make_msgid(domain="example.test")
                msg.set_content("relayed body\n")
                with smtplib.SMTP(client, port, source_address=(client, 0), timeout=10) as smtp:
                    smtp.send_message(msg)
            got = sink.wait_for(2)
            assert len(got) == 2, ([m.message["Subject"] for m in got], relay.output())
        finally:
            assert relay.stop() == 0, relay.output()
        dumps = {Received.parse(data).message["Subject"]: data for data in sink.dumps()}
    signed, unsigned = dumps["from an allow client"], dumps["from elsewhere"]
    assert b"DKIM-Signature" not in unsigned
    verdicts = verify(dkim_dns, signed, tmp_path)
    assert verdicts["perl rsa-sha256"] == "pass" and verdicts["node rsa-sha256"] == "pass"
