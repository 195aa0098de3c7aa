"""``alertmail check --deliverability``: what a receiver will make of the mail this config sends.

It computes what a receiving server computes, on the same DNS records:

- **SPF**: pyspf evaluates the sender domain's record against the address the receiver
  sees (``--sending-address``, or this host's public addresses when it sends directly),
  so ``-all`` and ``~all`` give ``fail`` and ``softfail`` as they do for the receiver.
- **DKIM**: a sample message is signed with the configured keys (the agent's own
  signer) and verified with dkimpy against the keys published in DNS: another key, a
  revoked one (empty ``p=``) or a missing record fail as they will for the receiver.
- **DMARC** (RFC 7489): the record at ``_dmarc.<From domain>``, or at the organizational
  domain (found with the public-suffix list that the ``publicsuffixlist`` package ships)
  with its ``sp=`` for a subdomain; then alignment of the DKIM ``d=`` and of the SPF
  domain with the From domain, relaxed or strict (``adkim=``, ``aspf=``), and the policy
  that applies when neither aligns.

Looking up is the only thing it does: nothing is sent.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alertmail.config.core import MailSettings
    from alertmail.delivery.dkim import DkimSettings

# What sends the mail, by the first transport of the route.
DIRECT, SMART_HOST, LOCAL_MTA, NOT_MAIL = "this host, directly", "a smart host", "the local MTA", "no mail"
MAIL_LEAVES = ("mx", "smtp")  # transports that hand the mail to another host


@dataclass
class Finding:
    """One check: SPF, DKIM or DMARC, its receiver's result (``pass``, ``fail``, ``softfail``,
    ``neutral``, ``none``, ``permerror``, ``temperror``; ``off`` and ``unknown`` when it cannot be
    computed here) and why."""

    check: str
    state: str
    detail: str


@dataclass
class Report:
    domain: str
    sender: str  # who hands the mail to the receiver
    route: list[str]
    findings: list[Finding] = field(default_factory=list)
    verdict: str = ""
    likely_refused: bool = False
    fixes: list[str] = field(default_factory=list)
    organizational_domain: str = ""
    sending_addresses: list[str] = field(default_factory=list)
    dmarc: dict[str, Any] = field(default_factory=dict)  # result, policy, record_at, dkim_aligned, spf_aligned
    signatures: list[dict[str, Any]] = field(default_factory=list)  # per DKIM signature: algorithm, d, s, result, detail

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        addresses = f"; seen from {', '.join(self.sending_addresses)}" if self.sending_addresses else ""
        out = [
            f"sender domain {self.domain}; mail is handed to receivers by {self.sender} "
            f"(route {' -> '.join(self.route)}){addresses}"
        ]
        out += [f"  {f.check:<5}  {f.state:<9}  {f.detail}" for f in self.findings]
        out.append(("LIKELY REFUSED: " if self.likely_refused else "") + self.verdict)
        out += [f"  - {fix}" for fix in self.fixes]
        return out


def who_sends(route: Sequence[str], transports: Mapping[str, Any]) -> str:
    """Who the receiving server sees: this host (mx direct), a smart host, or the local MTA (pickup).

    ``transports``: each configured transport's settings object (a dict for one declared with a dict).
    """
    from alertmail.config.schema import value_of

    first = route[0] if route else ""
    if first == "mx":
        return SMART_HOST if value_of(transports.get("mx"), "mode") == "smarthost" else DIRECT
    if first == "smtp":
        return SMART_HOST
    if first == "pickup":
        return LOCAL_MTA
    return NOT_MAIL if first == "alertmanager" else SMART_HOST


def sender_warning(where: str, mail: MailSettings) -> list[str]:
    """A warning for ``[mail] from`` at a domain that is no domain (``alertmail@localhost``, the
    shipped default) when mail leaves the host: no receiver can check it, and spam filters count it."""
    sender = mail.sender
    domain = sender.rpartition("@")[2].lower().rstrip(".")
    routes = [*mail.route, *mail.also_route]
    leaving = [t for t in routes if t in MAIL_LEAVES]
    if not leaving or ("." in domain and domain.split(".")[-1] not in ("localhost", "localdomain")):
        return []
    return [
        f"{where}: mail.from: {sender!r} is not at a public domain, but the route sends mail to other hosts"
        f" ({', '.join(leaving)}): receivers cannot check SPF, DKIM or DMARC for it and score it as spam;"
        ' set from = "alertmail@<your domain>" (alertmail check --deliverability tells what receivers make of it)'
    ]


# -- DNS ----------------------------------------------------------------------------------------


def txt_records(resolver: Any, name: str) -> list[str] | None:
    """The TXT strings at ``name`` (each record's strings joined); None when the name has none."""
    import dns.exception
    import dns.resolver

    try:
        answer = resolver.resolve(name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return None
    except dns.exception.DNSException as exc:
        raise LookupError(f"{name}: {type(exc).__name__}") from exc
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def organizational_domain(domain: str) -> str:
    """The registrable domain (RFC 7489 §3.2) by the public-suffix list the publicsuffixlist package ships."""
    from publicsuffixlist import PublicSuffixList

    return PublicSuffixList().privatesuffix(domain.lower().rstrip(".")) or domain.lower()


def aligned(domain: str, from_domain: str, mode: str) -> bool:
    """DMARC identifier alignment: the same name (strict, ``s``) or the same organizational domain (relaxed)."""
    domain, from_domain = domain.lower().rstrip("."), from_domain.lower().rstrip(".")
    if mode == "s":
        return domain == from_domain
    return organizational_domain(domain) == organizational_domain(from_domain)


def dmarc_tags(record: str) -> dict[str, str]:
    """A DMARC record's tags (RFC 7489 §6.3), names lowercased."""
    tags = {}
    for part in record.split(";"):
        name, sep, value = part.partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    return tags


def find_dmarc(resolver: Any, domain: str) -> tuple[str | None, dict[str, str]]:
    """Where the DMARC record that applies to ``domain`` is (the domain or its organizational domain), and its tags."""
    names = [domain]
    org = organizational_domain(domain)
    if org != domain:
        names.append(org)  # RFC 7489 §6.6.3: fall back to the organizational domain
    for name in names:
        records = [r for r in txt_records(resolver, f"_dmarc.{name}") or [] if r.lower().replace(" ", "").startswith("v=dmarc1")]
        if len(records) == 1:
            return name, dmarc_tags(records[0])
    return None, {}


# -- SPF -----------------------------------------------------------------------------------------


@contextmanager
def _spf_dns(resolver: Any) -> Iterator[Any]:
    """pyspf with its lookups sent to ``resolver`` (it would otherwise ask the system's)."""
    import dns.exception
    import dns.resolver
    import spf

    def lookup(name: str, qtype: str, *args: Any, **kwargs: Any) -> list[Any]:
        try:
            answer = resolver.resolve(name, qtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except dns.exception.DNSException as exc:
            raise spf.TempError(f"DNS {exc}") from exc
        out: list[Any] = []
        for rdata in answer:
            if qtype in ("A", "AAAA"):
                out.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                out.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                out.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                out.append(((name, qtype), rdata.strings))
        return out

    saved = spf.DNSLookup
    spf.DNSLookup = lookup
    try:
        yield spf
    finally:
        spf.DNSLookup = saved


def spf_results(resolver: Any, envelope_sender: str, addresses: Sequence[str], helo: str) -> list[tuple[str, str, str]]:
    """(address, result, explanation) for each sending address, as pyspf computes them (RFC 7208)."""
    out = []
    with _spf_dns(resolver) as spf:
        for address in addresses:
            result, _code, explanation = spf.query(i=address, s=envelope_sender, h=helo, timeout=10).check()
            out.append((address, str(result), str(explanation)))
    return out


def public_addresses() -> list[str]:
    """This host's global unicast addresses: what a receiver sees when it sends directly (none behind NAT)."""
    import socket

    import psutil

    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family in (socket.AF_INET, socket.AF_INET6):
                try:
                    ip = ipaddress.ip_address(a.address.split("%")[0])
                except ValueError:
                    continue
                if ip.is_global:
                    found.append(str(ip))
    return sorted(set(found))


# -- DKIM ----------------------------------------------------------------------------------------


def sample_message(sender: str, domain: str) -> bytes:
    """A small message shaped as the agent's: what the configured keys sign for the check."""
    import email.policy
    import email.utils
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"] = email.utils.formataddr(("alertmail", sender))
    msg["To"] = f"postmaster@{domain}"
    msg["Subject"] = "alertmail check --deliverability"
    msg["Date"] = email.utils.formatdate(usegmt=True)
    msg["Message-ID"] = email.utils.make_msgid("deliverability", domain=domain)
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content("What the configured DKIM keys sign, verified against the keys published in DNS.\n")
    return msg.as_bytes(policy=email.policy.SMTP)


def verify_signatures(signed: bytes, resolver: Any) -> list[dict[str, Any]]:
    """Each DKIM signature of ``signed`` verified by dkimpy against the published key:
    {algorithm, d, s, result (pass, fail, neutral, temperror), detail, record}."""
    import dkim

    records: dict[str, list[str] | None] = {}

    def dnsfunc(name: bytes | str, timeout: int = 5) -> bytes | None:
        text = name.decode() if isinstance(name, bytes) else name
        found = txt_records(resolver, text.rstrip("."))
        records[text.rstrip(".")] = found
        return found[0].encode() if found else None

    verifier = dkim.DKIM(signed)
    out = []
    for idx, header in enumerate(h for name, h in verifier.headers if name.lower() == b"dkim-signature"):
        tags = dkim.util.parse_tag_value(b"".join(header.split()))
        d, s = tags.get(b"d", b"").decode(), tags.get(b"s", b"").decode()
        algorithm = tags.get(b"a", b"").decode()
        name = f"{s}._domainkey.{d}"
        try:
            ok = verifier.verify(idx=idx, dnsfunc=dnsfunc)
            error = None
        except LookupError as exc:
            out.append({"algorithm": algorithm, "d": d, "s": s, "result": "temperror", "detail": str(exc), "record": name})
            continue
        except dkim.DKIMException as exc:
            ok, error = False, exc
        record = (records.get(name) or [""])[0]
        if ok:
            result, detail = "pass", "verifies with the published key"
        elif not record:
            result, detail = "neutral", f"no key published at {name}"  # RFC 6376 §6.1.2 PERMFAIL: neutral to DMARC
        elif dmarc_tags(record).get("p") == "":
            result, detail = "neutral", f"the key at {name} is revoked (empty p=)"
        elif error is not None:
            result, detail = "neutral", f"the record at {name} cannot be used: {error}"
        else:
            result, detail = "fail", f"the signature does not verify with the key published at {name}"
        out.append({"algorithm": algorithm, "d": d, "s": s, "result": result, "detail": detail, "record": name})
    return out


# -- the assessment ------------------------------------------------------------------------------

_DMARC_ACTION = {"reject": "refused", "quarantine": "put in spam", "none": "delivered and reported"}


def check(
    sender_address: str,
    route: Sequence[str],
    transports: Mapping[str, Mapping[str, Any]],
    dkim: DkimSettings | None,
    resolver: Any,
    *,
    sending_addresses: Sequence[str] | None = None,
    helo: str = "localhost",
    signed_sample: bytes | None = None,
) -> Report:
    """What a receiver computes for mail from ``sender_address``; LookupError when DNS fails.

    ``dkim``: the ``[mail.dkim]`` settings when signing is on (the keys are read to sign a
    sample), else None. ``sending_addresses``: the addresses receivers see the mail come from;
    None: this host's public addresses when it sends directly, unknown through a smart host.
    ``signed_sample``: a message already signed (for tests); default: one signed with ``dkim``.
    """
    domain = sender_address.rpartition("@")[2].lower().rstrip(".")
    report = Report(domain=domain, sender=who_sends(route, transports), route=list(route))
    report.organizational_domain = organizational_domain(domain)
    if report.sender == NOT_MAIL:
        report.verdict = "the route starts with a transport that does not send mail; nothing to assess"
        return report

    # DMARC: the record that applies, and its tags.
    record_at, tags = find_dmarc(resolver, domain)
    adkim, aspf = tags.get("adkim", "r").lower()[:1] or "r", tags.get("aspf", "r").lower()[:1] or "r"

    # SPF, against the addresses the receiver sees (the envelope sender is [mail] from).
    if sending_addresses is None:
        sending_addresses = public_addresses() if report.sender == DIRECT else []
    report.sending_addresses = list(sending_addresses)
    spf_record = [r for r in txt_records(resolver, domain) or [] if r.lower().startswith("v=spf1")]
    results = spf_results(resolver, sender_address, sending_addresses, helo) if sending_addresses else []
    spf_pass = bool(results) and all(r == "pass" for _, r, _ in results)
    spf_aligned = spf_pass and aligned(domain, domain, aspf)  # the SPF domain is the envelope sender's: [mail] from
    if results:
        worst = next((r for _, r, _ in results if r != "pass"), "pass")
        seen = "; ".join(f"{a}: {r}" for a, r, _ in results)
        record = (
            f"{domain}: {spf_record[0]!r}" if len(spf_record) == 1 else f"{len(spf_record) or 'no'} v=spf1 records at {domain}"
        )
        report.findings.append(Finding("SPF", worst, f"{record}; for {seen}"))
    elif not spf_record:  # RFC 7208 §4.5: no record is "none" whoever sends
        report.findings.append(Finding("SPF", "none", f"no v=spf1 record at {domain}: receivers cannot tell who may send for it"))
    elif len(spf_record) > 1:
        report.findings.append(Finding("SPF", "permerror", f"{len(spf_record)} v=spf1 records at {domain}: keep one"))
    elif report.sender == LOCAL_MTA:
        report.findings.append(Finding("SPF", "unknown", "the local MTA sends the mail: its addresses decide"))
    else:
        who = "this host has no public address (NAT): the receiver sees another" if report.sender == DIRECT else ""
        who = who or "the receiver sees the smart host's address"
        shown = f"{spf_record[0]!r}" if spf_record else "no v=spf1 record"
        report.findings.append(
            Finding("SPF", "unknown", f"{domain}: {shown}; {who}: give it with --sending-address to evaluate the record")
        )

    # DKIM: the configured keys sign a sample, dkimpy verifies it against DNS.
    dkim_pass_aligned = False
    if dkim is None and signed_sample is None:
        report.findings.append(Finding("DKIM", "off", "[mail.dkim] is not set: mail goes unsigned"))
    else:
        if signed_sample is None:
            from alertmail.delivery.dkim import Signer

            signer = Signer.from_options(dkim)
            assert signer is not None
            signed_sample = signer.signatures(sample := sample_message(sender_address, domain)) + sample
        report.signatures = verify_signatures(signed_sample, resolver)
        for sig in report.signatures:
            sig["aligned"] = aligned(sig["d"], domain, adkim)
            where = "" if sig["aligned"] else f"; d={sig['d']} does not align with the From domain {domain}"
            report.findings.append(
                Finding("DKIM", sig["result"], f"{sig['algorithm']} d={sig['d']} s={sig['s']}: {sig['detail']}{where}")
            )
        if not report.signatures:
            report.findings.append(Finding("DKIM", "none", "the message carries no DKIM signature"))
        dkim_pass_aligned = any(s["result"] == "pass" and s["aligned"] for s in report.signatures)
    dkim_pass = any(s["result"] == "pass" for s in report.signatures)

    # DMARC: pass when an aligned identifier passes; else the policy that applies.
    policy = None
    if record_at is None:
        dmarc_result = "none"
        detail = f"no _dmarc record at {domain}" + (
            f" nor at its organizational domain {report.organizational_domain}" if report.organizational_domain != domain else ""
        )
    else:
        policy = (tags.get("sp") if record_at != domain and "sp" in tags else tags.get("p")) or "none"
        policy = policy.lower()
        dmarc_result = "pass" if dkim_pass_aligned or spf_aligned else "fail"
        why = "aligned DKIM" if dkim_pass_aligned else "aligned SPF" if spf_aligned else "neither DKIM nor SPF passes aligned"
        tag = "sp" if record_at != domain and "sp" in tags else "p"
        detail = f"record at _dmarc.{record_at}: {tag}={policy}, adkim={adkim}, aspf={aspf}; {why}"
        if dmarc_result == "fail":
            detail += f": the mail is {_DMARC_ACTION.get(policy, 'reported')}"
    report.findings.append(Finding("DMARC", dmarc_result, detail))
    report.dmarc = {
        "result": dmarc_result,
        "policy": policy,
        "record_at": record_at,
        "dkim_aligned": dkim_pass_aligned,
        "spf_aligned": spf_aligned,
        "dkim_mode": adkim,
        "spf_mode": aspf,
    }
    return assess(report, dkim, spf_record, results, dkim_pass, spf_pass)


def assess(
    report: Report,
    dkim: DkimSettings | None,
    spf_record: list[str],
    spf: list[tuple[str, str, str]],
    dkim_pass: bool,
    spf_pass: bool,
) -> Report:
    """The verdict and the fixes."""
    domain, org = report.domain, report.organizational_domain
    dmarc = report.dmarc
    if report.sender == LOCAL_MTA:
        report.fixes.append("the local MTA that reads the pickup folder sends the mail: its own SPF and DKIM decide")
    if dmarc["result"] == "fail" and dmarc["policy"] in ("reject", "quarantine"):
        report.likely_refused = True
        action = "refuse it" if dmarc["policy"] == "reject" else "put it in spam"
        report.verdict = f"DMARC fails (p={dmarc['policy']} at _dmarc.{dmarc['record_at']}): receivers {action}"
    elif dmarc["result"] == "pass":
        report.verdict = "DMARC passes: receivers accept it as mail of " + domain
    elif dkim_pass or spf_pass:
        report.verdict = "SPF or DKIM passes, not aligned with a DMARC policy: Gmail and Yahoo accept it, bulk senders need DMARC"
    elif any(f.state == "unknown" for f in report.findings if f.check == "SPF") and dkim is None:
        report.verdict = "no DKIM signature; SPF cannot be evaluated here: give the address receivers see with --sending-address"
    else:
        report.likely_refused = True
        report.verdict = (
            f"{report.sender} sends with neither a passing DKIM signature nor a passing SPF: "
            "Gmail and Yahoo will likely refuse or junk it"
        )

    # Fixes, by what failed.
    for sig in report.signatures:
        option = "ed25519_key_file" if sig["algorithm"].startswith("ed25519") else "key_file"
        keygen = "alertmail dkim keygen" + (" --ed25519" if option == "ed25519_key_file" else "")
        if sig["result"] in ("fail", "neutral"):
            if "revoked" in sig["detail"]:
                report.fixes.append(
                    f"{sig['record']} holds a revoked key (empty p=): make a new key under a new selector ({keygen}), "
                    "publish its record and sign with it"
                )
            elif "no key published" in sig["detail"]:
                report.fixes.append(f"publish the record `{keygen}` printed for [mail.dkim].{option} at {sig['record']}")
            else:
                report.fixes.append(
                    f"{sig['record']} publishes another key than [mail.dkim].{option}: publish that key's record "
                    f"(p= of its public key) or set {option} to the key the record belongs to"
                )
        elif not sig["aligned"]:
            relaxed = f' (or "{org}", as alignment is relaxed)' if org != domain and report.dmarc.get("dkim_mode") != "s" else ""
            report.fixes.append(
                f'sign with the From domain: set [mail.dkim] domain = "{domain}"{relaxed} '
                f"and publish its key, or send from an address at {sig['d']}"
            )
    if dkim is None and not report.signatures:
        report.fixes.append(
            "turn on [mail.dkim] (alertmail dkim keygen prints the record to publish): SPF breaks when mail is forwarded"
        )
    for address, result, _ in spf:
        if result in ("fail", "softfail", "neutral", "none"):
            ip = ipaddress.ip_address(address)
            mechanism = f"ip{ip.version}:{address}"
            if spf_record:
                report.fixes.append(f"add {mechanism} to the SPF record of {domain} (SPF {result} for {address})")
            else:
                report.fixes.append(f'publish "v=spf1 {mechanism} -all" at {domain}')
        elif result in ("permerror", "temperror"):
            report.fixes.append(f"the SPF record of {domain} gives {result}: keep one v=spf1 record within 10 DNS lookups")
    if len(spf_record) > 1:
        report.fixes.append(f"merge the {len(spf_record)} SPF records of {domain} into one: two are a permanent error")
    elif not spf_record and not spf:
        who = "<this host's public address>" if report.sender == DIRECT else "<the smart host's addresses, or its include:>"
        report.fixes.append(f'publish "v=spf1 ip4:{who} -all" at {domain}')
    elif spf_record and re.search(r"(?:^|\s)\+?all\b", spf_record[0]):
        report.fixes.append(f"the SPF record of {domain} ends in +all: anyone may send as {domain}; end it with -all")
    if report.sender == DIRECT and dkim is None:
        report.fixes.append('or send through a smart host that signs and is allowed to send for the domain (route = ["smtp"])')
    if dmarc.get("record_at") is None:
        report.fixes.append(f'publish "v=DMARC1; p=none; rua=mailto:<you>@{org}" at _dmarc.{org} to see reports, then tighten it')
    return report
