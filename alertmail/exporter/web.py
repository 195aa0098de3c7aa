"""``[exporter] web_config``: the Prometheus exporter-toolkit web configuration file (web.yml).

Read as exporter-toolkit reads it (``web/tls_config.go``): ``tls_server_config``,
``basic_auth_users`` (user: bcrypt hash), ``http_server_config.headers`` and
``rate_limit``; unknown keys and keys given twice are errors, relative file names are
relative to the file. What Python's ``ssl`` module cannot do as Go's ``crypto/tls`` does
is refused with the key that asks for it, never quietly ignored: asking for a client
certificate without verifying it (``RequestClientCert``, ``RequireAnyClientCert``),
``curve_preferences``, a certificate or key written inline.

exporter-toolkit reads the file on every request; alertmail reads it with the config
(``check``, ``run``, each reload), so a broken file is refused like a broken config and
the running one stays. This module is imported only when ``web_config`` is set: it
brings PyYAML, and ``auth`` brings bcrypt.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
HTTP_KEYS = ("http2", "headers")
RATE_KEYS = ("interval", "burst")

TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH = {
    "": ssl.CERT_NONE,
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# Go's names for what the ssl module cannot do: it verifies every certificate it asks for.
UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

# Go's tls.CipherSuites() (the suites it does not call insecure), by their OpenSSL names. The
# TLS 1.3 ones are accepted and change nothing, in Go as here: TLS 1.3 suites are not configurable.
CIPHER_SUITES = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": "",
    "TLS_AES_256_GCM_SHA384": "",
    "TLS_CHACHA20_POLY1305_SHA256": "",
}
# exporter-toolkit's extraHTTPHeaders: the headers a web.yml may set, and the values allowed where it limits them.
HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}
BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
HASH_HINT = (
    "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'  "
    "(or python3 -c 'import bcrypt; print(bcrypt.hashpw(b\"PASSWORD\", bcrypt.gensalt()).decode())')"
)
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class WebConfigError(ValueError):
    """What is wrong with a web.yml: (key path, problem and fix) pairs, every one found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{k}: {m}" if k else m for k, m in problems))
        self.problems = problems


@dataclass(frozen=True)
class TlsSettings:
    cert_file: Path
    key_file: Path
    client_auth: str = "NoClientCert"
    client_ca_file: Path | None = None
    client_ca: str = ""
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True

    def context(self) -> ssl.SSLContext:
        """The server's SSLContext; OSError or ssl.SSLError when a file cannot be read or used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = TLS_VERSIONS[self.min_version]
        context.maximum_version = TLS_VERSIONS[self.max_version]
        context.load_cert_chain(self.cert_file, self.key_file)
        openssl = [CIPHER_SUITES[name] for name in self.cipher_suites if CIPHER_SUITES[name]]
        if openssl:
            context.set_ciphers(":".join(openssl))
        if self.prefer_server_cipher_suites:
            context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        else:
            context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
        context.verify_mode = CLIENT_AUTH[self.client_auth]
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=self.client_ca_file)
        if self.client_ca:
            context.load_verify_locations(cadata=self.client_ca)
        return context

    def allowed_peer(self, cert: Mapping[str, Any] | None) -> bool:
        """Whether a verified client certificate (``getpeercert()``) names one of client_allowed_sans."""
        if not self.client_allowed_sans:
            return True
        names = {value for _, value in (cert or {}).get("subjectAltName", ())}
        return bool(names & set(self.client_allowed_sans))


@dataclass(frozen=True)
class WebConfig:
    """A read web.yml. Equal when the file and the files it names read the same: a reload that
    finds them changed restarts the server with them."""

    path: Path
    tls: TlsSettings | None = None
    users: tuple[tuple[str, str], ...] = ()  # (user, bcrypt hash)
    headers: tuple[tuple[str, str], ...] = ()
    rate_interval: float = 0.0  # seconds between requests the token bucket allows; 0: no limit
    rate_burst: int = 0
    fingerprint: str = ""  # sha256 of the file and the files it names
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, repr=False)

    @property
    def user_hashes(self) -> dict[str, str]:
        return dict(self.users)


def _strict_loader() -> Any:
    """A yaml SafeLoader that refuses a key given twice, as Go's yaml.UnmarshalStrict does."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"{key!r} is given twice; keep one", key_node.start_mark)
            seen[key] = loader.construct_object(value_node, deep=deep)
        return seen

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    return Loader


def go_duration(value: Any) -> float:
    """Seconds in a Go duration ("1s", "1m30s", "250ms", "0"); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str) or not value:
        raise ValueError(f'expected a duration like "1s" or "250ms", got {value!r}')
    if value == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(value):
        found = _GO_DURATION.match(value, pos)
        if not found:
            raise ValueError(f'expected a duration like "1s" or "250ms", got {value!r}')
        total += float(found.group(1)) * _GO_UNITS[found.group(2)]
        pos = found.end()
    return total


class _Reader:
    """Checks one parsed web.yml, collecting every problem."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.problems: list[tuple[str, str]] = []
        self.files: list[Path] = []
        self.ssl_context: ssl.SSLContext | None = None

    def error(self, key: str, message: str) -> None:
        self.problems.append((key, message))

    def table(self, key: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(key, f"expected a mapping, got {value!r}")
            return {}
        out = {}
        for name, item in value.items():
            where = f"{key}.{name}" if key else str(name)
            if name not in known:
                from alertmail.config.schema import did_you_mean

                self.error(where, f"unknown key; {did_you_mean(str(name), known, listing='known keys')}")
            else:
                out[name] = item
        return out

    def string(self, key: str, value: Any) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {value!r}")
            return None
        return value

    def file(self, key: str, value: Any) -> Path | None:
        name = self.string(key, value)
        if not name:
            return None
        path = Path(name).expanduser()
        path = path if path.is_absolute() else self.base / path
        try:
            path.read_bytes()
        except OSError as exc:
            self.error(key, f"cannot read {path}: {exc.strerror or exc}; name a readable file (relative to {self.base})")
            return None
        self.files.append(path)
        return path

    def tls(self, raw: Any) -> TlsSettings | None:
        before = len(self.problems)
        t = self.table("tls_server_config", raw, TLS_KEYS)
        if not t:
            return None
        k = "tls_server_config."
        for inline, instead in (("cert", "cert_file"), ("key", "key_file")):
            if t.get(inline) is not None:
                self.error(
                    k + inline,
                    f"alertmail reads the certificate and key from files only (a key is a secret, never written inline); "
                    f"put it in a file and name it in {instead}",
                )
        cert = self.file(k + "cert_file", t.get("cert_file"))
        key = self.file(k + "key_file", t.get("key_file"))
        if t.get("cert_file") is None and t.get("cert") is None:
            self.error(k + "cert_file", "missing; name the server's certificate (PEM), e.g. cert_file: server.crt")
        if t.get("key_file") is None and t.get("key") is None:
            self.error(k + "key_file", "missing; name the certificate's private key (PEM), e.g. key_file: server.key")
        auth = self.string(k + "client_auth_type", t.get("client_auth_type")) or "NoClientCert"
        if auth in UNVERIFIED_CLIENT_AUTH:
            self.error(
                k + "client_auth_type",
                f"{auth} asks for a client certificate without verifying it, which Python's ssl module cannot do "
                "(exporter-toolkit calls it insecure too); use RequireAndVerifyClientCert (or VerifyClientCertIfGiven) "
                "with client_ca_file",
            )
        elif auth not in CLIENT_AUTH:
            from alertmail.config.schema import did_you_mean

            known = [n for n in CLIENT_AUTH if n]
            self.error(k + "client_auth_type", f"unknown value {auth!r}; {did_you_mean(auth, known, listing='known')}")
        ca_file = self.file(k + "client_ca_file", t.get("client_ca_file"))
        ca_text = self.string(k + "client_ca", t.get("client_ca")) or ""
        has_ca = t.get("client_ca_file") is not None or bool(ca_text)
        if has_ca and CLIENT_AUTH.get(auth) == ssl.CERT_NONE:
            self.error(
                k + "client_auth_type",
                "client CAs are given without a client auth policy; set client_auth_type: RequireAndVerifyClientCert",
            )
        if CLIENT_AUTH.get(auth, ssl.CERT_NONE) != ssl.CERT_NONE and not has_ca:
            self.error(
                k + "client_ca_file",
                f"missing; {auth} verifies client certificates against it: name the CA (PEM) that signs them",
            )
        sans = t.get("client_allowed_sans")
        if sans is not None and (not isinstance(sans, list) or not all(isinstance(s, str) for s in sans)):
            self.error(k + "client_allowed_sans", f"expected a list of names, got {sans!r}")
            sans = None
        versions = []
        for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
            value = t.get(name, default)
            if value not in TLS_VERSIONS:
                self.error(k + name, f"unknown TLS version {value!r}; give one of {', '.join(TLS_VERSIONS)}")
                value = default
            versions.append(value)
        if TLS_VERSIONS[versions[0]] > TLS_VERSIONS[versions[1]]:
            self.error(k + "min_version", f"{versions[0]} is above max_version {versions[1]}; lower it or raise max_version")
        ciphers = t.get("cipher_suites") or []
        if not isinstance(ciphers, list):
            self.error(k + "cipher_suites", f"expected a list of Go cipher suite names, got {ciphers!r}")
            ciphers = []
        for i, name in enumerate(ciphers):
            if name not in CIPHER_SUITES:
                from alertmail.config.schema import did_you_mean

                self.error(
                    f"{k}cipher_suites[{i}]",
                    f"unknown cipher: {name!r}; {did_you_mean(str(name), CIPHER_SUITES, listing='known (Go tls.CipherSuites)')}",
                )
        if t.get("curve_preferences"):
            self.error(
                k + "curve_preferences",
                "Python's ssl module cannot set the curves to prefer; remove it (OpenSSL offers X25519, P-256, P-384 and P-521)",
            )
        prefer = t.get("prefer_server_cipher_suites", True)
        if not isinstance(prefer, bool):
            self.error(k + "prefer_server_cipher_suites", f"expected true or false, got {prefer!r}")
            prefer = True
        if cert is None or key is None or len(self.problems) > before:
            return None
        settings = TlsSettings(
            cert_file=cert,
            key_file=key,
            client_auth=auth,
            client_ca_file=ca_file,
            client_ca=ca_text,
            client_allowed_sans=tuple(sans or ()),
            min_version=versions[0],
            max_version=versions[1],
            cipher_suites=tuple(ciphers),
            prefer_server_cipher_suites=prefer,
        )
        try:
            self.ssl_context = settings.context()
        except ssl.SSLError as exc:
            self.error("tls_server_config", f"the certificate, key or CA cannot be used: {exc.reason or exc}; check the files")
        except OSError as exc:
            self.error("tls_server_config", f"cannot read a file: {exc.strerror or exc}")
        return settings

    def users(self, raw: Any) -> tuple[tuple[str, str], ...]:
        if raw is None:
            return ()
        if not isinstance(raw, dict):
            self.error("basic_auth_users", f"expected a mapping of user: bcrypt hash, got {raw!r}")
            return ()
        out = []
        for user, hashed in raw.items():
            name = str(user)
            where = f"basic_auth_users.{name}"
            if ":" in name or not name or any(ord(c) < 32 for c in name):
                self.error(
                    where, "a user name cannot hold ':' or control characters (Basic auth splits at the first ':'); rename it"
                )
                continue
            found = BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
            if found is None:
                self.error(where, f"not a bcrypt hash ($2y$10$ and 53 more characters); {HASH_HINT}")
                continue
            if not 4 <= int(found.group(1)) <= 31:
                self.error(where, f"bcrypt cost {found.group(1)} is out of range 4 to 31; {HASH_HINT}")
                continue
            out.append((name, hashed))
        return tuple(out)

    def headers(self, raw: Any) -> tuple[tuple[str, str], ...]:
        h = self.table("http_server_config", raw, HTTP_KEYS)
        if "http2" in h and not isinstance(h["http2"], bool):
            self.error("http_server_config.http2", f"expected true or false, got {h['http2']!r}")
        headers = h.get("headers")
        if headers is None:
            return ()
        if not isinstance(headers, dict):
            self.error("http_server_config.headers", f"expected a mapping of header: value, got {headers!r}")
            return ()
        out = []
        for name, value in headers.items():
            where = f"http_server_config.headers.{name}"
            if name not in HEADERS:
                self.error(where, f"HTTP header {name!r} can not be configured; the ones that can: {', '.join(HEADERS)}")
                continue
            if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
                self.error(where, f"expected a one-line string, got {value!r}")
                continue
            allowed = HEADERS[name]
            if allowed and value not in allowed:
                self.error(where, f"invalid value {value!r}; expected one of {', '.join(allowed)}")
                continue
            if value:  # blank: unset, as exporter-toolkit reads it
                out.append((name, value))
        return tuple(out)

    def rate(self, raw: Any) -> tuple[float, int]:
        r = self.table("rate_limit", raw, RATE_KEYS)
        interval, burst = 0.0, 0
        try:
            interval = go_duration(r.get("interval", 0))
        except ValueError as exc:
            self.error("rate_limit.interval", str(exc))
        value = r.get("burst", 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.error("rate_limit.burst", f"expected a whole number from 0, got {value!r}")
        else:
            burst = value
        if interval and not burst:
            self.error("rate_limit.burst", "0 with an interval lets no request through; give 1 or more")
        return interval, burst


def read_web_config(path: Path) -> WebConfig:
    """Read and check ``path``; WebConfigError with every problem found."""
    import yaml

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WebConfigError(
            [("", f"cannot read it: {exc.strerror or exc}; check web_config and the file's permissions")]
        ) from None
    try:
        raw = yaml.load(data, Loader=_strict_loader())
    except yaml.YAMLError as exc:
        raise WebConfigError([("", f"not valid YAML: {exc}".replace("\n", " "))]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise WebConfigError(
            [("", f"expected a mapping at the top (tls_server_config:, basic_auth_users:), got {type(raw).__name__}")]
        )
    reader = _Reader(path)
    top = reader.table("", raw, TOP_KEYS)
    users = reader.users(top.get("basic_auth_users"))
    headers = reader.headers(top.get("http_server_config"))
    interval, burst = reader.rate(top.get("rate_limit"))
    tls = reader.tls(top.get("tls_server_config"))
    if reader.problems:
        raise WebConfigError(reader.problems)
    digest = hashlib.sha256(data)
    for file in reader.files:
        digest.update(b"\0" + str(file).encode() + b"\0" + file.read_bytes())
    return WebConfig(
        path=path,
        tls=tls,
        users=users,
        headers=headers,
        rate_interval=interval,
        rate_burst=burst,
        fingerprint=digest.hexdigest(),
        ssl_context=reader.ssl_context,
    )
