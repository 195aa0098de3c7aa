"""``alertmail check --deliverability``: what a receiver will make of the mail this config sends.

Since 2024 Gmail and Yahoo refuse or junk mail that carries neither a passing SPF nor a
DKIM signature aligned with the From domain. This looks up the sender domain's SPF
record, the DKIM selector's key and the DMARC policy (dnspython), works out who sends the
mail (this host directly, or a smart host), and says plainly what will happen and what
to change. Looking up is the only thing it does: nothing is sent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

# What sends the mail, by the first transport of the route.
DIRECT, SMART_HOST, LOCAL_MTA, NOT_MAIL = "this host, directly", "a smart host", "the local MTA", "no mail"


@dataclass
class Finding:
    """One check: SPF, DKIM or DMARC, its state (``pass``, ``weak``, ``none``, ``off``, ``error``) and why."""

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = [f"sender domain {self.domain}; mail is handed to receivers by {self.sender} (route {' -> '.join(self.route)})"]
        out += [f"  {f.check:<5}  {f.state:<5}  {f.detail}" for f in self.findings]
        out.append(("LIKELY REFUSED: " if self.likely_refused else "") + self.verdict)
        out += [f"  - {fix}" for fix in self.fixes]
        return out


def who_sends(route: Sequence[str], transports: Mapping[str, Mapping[str, Any]]) -> str:
    """Who the receiving server sees: this host (mx direct), a smart host, or the local MTA (pickup)."""
    first = route[0] if route else ""
    if first == "mx":
        return SMART_HOST if (transports.get("mx") or {}).get("mode") == "smarthost" else DIRECT
    if first == "smtp":
        return SMART_HOST
    if first == "pickup":
        return LOCAL_MTA
    return NOT_MAIL if first == "alertmanager" else SMART_HOST


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


def spf_finding(records: list[str] | None, sender: str) -> Finding:
    spf = [r for r in records or [] if r.lower().startswith("v=spf1")]
    if not spf:
        return Finding("SPF", "none", "no v=spf1 TXT record: receivers cannot tell who may send for this domain")
    if len(spf) > 1:
        return Finding("SPF", "error", f"{len(spf)} SPF records (a permanent error for receivers); keep one")
    record = spf[0]
    qualifier = re.search(r"(?:^|\s)([-~?+]?)all\b", record)
    ending = {"-": "-all (others are refused)", "~": "~all (others soft-fail)", "?": "?all (neutral)", "+": "+all (anyone!)"}
    tail = ending.get(qualifier.group(1) or "+", "") if qualifier else "no all mechanism"
    who = "this host's public address" if sender == DIRECT else "the smart host's addresses"
    state = "weak" if not qualifier or qualifier.group(1) in ("?", "+", "") else "pass"
    return Finding("SPF", state, f"{record!r}: ends {tail}; it must list {who}")


def dkim_finding(dkim: Mapping[str, Any] | None, records: list[str] | None, public_key: str | None) -> Finding:
    if not dkim:
        return Finding("DKIM", "off", "[mail.dkim] is not set: mail goes unsigned")
    name = f"{dkim['selector']}._domainkey.{dkim['domain']}"
    published = [r for r in records or [] if "p=" in r]
    if not published:
        return Finding("DKIM", "none", f"signing is on, but {name} has no key published: receivers cannot verify")
    keys = [re.sub(r"\s+", "", m.group(1)) for r in published if (m := re.search(r"\bp=([^;]*)", r))]
    if public_key is not None and public_key not in keys:
        return Finding("DKIM", "error", f"{name} publishes another key than [mail.dkim].key_file: signatures will fail")
    return Finding("DKIM", "pass", f"signed with d={dkim['domain']}, key published at {name}")


def dmarc_finding(records: list[str] | None) -> Finding:
    dmarc = [r for r in records or [] if r.lower().startswith("v=dmarc1")]
    if not dmarc:
        return Finding("DMARC", "none", "no _dmarc record: receivers apply their own policy")
    policy = re.search(r"\bp=(\w+)", dmarc[0])
    p = policy.group(1).lower() if policy else "none"
    return Finding("DMARC", "pass", f"p={p}: mail that passes neither aligned SPF nor DKIM is {_DMARC_ACTION.get(p, 'reported')}")


_DMARC_ACTION = {"reject": "refused", "quarantine": "put in spam", "none": "only reported"}


def assess(report: Report) -> Report:
    """The verdict and the fixes, from the findings."""
    by = {f.check: f for f in report.findings}
    spf, dkim = by["SPF"], by["DKIM"]
    signed = dkim.state == "pass"
    if report.sender == NOT_MAIL:
        report.verdict = "the route starts with a transport that does not send mail; nothing to assess"
        return report
    if report.sender == LOCAL_MTA:
        report.fixes.append("the local MTA that reads the pickup folder sends the mail: its own SPF and DKIM decide")
    if signed:
        report.verdict = "signed with DKIM for the From domain: Gmail and Yahoo accept it on that alone"
    elif spf.state == "pass":
        report.verdict = "no DKIM signature; SPF alone carries it, as long as the record lists the sending addresses"
        report.fixes.append("turn on [mail.dkim] (alertmail dkim keygen): SPF breaks when mail is forwarded")
    else:
        report.likely_refused = True
        report.verdict = (
            f"{report.sender} sends with neither a DKIM signature nor a passing SPF record: "
            "Gmail and Yahoo will likely refuse or junk it"
        )
        if report.sender == DIRECT:
            report.fixes.append(f'publish "v=spf1 ip4:<this host\'s public address> -all" at {report.domain}')
        else:
            report.fixes.append(f"publish an SPF record at {report.domain} that includes the smart host's addresses")
        report.fixes.append("turn on [mail.dkim] (alertmail dkim keygen prints the record to publish)")
        if report.sender == DIRECT:
            report.fixes.append(
                'or send through a smart host that signs and is allowed to send for the domain (route = ["smtp"])'
            )
    if by["DMARC"].state == "none":
        report.fixes.append(
            f'publish "v=DMARC1; p=none; rua=mailto:<you>@{report.domain}" at _dmarc.{report.domain} to see reports'
        )
    return report


def check(
    sender_address: str,
    route: Sequence[str],
    transports: Mapping[str, Mapping[str, Any]],
    dkim: Mapping[str, Any] | None,
    resolver: Any,
    public_key: str | None = None,
) -> Report:
    """Look up SPF, DKIM and DMARC for the sender's domain and assess them; LookupError when DNS fails."""
    domain = sender_address.rpartition("@")[2].lower()
    report = Report(domain=domain, sender=who_sends(route, transports), route=list(route))
    report.findings.append(spf_finding(txt_records(resolver, domain), report.sender))
    selector_name = f"{dkim['selector']}._domainkey.{dkim['domain']}" if dkim else None
    report.findings.append(dkim_finding(dkim, txt_records(resolver, selector_name) if selector_name else None, public_key))
    report.findings.append(dmarc_finding(txt_records(resolver, f"_dmarc.{domain}")))
    return assess(report)
