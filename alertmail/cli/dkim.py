"""``alertmail dkim keygen``: a DKIM key pair, and the DNS TXT record to publish."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from alertmail.delivery.dkim import generate_ed25519, generate_rsa, txt_record, txt_value
from alertmail.exitcodes import ExitCode

LABEL = r"^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*$"


def _name(kind: str):
    import re

    def check(ctx: click.Context, param: click.Parameter, value: str) -> str:
        if not re.match(LABEL, value):
            raise click.BadParameter(f"not a valid {kind}: {value!r}; use letters, digits, '-' and '.'")
        return value.lower() if kind == "domain" else value

    return check


@click.group("dkim")
def dkim_group() -> None:
    """DKIM signing keys ([mail.dkim])."""


@dkim_group.command("keygen")
@click.option("--domain", required=True, callback=_name("domain"), help="the signing domain (d=), e.g. example.com")
@click.option("--selector", required=True, callback=_name("selector"), help="the key's selector (s=), e.g. mail2026")
@click.option("--ed25519", "ed25519", is_flag=True, help="an Ed25519 key (RFC 8463) instead of RSA 2048")
@click.option(
    "-o",
    "--output",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="folder for SELECTOR.key",
)
def keygen(domain: str, selector: str, ed25519: bool, folder: Path) -> None:
    """Write a new private key to DIR/SELECTOR.key (mode 0600) and print the TXT record to publish."""
    if ed25519:
        private, public = generate_ed25519()
        key_type, key_option, selector_option = "ed25519", "ed25519_key_file", "ed25519_selector"
    else:
        private, public = generate_rsa(2048)
        key_type, key_option, selector_option = "rsa", "key_file", "selector"
    made = not folder.exists()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if made:
        os.chmod(folder, 0o700)  # whatever the umask did: the key's folder is the owner's alone
    path = folder / f"{selector}.key"
    try:
        # O_EXCL: never overwrite a key whose record may be published; 0600 from the first byte on.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        click.echo(f"{path} exists; choose another --selector (a new key needs a new record) or move it away", err=True)
        sys.exit(ExitCode.CANTCREAT)
    except OSError as exc:
        click.echo(f"cannot write {path}: {exc.strerror}", err=True)
        sys.exit(ExitCode.CANTCREAT)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(path, 0o600)  # whatever the umask did
    click.echo(f"; private key written to {path} (mode 0600); keep it secret", err=True)
    click.echo(f"; publish this record in the zone of {domain}:", err=True)
    click.echo(txt_record(selector, domain, txt_value(key_type, public)))
    click.echo("; then add to config.toml:", err=True)
    if ed25519:
        click.echo(f'; [mail.dkim]\n; {selector_option} = "{selector}"\n; {key_option} = "{path.resolve()}"', err=True)
    else:
        click.echo(
            f'; [mail.dkim]\n; domain = "{domain}"\n; {selector_option} = "{selector}"\n; {key_option} = "{path.resolve()}"',
            err=True,
        )
