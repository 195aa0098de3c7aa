"""DKIM signing (RFC 6376): the ``[mail.dkim]`` section, its key checks, the signer, key generation.

A message is signed once, when it is queued: the queue stores the signed bytes, so every
retry sends exactly what was signed. The queue knows nothing of keys or config: the
outbox builds a ``Signer`` from ``[mail.dkim]`` and hands it to the ``Queue`` as a plain
callable (bytes in, bytes out). It lives in the delivery stage because that is where the
outbox opens the queue; the command line (``send-test``, ``dkim keygen``) uses it too.

An RSA signature (``key_file``, RSA 2048 or more) always; with ``ed25519_key_file`` a
second, Ed25519 signature (RFC 8463) under its own selector. Receivers that know only
RSA ignore the second one. dkimpy (and PyNaCl, which it uses for Ed25519) are imported
only when a key is read: an agent without ``[mail.dkim]`` never loads them.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from alertmail.config.schema import Checker, Section, Settings, setting
from alertmail.errors import AlertmailError

log = logging.getLogger("alertmail.delivery.dkim")

# h=: every header a reader sees or a client threads on is listed twice ("oversigned"):
# once for the field the message has, once for an absent one, so a second From, or a
# Subject, Reply-To or Sender added on the way, breaks the signature. A header listed but
# absent is signed as absent, so it cannot be added later either.
OVERSIGNED = ("From", "Subject", "Reply-To", "Sender", "To", "Cc", "Date", "Message-ID")
SIGNED_HEADERS = (
    *(name for header in OVERSIGNED for name in (header, header)),
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Auto-Submitted",
)
# relaxed/relaxed: survives a relay that refolds headers or trims trailing blanks.
CANONICALIZATION = (b"relaxed", b"relaxed")
MIN_RSA_BITS = 1024  # RFC 8301: verifiers reject less; keygen makes 2048
_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$")
# PKCS#8 wrapping of a raw Ed25519 private key (RFC 8410): this prefix, then the 32-byte seed.
_ED25519_PKCS8_PREFIX = bytes.fromhex("302e020100300506032b657004220420")


@dataclass(frozen=True, slots=True, kw_only=True)
class DkimSettings(Settings):
    """``[mail.dkim]``: the signing domain and keys; all unset = no signing."""

    domain: str | None = setting("str", None, help="d=: the signing domain, usually the domain of [mail].from")
    selector: str | None = setting("str", None, help="s=: the RSA key's selector; its record is SELECTOR._domainkey.DOMAIN")
    key_file: Path | None = setting("path", None, help="RSA private key (PEM, 2048 bits, mode 0600): alertmail dkim keygen")
    ed25519_selector: str | None = setting("str", None, help="selector of the Ed25519 key (RFC 8463)")
    ed25519_key_file: Path | None = setting(
        "path", None, help="Ed25519 private key, a second signature: alertmail dkim keygen --ed25519"
    )


KEYGEN = "alertmail dkim keygen --domain DOMAIN --selector SELECTOR"


class DkimKeyError(AlertmailError, ValueError):
    """A DKIM private key that cannot be used: missing, unreadable, open to others, or of the wrong type."""


# -- keys ---------------------------------------------------------------------


def read_key_file(path: Path) -> bytes:
    """The bytes of a private key file that only its owner may read; DkimKeyError says what is wrong and the fix."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise DkimKeyError(f"{path} does not exist; make a key with `{KEYGEN}`") from None
    except OSError as exc:
        raise DkimKeyError(f"cannot read {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DkimKeyError(f"{path} is not a file")
    if st.st_mode & 0o077:
        raise DkimKeyError(
            f"{path} is readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"a private key must be the owner's alone: chmod 600 {path}"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DkimKeyError(f"cannot read {path}: {exc.strerror}; the agent's user must own it (chown, chmod 600)") from None


def load_rsa_key(path: Path) -> bytes:
    """The PEM bytes of an RSA private key, checked as dkimpy will read them."""
    data = read_key_file(path)
    from dkim.crypto import UnparsableKeyError, parse_pem_private_key

    if b"-----BEGIN" not in data:
        raise DkimKeyError(f"{path} is not a PEM RSA private key (an Ed25519 key belongs in ed25519_key_file)")
    try:
        key = parse_pem_private_key(data)
    except (UnparsableKeyError, ValueError, IndexError, TypeError) as exc:
        raise DkimKeyError(
            f"{path} is not an RSA private key in PEM form ({exc}); "
            f'expected "-----BEGIN RSA PRIVATE KEY-----" as `{KEYGEN}` writes it'
        ) from None
    bits = key["modulus"].bit_length()
    if bits < MIN_RSA_BITS:
        raise DkimKeyError(
            f"{path} is a {bits}-bit RSA key; receivers reject less than 1024 bits: make a 2048-bit one with `{KEYGEN}`"
        )
    return data


def load_ed25519_key(path: Path) -> bytes:
    """The base64 Ed25519 seed dkimpy signs with, from a base64 seed (dknewkey's form) or a PKCS#8 PEM file."""
    data = read_key_file(path).strip()
    if data.startswith(b"-----BEGIN"):
        body = b"".join(line for line in data.splitlines() if not line.startswith(b"-----"))
        try:
            der = base64.b64decode(body, validate=True)
        except ValueError:
            der = b""
        if not der.startswith(_ED25519_PKCS8_PREFIX) or len(der) != len(_ED25519_PKCS8_PREFIX) + 32:
            raise DkimKeyError(f"{path} is a PEM key but not an Ed25519 one (an RSA key belongs in key_file)")
        return base64.b64encode(der[len(_ED25519_PKCS8_PREFIX) :])
    try:
        seed = base64.b64decode(data, validate=True)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise DkimKeyError(
            f"{path} is not an Ed25519 private key: expected the base64 32-byte seed (or a PKCS#8 PEM) "
            f"as `{KEYGEN} --ed25519` writes it"
        )
    return base64.b64encode(seed)


# -- the [mail.dkim] section ----------------------------------------------------------


def configured(settings: DkimSettings | None) -> bool:
    """Whether ``[mail.dkim]`` asks for signing."""
    return settings is not None and any(v is not None for v in settings.as_table().values())


def _check(settings: DkimSettings, check: Checker, config: object) -> None:
    if not configured(settings):
        return
    options = DkimSettings.options()
    required = {"domain": settings.domain, "selector": settings.selector, "key_file": settings.key_file}
    for key, value in required.items():
        if value is None:
            check.error(f"mail.dkim.{key}", f"missing; {options[key].help}")
    if isinstance(settings.domain, str) and not _SELECTOR.match(settings.domain):
        check.error("mail.dkim.domain", f"not a domain name: {settings.domain!r}; write it as example.com")
    for key, selector in (("selector", settings.selector), ("ed25519_selector", settings.ed25519_selector)):
        if isinstance(selector, str) and not _SELECTOR.match(selector):
            check.error(
                f"mail.dkim.{key}", f"not a valid selector: {selector!r}; use letters, digits, '-' and '.', e.g. mail2026"
            )
    if (settings.ed25519_key_file is None) != (settings.ed25519_selector is None):
        check.error("mail.dkim", "ed25519_key_file and ed25519_selector go together; set both or neither")
    if settings.ed25519_selector is not None and settings.ed25519_selector == settings.selector:
        check.error("mail.dkim.ed25519_selector", "must differ from selector: each key has its own DNS record")
    keys = (("key_file", settings.key_file, load_rsa_key), ("ed25519_key_file", settings.ed25519_key_file, load_ed25519_key))
    for key, path, loader in keys:
        if isinstance(path, Path):
            try:
                loader(path)
            except DkimKeyError as exc:
                check.error(f"mail.dkim.{key}", str(exc))


SECTION: Section[DkimSettings] = Section("mail.dkim", DkimSettings, check=_check)


# -- signing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """``signer(data)`` is ``data`` with its DKIM-Signature header(s) on top; the keys are read once."""

    domain: str
    selector: str
    rsa_key: bytes
    ed25519_selector: str | None = None
    ed25519_key: bytes | None = None

    @classmethod
    def from_options(cls, settings: DkimSettings | None) -> Signer | None:
        """The signer ``[mail.dkim]`` asks for, or None; DkimKeyError when a key cannot be used."""
        if settings is None or not configured(settings):
            return None
        if settings.domain is None or settings.selector is None or settings.key_file is None:
            raise DkimKeyError("[mail.dkim] needs domain, selector and key_file to sign")
        ed_file = settings.ed25519_key_file
        return cls(
            domain=settings.domain,
            selector=settings.selector,
            rsa_key=load_rsa_key(Path(settings.key_file)),
            ed25519_selector=settings.ed25519_selector if ed_file else None,
            ed25519_key=load_ed25519_key(Path(ed_file)) if ed_file else None,
        )

    def signatures(self, data: bytes) -> bytes:
        """The DKIM-Signature header fields for ``data`` (RSA first, then Ed25519), with its line ending."""
        import dkim

        head = data.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in data else data.split(b"\n\n", 1)[0]
        linesep = b"\r\n" if b"\r\n" in head or b"\r\n" in data[:1000] else b"\n"
        headers = [h.encode() for h in SIGNED_HEADERS]
        out = []
        keys = [(b"rsa-sha256", self.selector, self.rsa_key)]
        if self.ed25519_key is not None and self.ed25519_selector:
            keys.append((b"ed25519-sha256", self.ed25519_selector, self.ed25519_key))
        for algorithm, selector, key in keys:
            signature = dkim.sign(
                data,
                selector.encode(),
                self.domain.encode(),
                key,
                canonicalize=CANONICALIZATION,
                signature_algorithm=algorithm,
                include_headers=headers,
                linesep=linesep,
            )
            if not signature.endswith(linesep):
                signature += linesep
            out.append(signature)
        return b"".join(out)

    def signed_by_me(self, data: bytes) -> bool:
        """Whether ``data`` already carries a DKIM-Signature with this d= and one of these selectors."""
        head = re.split(rb"\r?\n\r?\n", data, maxsplit=1)[0]
        selectors = {self.selector.lower(), (self.ed25519_selector or self.selector).lower()}
        for field_ in re.findall(rb"(?im)^DKIM-Signature:(.*(?:\r?\n[ \t].*)*)", head):
            tags = {
                k.strip().lower(): v.strip() for k, _, v in (t.partition(b"=") for t in re.sub(rb"\s+", b"", field_).split(b";"))
            }
            domain, selector = tags.get(b"d", b"").decode("ascii", "replace"), tags.get(b"s", b"").decode("ascii", "replace")
            if domain.lower() == self.domain.lower() and selector.lower() in selectors:
                return True
        return False

    def __call__(self, data: bytes) -> bytes:
        """``data`` signed; unsigned (with an error logged) when it cannot be: an alert unsigned beats no alert.

        8-bit data and lines over 998 octets are converted first (RFC 6376 §5.3), so no next
        hop without 8BITMIME needs a conversion that would break the signature."""
        from alertmail.delivery.sevenbit import ConversionError, seven_bit

        if self.signed_by_me(data):
            # Mail another alertmail signed with this domain and selector (the relay's
            # allow clients): one more signature by the same key adds nothing.
            return data
        try:
            data = seven_bit(data)
        except ConversionError as exc:
            log.warning("dkim: a message for %s is signed as it is, not as 7-bit: %s", self.domain, exc)
        try:
            return self.signatures(data) + data
        except Exception as exc:  # dkimpy raises DKIMException and, on odd input, plain errors
            log.error("dkim: cannot sign a message for %s (%s); it goes out unsigned", self.domain, exc)
            return data


# -- key generation -------------------------------------------------------------------


def generate_rsa(bits: int = 2048) -> tuple[bytes, str]:
    """A new RSA key: (PKCS#1 PEM private key, base64 SubjectPublicKeyInfo for p=)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(public).decode()


def generate_ed25519() -> tuple[bytes, str]:
    """A new Ed25519 key: (base64 32-byte seed and a newline, base64 raw public key for p=, RFC 8463)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    seed = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(seed) + b"\n", base64.b64encode(public).decode()


def public_key(settings: DkimSettings) -> str | None:
    """The p= value the RSA key of ``[mail.dkim]`` needs published (to compare with DNS), or None when unset."""
    if settings.key_file is None:
        return None
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(load_rsa_key(Path(settings.key_file)), password=None)
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(public).decode()


def txt_value(key_type: str, public: str) -> str:
    """The TXT record's text: ``v=DKIM1; k=rsa; p=...``."""
    return f"v=DKIM1; k={key_type}; p={public}"


def txt_strings(value: str, size: int = 255) -> list[str]:
    """``value`` cut into character-strings of at most ``size`` bytes (one TXT string holds 255)."""
    return [value[i : i + size] for i in range(0, len(value), size)] or [""]


def txt_record(selector: str, domain: str, value: str) -> str:
    """The record in zone-file form: ``S._domainkey.D IN TXT "..." "..."``."""
    strings = " ".join(f'"{part}"' for part in txt_strings(value))
    return f"{selector}._domainkey.{domain} IN TXT {strings}"
