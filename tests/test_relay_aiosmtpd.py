"""The relay against the installed aiosmtpd: its copy of ``SMTP.__init__``, and its other path.

``RelaySMTP._init_fast`` sets what aiosmtpd's ``SMTP.__init__`` sets, without the
introspection it repeats on every connection. The first tests hold that copy to the
installed aiosmtpd attribute by attribute, so an upgrade that adds, renames or
changes one fails here rather than in a live session. The others run the relay as
an aiosmtpd release outside ``FAST_INIT_VERSIONS`` runs it (aiosmtpd's own
``__init__``) next to the fast path, with real clients over 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import smtplib
import socket
import ssl
import weakref
from typing import Any

import aiosmtpd
import pytest
from aiosmtpd.smtp import SMTP, _AuthMechAttr

from alertmail.plugins.relay import server as relay_server
from alertmail.plugins.relay.listener import RelayServer
from alertmail.plugins.relay.policy import RelayPolicy, parse_networks
from alertmail.plugins.relay.users import Users, hash_password
from tests.peers import SmtpSink
from tests.relay_peers import (
    ALERTMAIL,
    ALERTMAIL_AIOSMTPD_INIT,
    message_id,
    private_folder,
    received,
    self_signed,
    start_relay,
    users_file,
)

# What SMTP.__init__ takes; _init_fast is written against exactly these.
AIOSMTPD_INIT_PARAMETERS = (
    "self",
    "handler",
    "data_size_limit",
    "enable_SMTPUTF8",
    "decode_data",
    "hostname",
    "ident",
    "tls_context",
    "require_starttls",
    "timeout",
    "auth_required",
    "auth_require_tls",
    "auth_exclude_mechanism",
    "auth_callback",
    "command_call_limit",
    "authenticator",
    "proxy_protocol_timeout",
    "loop",
)
PASSWORD = "correct horse battery"


def test_aiosmtpd_init_takes_the_parameters_the_fast_path_was_written_for():
    names = tuple(inspect.signature(SMTP.__init__).parameters)
    assert names == AIOSMTPD_INIT_PARAMETERS, (
        f"aiosmtpd {aiosmtpd.__version__} changed SMTP.__init__'s parameters: compare RelaySMTP._init_fast with it"
    )


def _shape(value: Any, session: Any) -> Any:
    """``value`` as something two sessions built for the same server can compare with ==."""
    if value is session.event_handler:
        return "handler"  # each session has its own
    if inspect.ismethod(value):
        owner = value.__self__
        role = "session" if owner is session else "handler" if owner is session.event_handler else owner
        return ("method", value.__func__, role)
    if isinstance(value, _AuthMechAttr):
        return ("auth mechanism", _shape(value.method, session), value.is_builtin)
    if isinstance(value, dict):
        factory = getattr(value, "default_factory", None)
        return (type(value), {k: _shape(v, session) for k, v in value.items()}, factory() if factory else None)
    if isinstance(value, weakref.ref):
        return ("weakref", _shape(value(), session))
    if isinstance(value, asyncio.StreamReader | asyncio.Future):
        return (type(value), repr(value))  # each session has its own; its state and limit must match
    return value


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "starttls-auth"])
def test_fast_path_sets_what_aiosmtpd_init_sets(monkeypatch, secure):
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH) if secure else None
    users = Users({"alice": hash_password(PASSWORD, n=2**10)}) if secure else None
    policy = RelayPolicy(
        hostname="relay.test",
        allow=parse_networks(["127.0.0.1/32"]),
        users=users,
        require_tls=secure,
        max_size=20_000,
        timeout=42.0,
    )

    async def build() -> tuple[relay_server.RelaySMTP, relay_server.RelaySMTP]:
        server = RelayServer(policy, queue=None, w3c=None, tls=tls)
        monkeypatch.setattr(relay_server, "_FAST_INIT", True)
        fast = server._session()
        monkeypatch.setattr(relay_server, "_FAST_INIT", False)
        monkeypatch.setattr(relay_server.RelaySMTP, "_init_fast", None)  # aiosmtpd's __init__, for sure
        own = server._session()
        return fast, own

    fast, own = asyncio.run(build())
    assert type(fast) is type(own) is relay_server.RelaySMTP
    fast_vars, own_vars = vars(fast), vars(own)
    version = aiosmtpd.__version__
    assert sorted(fast_vars) == sorted(own_vars), (
        f"aiosmtpd {version}: attributes only its __init__ sets: {sorted(set(own_vars) - set(fast_vars))}; "
        f"only the fast path sets: {sorted(set(fast_vars) - set(own_vars))}"
    )
    different = {
        name: (_shape(fast_vars[name], fast), _shape(own_vars[name], own))
        for name in fast_vars
        if _shape(fast_vars[name], fast) != _shape(own_vars[name], own)
    }
    assert not different, f"aiosmtpd {version}: the fast path sets these otherwise (fast, aiosmtpd): {different}"
    # What the two must agree on for the relay to work at all, spelled out.
    assert set(fast._smtp_methods) >= {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "STARTTLS", "QUIT"}
    assert set(fast._handle_hooks) == {"EHLO", "MAIL", "RCPT", "DATA"}
    assert sorted(fast._auth_methods) == (["LOGIN", "PLAIN"] if secure else [])


def test_installed_aiosmtpd_takes_the_fast_path():
    """A release missing from FAST_INIT_VERSIONS works (see the tests below) but costs CPU per connection."""
    assert relay_server._FAST_INIT is (aiosmtpd.__version__ in relay_server.FAST_INIT_VERSIONS)
    assert relay_server._FAST_INIT, (
        f"aiosmtpd {aiosmtpd.__version__} is not in FAST_INIT_VERSIONS: once the tests above pass on it, add it"
    )


# -- the relay on aiosmtpd's own __init__, next to the fast path ----------------------

PATHS = {"fast": ALERTMAIL, "aiosmtpd-init": ALERTMAIL_AIOSMTPD_INIT}


@pytest.fixture(scope="module")
def sink():
    with SmtpSink(private_folder("relay-init-sink-") / "dump") as sink:
        yield sink


@pytest.fixture(scope="module")
def relays(tmp_path_factory, sink):
    """The same relay twice: sessions built by the fast path, and by aiosmtpd's __init__."""
    folder = tmp_path_factory.mktemp("relay-init")
    cert, key = self_signed(folder)
    users = users_file(folder, {"alice": PASSWORD})
    options = {
        "tls_cert": str(cert),
        "tls_key": str(key),
        "users_file": str(users),
        "allow": ["127.0.0.1/32"],  # 127.0.0.2 plays a client from elsewhere
        "max_size": "20KB",
        "max_recipients": 3,
        "max_commands": 5,
        "local_domains": ["local.test"],
        "local_recipients": ["postmaster@local.test"],
    }
    started = {}
    try:
        for name, command in PATHS.items():
            started[name] = start_relay(folder / name, sink, dict(options), command=command)
        yield started
    finally:
        codes = {name: relay.stop() for name, relay in started.items()}
        for name, relay in started.items():
            assert "Traceback" not in relay.output(), f"{name}:\n{relay.output()}"
        assert codes == dict.fromkeys(started, 0), codes


def tls_client() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


def transcript(port: int, lines: list[bytes]) -> list[str]:
    """The greeting, the whole reply to each of ``lines``, then what follows QUIT; queue ids blanked."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        reader = conn.makefile("rb")
        replies.append(reader.readline().decode())
        for line in lines:
            conn.sendall(line)
            reply = [reader.readline().decode()]
            while reply[-1][3:4] == "-":
                reply.append(reader.readline().decode())
            replies.append("".join(reply))
        replies.append(reader.read().decode())
    return [re.sub(r"queued as \w+", "queued as ID", r) for r in replies]


@pytest.mark.peers
def test_both_paths_answer_one_session_alike(relays):
    script = [
        b"EHLO client.test\r\n",
        b"MAIL FROM:<app@client.test> SIZE=100\r\n",
        b"RCPT TO:<bob@example.test\r\n",
        b"RCPT TO:<bob@example.test>\r\n",
        b"DATA\r\n",
        b"Subject: alike\r\n\r\nbody\r\n.\r\n",
        b"NOOP\r\n",
        b"VRFY bob\r\n",
        b"FROB\r\n",
        b"MAIL FROM:<app@client.test> SIZE=30000\r\n",
        b"QUIT\r\n",
    ]
    fast, own = (transcript(relays[name].port, script) for name in PATHS)
    assert fast == own
    assert own[0].startswith("220 relay.test ESMTP") and "250-STARTTLS" in own[1] and "250 ENHANCEDSTATUSCODES" in own[1]
    assert own[3].startswith("501 5.1.3") and own[5].startswith("354") and own[6].startswith("250 2.0.0 OK queued as ID")
    assert own[-2].startswith("221") and own[-1] == ""


@pytest.mark.peers
@pytest.mark.parametrize("path", PATHS)
def test_relays_mail_from_an_allowed_client(relays, sink, path):
    mid = message_id()
    with smtplib.SMTP("127.0.0.1", relays[path].port, local_hostname="client.test", timeout=10) as client:
        client.sendmail("app@client.test", ["bob@example.test"], f"Message-Id: {mid}\r\nSubject: {path}\r\n\r\nhello\r\n")
    (copy,) = received(sink, mid)
    assert copy.recipients == ["bob@example.test"] and copy.sender == "app@client.test"
    assert "from client.test ([127.0.0.1])" in copy.message.get_all("Received")[-1]


@pytest.mark.peers
@pytest.mark.parametrize("path", PATHS)
def test_refuses_to_relay_for_an_outside_client_until_it_authenticates(relays, sink, path):
    port = relays[path].port
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.ehlo()
        assert client.mail("app@client.test")[0] == 250
        code, reply = client.rcpt("bob@example.test")
        assert code == 554 and reply.startswith(b"5.7.1"), reply
    mid = message_id()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10, source_address=("127.0.0.2", 0)) as client:
        client.starttls(context=tls_client())
        client.ehlo()
        assert client.esmtp_features["auth"].split() == ["LOGIN", "PLAIN"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            client.login("alice", "wrong password")
        assert refused.value.smtp_code == 535
        client.login("alice", PASSWORD)
        client.sendmail("app@client.test", ["bob@example.test"], f"Message-Id: {mid}\r\n\r\nauthenticated\r\n")
    (copy,) = received(sink, mid)
    assert "with ESMTPSA id" in copy.message.get_all("Received")[-1]


@pytest.mark.peers
@pytest.mark.parametrize("path", PATHS)
def test_refuses_bare_newlines_in_commands_and_data(relays, sink, path):
    port = relays[path].port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(200).startswith(b"220 ")
        conn.sendall(b"EHLO client.test\n")
        assert conn.recv(200).startswith(b"521 5.5.2")
        assert conn.recv(200) == b""
    mid = message_id()
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.test", timeout=10) as client:
        client.ehlo()
        client.mail("app@client.test")
        client.rcpt("bob@example.test")
        code, reply = client.data(f"Message-Id: {mid}\r\n\r\nline\n.\nMAIL FROM:<evil@client.test>\r\n".encode())
        assert code == 554 and reply.startswith(b"5.6.0"), reply
    assert received(sink, mid, timeout=0.5) == []
