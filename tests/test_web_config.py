"""web.yml read as exporter-toolkit reads it, the basic-auth check and its limits, the page's CSRF token: units."""

from __future__ import annotations

import asyncio
import base64
import shutil
import ssl
import subprocess
from pathlib import Path

import bcrypt
import pytest

from alertmail.exporter import auth
from alertmail.exporter.actions import PageActions
from alertmail.exporter.auth import FAKE_HASH, BasicAuth
from alertmail.exporter.web import WebConfigError, go_duration, read_web_config
from tests.certs import make_tls_files

# exporter-toolkit's docs/web-config.yml, as people have it.
TOOLKIT_EXAMPLE = """\
# TLS and basic authentication configuration example.
tls_server_config:
  cert_file: server.crt
  key_file: server.key

basic_auth_users:
  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze
  bob: $2y$10$hLqFl9jSjoAAy95Z/zw8Ye8wkdMBM8c5Bn1ptYqP/AXyV0.oy0S8m

rate_limit:
  interval: "1s" # time interval between two requests, set to 0 to disable rate limiter
  burst: 20 # and permits a burst of up to 20 requests.
"""


def with_certs(folder: Path, text: str) -> Path:
    files = make_tls_files(folder / "made")
    shutil.copy(files.cert, folder / "server.crt")
    shutil.copy(files.key, folder / "server.key")
    shutil.copy(files.ca, folder / "ca.pem")
    (folder / "web.yml").write_text(text)
    return folder / "web.yml"


def problems(path: Path) -> dict[str, str]:
    with pytest.raises(WebConfigError) as refused:
        read_web_config(path)
    return dict(refused.value.problems)


def test_the_exporter_toolkit_example_reads_with_its_files_relative_to_it(tmp_path):
    web = read_web_config(with_certs(tmp_path, TOOLKIT_EXAMPLE))
    assert [user for user, _ in web.users] == ["alice", "bob"]
    assert web.tls is not None and web.tls.cert_file == tmp_path / "server.crt"
    assert (web.rate_interval, web.rate_burst) == (1.0, 20)
    assert isinstance(web.ssl_context, ssl.SSLContext)


def test_versions_and_cipher_suites_reach_the_tls_context(tmp_path):
    web = read_web_config(
        with_certs(
            tmp_path,
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS12\n  max_version: TLS12\n"
            "  cipher_suites:\n  - TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\n  - TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384\n"
            "  prefer_server_cipher_suites: false\n",
        )
    )
    context = web.ssl_context
    assert context is not None and context.maximum_version == ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384"}
    assert not context.options & ssl.OP_CIPHER_SERVER_PREFERENCE


def test_what_python_ssl_cannot_do_is_refused_with_its_key(tmp_path):
    found = problems(
        with_certs(
            tmp_path,
            "tls_server_config:\n  cert_file: server.crt\n  key: inline\n  client_auth_type: RequestClientCert\n"
            "  curve_preferences: [CurveP256]\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n  min_version: TLS14\n",
        )
    )
    assert "reads the certificate and key from files only" in found["tls_server_config.key"]
    assert "without verifying it" in found["tls_server_config.client_auth_type"]
    assert "cannot set the curves" in found["tls_server_config.curve_preferences"]
    assert "unknown cipher: 'TLS_RSA_WITH_RC4_128_SHA'" in found["tls_server_config.cipher_suites[0]"]
    assert "unknown TLS version 'TLS14'" in found["tls_server_config.min_version"]


def test_client_verification_needs_a_ca_and_a_ca_needs_a_policy(tmp_path):
    base = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    found = problems(with_certs(tmp_path, base + "  client_auth_type: RequireAndVerifyClientCert\n"))
    assert "name the CA (PEM) that signs them" in found["tls_server_config.client_ca_file"]
    found = problems(with_certs(tmp_path, base + "  client_ca_file: ca.pem\n"))
    assert "without a client auth policy" in found["tls_server_config.client_auth_type"]


def test_a_key_that_is_not_the_certificates_is_refused_along_with_every_other_problem(tmp_path):
    path = with_certs(
        tmp_path, "basic_auth_users:\n  alice: secret\ntls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n"
    )
    shutil.copy(tmp_path / "made" / "rogue.key", tmp_path / "other.key")
    found = problems(path)
    assert "cannot be used" in found["tls_server_config"]
    assert "not a bcrypt hash" in found["basic_auth_users.alice"]


def test_users_need_a_bcrypt_hash_and_a_name_without_a_colon(tmp_path):
    (tmp_path / "web.yml").write_text(
        f"basic_auth_users:\n  alice: secret\n  'bo:b': {FAKE_HASH.decode()}\n  carol: $2y$03$" + "a" * 53 + "\n"
    )
    found = problems(tmp_path / "web.yml")
    assert "not a bcrypt hash" in found["basic_auth_users.alice"] and "htpasswd -nBC 10" in found["basic_auth_users.alice"]
    assert "cannot hold ':'" in found["basic_auth_users.bo:b"]
    assert "cost 03 is out of range" in found["basic_auth_users.carol"]


def test_only_the_headers_exporter_toolkit_allows_can_be_set(tmp_path):
    (tmp_path / "web.yml").write_text(
        "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: allow\n    X-Content-Type-Options: nosniff\n"
        "    Content-Security-Policy: ''\n"
    )
    assert problems(tmp_path / "web.yml") == {
        "http_server_config.headers.X-Frame-Options": "invalid value 'allow'; expected one of deny, sameorigin"
    }
    (tmp_path / "web.yml").write_text("http_server_config:\n  headers:\n    X-Content-Type-Options: nosniff\n")
    assert read_web_config(tmp_path / "web.yml").headers == (("X-Content-Type-Options", "nosniff"),)


def test_an_empty_file_serves_as_before(tmp_path):
    (tmp_path / "web.yml").write_text("# nothing yet\n")
    web = read_web_config(tmp_path / "web.yml")
    assert (web.tls, web.users, web.headers, web.rate_interval) == (None, (), (), 0.0)


def test_go_durations():
    assert go_duration("1s") == 1.0 and go_duration("1m30s") == 90.0 and go_duration("250ms") == 0.25
    assert go_duration(0) == 0.0 and go_duration("0") == 0.0
    with pytest.raises(ValueError):
        go_duration("1 second")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def counted(monkeypatch):
    calls: list[bytes] = []
    real = auth._check

    def check(hashed: bytes, password: bytes) -> bool:
        calls.append(hashed)
        return real(hashed, password)

    monkeypatch.setattr(auth, "_check", check)
    return calls


def test_right_credentials_cost_one_bcrypt_check_then_are_remembered(counted):
    users = {"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}
    checker = BasicAuth(users)

    async def scrapes() -> list[str | None]:
        return [(await checker.check(basic("alice", "pw"), "127.0.0.1")).user for _ in range(5)]

    assert asyncio.run(scrapes()) == ["alice"] * 5
    assert len(counted) == 1


def test_a_wrong_password_is_checked_every_time_and_an_unknown_user_against_a_fixed_hash(counted):
    checker = BasicAuth({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()})

    async def tries() -> list[int]:
        return [
            (await checker.check(basic("alice", "nope"), "127.0.0.1")).status,
            (await checker.check(basic("alice", "nope"), "127.0.0.1")).status,
            (await checker.check(basic("mallory", "pw"), "127.0.0.1")).status,
        ]

    assert asyncio.run(tries()) == [401, 401, 401]
    assert len(counted) == 3 and counted[2] == FAKE_HASH


def test_five_failures_in_a_minute_hold_one_address_back_until_the_first_leaves_the_window(counted):
    now = [1000.0]
    checker = BasicAuth({"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode()}, clock=lambda: now[0])

    async def check(password: str, address: str = "127.0.0.1") -> auth.Verdict:
        return await checker.check(basic("alice", password), address)

    async def run() -> None:
        for i in range(5):
            now[0] = 1000.0 + i
            assert (await check("guess")).status == 401
        held = await check("pw")
        assert (held.status, held.retry_after) == (429, 56)
        assert (await check("pw", "127.0.0.2")).user == "alice"  # another address is not held back
        now[0] = 1060.5  # the first failure has left the window
        assert (await check("pw")).user == "alice"

    asyncio.run(run())
    assert len(counted) == 6  # five wrong, one right (then remembered); nothing checked while held back


def test_a_hash_made_as_htpasswd_makes_it_verifies():
    # $2y$, htpasswd's prefix: exporter-toolkit's hash of "fakepassword".
    assert auth._check(FAKE_HASH, b"fakepassword") and not auth._check(FAKE_HASH, b"fakepassworD")
    htpasswd = shutil.which("htpasswd")
    if htpasswd is None:
        pytest.skip("htpasswd is not installed (Debian: apache2-utils); the $2y$ hash above stands for it")
    line = subprocess.run([htpasswd, "-nbBC", "10", "alice", "s3cret"], capture_output=True, text=True, check=True).stdout
    user, _, hashed = line.strip().partition(":")
    checker = BasicAuth({user: hashed})
    assert asyncio.run(checker.check(basic("alice", "s3cret"), "127.0.0.1")).user == "alice"


def test_the_form_token_is_per_user_and_changes_with_the_password_or_the_agent():
    one = PageActions(None, {"alice": "$2y$hash1", "bob": "$2y$hash2"}, b"s" * 32)
    assert one.token("alice") != one.token("bob")
    assert one.token("alice") != PageActions(None, {"alice": "$2y$hash9"}, b"s" * 32).token("alice")
    assert one.token("alice") != PageActions(None, {"alice": "$2y$hash1"}, b"t" * 32).token("alice")


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"host": "127.0.0.1:9464"}, True),
        ({"host": "127.0.0.1:9464", "origin": "https://127.0.0.1:9464", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:9464", "origin": "https://evil.example"}, False),
        ({"host": "127.0.0.1:9464", "origin": "http://127.0.0.1:9464"}, False),  # the page is served over https
        ({"host": "127.0.0.1:9464", "sec-fetch-site": "same-site"}, False),
        ({"host": "127.0.0.1:9464", "origin": "null", "sec-fetch-site": "same-origin"}, True),
        ({"host": "127.0.0.1:9464", "origin": "null"}, False),
    ],
)
def test_posts_from_another_site_are_told_apart(headers, same):
    assert PageActions(None, {}, b"s" * 32)._same_origin(headers, "https") is same
