"""TLS material made at test time: a throwaway CA, a server certificate it signed, and
a self-signed one nobody trusts. Nothing is checked in; keys live in tmp_path."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the test CA: the file to trust
    cert: Path  # server certificate signed by the CA, for 127.0.0.1 / localhost
    key: Path
    rogue_cert: Path  # self-signed, same names, trusted by nobody
    rogue_key: Path

    def server_context(self, rogue: bool = False) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if rogue:
            context.load_cert_chain(self.rogue_cert, self.rogue_key)
        else:
            context.load_cert_chain(self.cert, self.key)
        return context


def make_tls_files(folder: Path, names: tuple[str, ...] = ()) -> TlsFiles:
    """Write a CA, a server certificate for 127.0.0.1/127.0.0.2/localhost (and ``names``) and a rogue one."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(key, path: Path) -> Path:
        path.write_bytes(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        return path

    def write_cert(cert, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    addresses = [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3")]
    sans = x509.SubjectAlternativeName([x509.DNSName("localhost"), *(x509.DNSName(n) for n in names), *addresses])

    def build(subject: str, key, issuer: x509.Name, issuer_key, *, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            # Valid a good while either side of now: the suite also runs with the clock a year ahead
            # (libfaketime), and peers it does not reach (Go's Prometheus) read the real clock.
            .not_valid_before(now - datetime.timedelta(days=400))
            .not_valid_after(now + datetime.timedelta(days=400))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if ca:
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
        else:
            builder = builder.add_extension(sans, critical=False).add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("alertmail test CA", ca_key, name("alertmail test CA"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = build("localhost", server_key, ca_cert.subject, ca_key, ca=False)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue_cert = build("localhost", rogue_key, name("localhost"), rogue_key, ca=False)
    return TlsFiles(
        ca=write_cert(ca_cert, folder / "ca.pem"),
        cert=write_cert(server_cert, folder / "server.pem"),
        key=write_key(server_key, folder / "server.key"),
        rogue_cert=write_cert(rogue_cert, folder / "rogue.pem"),
        rogue_key=write_key(rogue_key, folder / "rogue.key"),
    )
