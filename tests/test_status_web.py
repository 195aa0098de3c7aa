"""[exporter] web_config: the exporter-toolkit web.yml (TLS, basic_auth_users with bcrypt) on a real
`alertmail run`, asked by the real curl; the status page's actions (silences, queue retry) by POST
with a CSRF token."""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import bcrypt
import pytest

from tests.certs import TlsFiles, make_tls_files
from tests.peers import free_port, need
from tests.test_status import CONFIG, RunningAgent, alertmail

PASSWORD = "correct horse"


def bcrypt_hash(password: str, cost: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def web_config(folder: Path, tls: TlsFiles | None, users: dict[str, str] | None = None, extra: str = "") -> Path:
    text = ""
    if tls is not None:
        text += f"tls_server_config:\n  cert_file: {tls.cert.relative_to(folder)}\n  key_file: {tls.key.relative_to(folder)}\n"
    if users:
        text += "basic_auth_users:\n" + "".join(f"  {user}: {hashed}\n" for user, hashed in users.items())
    path = folder / "web.yml"
    path.write_text(text + extra)
    return path


def agent_config() -> str:
    return CONFIG + textwrap.dedent(f"""
    [exporter]
    listen = "127.0.0.1:{free_port()}"
    web_config = "web.yml"
    """)


class WebAgent(RunningAgent):
    def base(self) -> str:
        self.wait_for("serving metrics on")
        found = re.search(r"serving metrics on (https?://\S+)/metrics", self.log.read_text())
        assert found
        return found.group(1)


def start(folder: Path, *, users: dict[str, str] | None = None, tls: bool = True, extra: str = "") -> tuple[WebAgent, TlsFiles]:
    files = make_tls_files(folder / "tls")
    web_config(folder, files if tls else None, users, extra)
    agent = WebAgent(folder, agent_config(), value="80")
    agent.wait_for("control socket")
    return agent, files


@pytest.fixture
def secured(tmp_path):
    agent, files = start(tmp_path, users={"alice": bcrypt_hash(PASSWORD)})
    try:
        yield agent, files
    finally:
        agent.stop()


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers with lower-case names, body) of one request by the curl binary."""
    binary = need("curl")
    done = subprocess.run([binary, "-sS", "--max-time", "30", "-D", "-", *args], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    head, _, body = done.stdout.decode().partition("\r\n\r\n")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def test_without_credentials_every_path_answers_401_with_a_basic_challenge(secured):
    agent, files = secured
    for path in ("/", "/metrics"):
        status, headers, _ = curl("--cacert", str(files.ca), agent.base() + path)
        assert status == 401
        assert headers["www-authenticate"].startswith("Basic")


def test_a_wrong_password_is_401_and_the_right_one_is_served_over_tls(secured):
    agent, files = secured
    assert agent.base().startswith("https://")
    status, headers, _ = curl("--cacert", str(files.ca), "-u", "alice:hunter2", agent.base() + "/metrics")
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    status, _, _ = curl("--cacert", str(files.ca), "-u", f"nobody:{PASSWORD}", agent.base() + "/metrics")
    assert status == 401
    status, _, body = curl("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}", agent.base() + "/metrics")
    assert status == 200 and "alertmail_" in body
    assert "wrong credentials for user 'alice' from 127.0.0.1" in agent.log.read_text()
    assert "hunter2" not in agent.log.read_text() and PASSWORD not in agent.log.read_text()


def test_after_five_wrong_passwords_the_address_is_answered_429_even_with_the_right_one(secured):
    agent, files = secured
    url = agent.base() + "/metrics"
    for _ in range(5):
        assert curl("--cacert", str(files.ca), "-u", "alice:guess", url)[0] == 401
    status, headers, _ = curl("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}", url)
    assert status == 429
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "5 wrong logins from 127.0.0.1 within a minute: answered 429 for" in agent.log.read_text()


def test_a_plain_http_client_gets_no_answer_from_the_tls_port(secured):
    agent, _ = secured
    plain = agent.base().replace("https://", "http://")
    done = subprocess.run([need("curl"), "-sS", "--max-time", "10", plain + "/metrics"], capture_output=True, text=True)
    assert done.returncode != 0


def test_the_page_token_adds_a_silence_that_silence_list_shows(secured):
    agent, files = secured
    auth = ("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}")
    status, _, page = curl(*auth, agent.base() + "/")
    assert status == 200
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert token, page[-3000:]
    assert 'action="/silence/add"' in page and "<script" not in page
    status, headers, _ = curl(
        *auth,
        "--data-urlencode", f"csrf={token.group(1)}",
        "--data-urlencode", "rule=gauge-high",
        "--data-urlencode", "labels=",
        "--data-urlencode", "duration=2h",
        "--data-urlencode", "comment=from the page",
        agent.base() + "/silence/add",
    )  # fmt: skip
    assert status == 303 and headers["location"] == "/"
    listed = alertmail("silence", "list", "-c", "config.toml", "--json", cwd=agent.folder)
    assert listed.returncode == 0, listed.stderr
    silences = [s for s in json.loads(listed.stdout) if s["comment"] == "from the page"]
    assert len(silences) == 1
    assert silences[0]["author"] == "alice" and "gauge-high" in silences[0]["matchers"]
    ends = datetime.datetime.fromisoformat(silences[0]["ends"]) - datetime.datetime.fromisoformat(silences[0]["starts"])
    assert ends == datetime.timedelta(hours=2)
    assert re.search(r"status page: silence \w+ added .* by alice", agent.log.read_text())
    assert PASSWORD not in agent.log.read_text()


def test_a_post_without_or_with_a_wrong_token_or_from_another_site_is_refused_403(secured):
    agent, files = secured
    auth = ("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}")
    url = agent.base() + "/silence/add"
    assert curl(*auth, "-d", "rule=gauge-high&duration=2h", url)[0] == 403
    assert curl(*auth, "-d", f"csrf={'0' * 64}&rule=gauge-high&duration=2h", url)[0] == 403
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', curl(*auth, agent.base() + "/")[2])
    assert token
    form = f"csrf={token.group(1)}&rule=gauge-high&duration=2h"
    assert curl(*auth, "-H", "Origin: https://evil.example", "-d", form, url)[0] == 403
    assert curl(*auth, "-H", "Sec-Fetch-Site: cross-site", "-d", form, url)[0] == 403
    listed = alertmail("silence", "list", "-c", "config.toml", "--json", cwd=agent.folder)
    assert json.loads(listed.stdout) == []


def test_a_silence_is_expired_from_the_page(secured):
    agent, files = secured
    added = alertmail("silence", "add", "-c", "config.toml", "--rule", "gauge-slow", "--for", "1h", cwd=agent.folder)
    silence_id = added.stdout.split()[0]
    auth = ("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}")
    deadline = time.monotonic() + 30
    while f'name="id" value="{silence_id}"' not in (page := curl(*auth, agent.base() + "/")[2]):
        assert time.monotonic() < deadline, page[-3000:]
        time.sleep(0.3)
    token = re.search(r'name="csrf" value="([0-9a-f]{64})"', page)
    assert token
    status, headers, _ = curl(*auth, "-d", f"csrf={token.group(1)}&id={silence_id}", agent.base() + "/silence/expire")
    assert status == 303 and headers["location"] == "/"
    listed = alertmail("silence", "list", "-c", "config.toml", "--json", cwd=agent.folder)
    assert [s["id"] for s in json.loads(listed.stdout)] == []


def test_without_users_the_page_over_tls_stays_read_only(tmp_path):
    agent, files = start(tmp_path)
    try:
        status, _, page = curl("--cacert", str(files.ca), agent.base() + "/")
        assert status == 200 and "<form" not in page and "Read-only." in page
        assert curl("--cacert", str(files.ca), "-d", "rule=x&duration=1h", agent.base() + "/silence/add")[0] == 405
    finally:
        agent.stop()


def test_the_configured_headers_are_on_every_answer(tmp_path):
    agent, files = start(
        tmp_path,
        extra="http_server_config:\n  headers:\n    Strict-Transport-Security: max-age=31536000\n    X-Frame-Options: deny\n",
    )
    try:
        _, headers, _ = curl("--cacert", str(files.ca), agent.base() + "/metrics")
        assert headers["strict-transport-security"] == "max-age=31536000"
        assert headers["x-frame-options"] == "deny"
    finally:
        agent.stop()


def test_a_bad_web_yml_is_a_config_error_naming_the_file_and_key(tmp_path):
    (tmp_path / "config.toml").write_text(agent_config())
    (tmp_path / "web.yml").write_text(
        "basic_auth_users:\n  alice: plaintext\ntls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n"
        "  client_auth_type: RequireAnyClientCert\n  curve_preferences: [X25519]\nhttp_server_config:\n  headers:\n"
        "    Server: x\n"
    )
    done = alertmail("check", "-c", "config.toml", cwd=tmp_path)
    assert done.returncode == 78, done.stdout + done.stderr
    out = done.stdout + done.stderr
    web = str(tmp_path / "web.yml")
    assert f"exporter.web_config: {web}: basic_auth_users.alice: not a bcrypt hash" in out
    assert f"{web}: tls_server_config.cert_file: cannot read {tmp_path / 'missing.pem'}" in out
    assert f"{web}: tls_server_config.client_auth_type: RequireAnyClientCert asks for a client certificate" in out
    assert f"{web}: tls_server_config.curve_preferences: Python's ssl module cannot" in out
    assert f"{web}: http_server_config.headers.Server: HTTP header 'Server' can not be configured" in out
    assert "Traceback" not in out


def test_a_key_given_twice_or_unknown_is_refused(tmp_path):
    (tmp_path / "config.toml").write_text(agent_config())
    (tmp_path / "web.yml").write_text("basic_auth_users:\n  a: x\nbasic_auth_users:\n  b: y\n")
    done = alertmail("check", "-c", "config.toml", cwd=tmp_path)
    assert done.returncode == 78 and "'basic_auth_users' is given twice" in done.stdout + done.stderr
    (tmp_path / "web.yml").write_text("basic_auth_user:\n  a: x\n")
    done = alertmail("check", "-c", "config.toml", cwd=tmp_path)
    assert done.returncode == 78 and "basic_auth_user: unknown key; did you mean 'basic_auth_users'?" in done.stdout + done.stderr


def test_a_reload_reads_web_yml_again_and_a_broken_one_keeps_the_running_one(secured):
    agent, files = secured
    ca = ("--cacert", str(files.ca))
    url = agent.base() + "/metrics"
    web_config(agent.folder, files, {"alice": bcrypt_hash("new password")})
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("configuration reloaded")
    deadline = time.monotonic() + 30
    while True:  # the server restarts on its port with the new file
        try:
            if curl(*ca, "-u", "alice:new password", url)[0] == 200:
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert curl(*ca, "-u", f"alice:{PASSWORD}", url)[0] == 401
    (agent.folder / "web.yml").write_text("basic_auth_users: [\n")
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for("reload refused")
    assert "web.yml: not valid YAML" in agent.log.read_text()
    assert curl(*ca, "-u", "alice:new password", url)[0] == 200


def client_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """A client CA, and a client certificate (with its key) it signed: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client CA")])

    def builder(subject: x509.Name, public) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca = builder(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    client = (
        builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prometheus")]), key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("prometheus.test")]), critical=False)
    )
    paths = folder / "client-ca.pem", folder / "client.pem", folder / "client.key"
    paths[0].write_bytes(ca.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(client.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


def test_a_client_certificate_is_required_with_require_and_verify_client_cert(tmp_path):
    ca, cert, key = client_certificate(tmp_path)
    agent, files = start(
        tmp_path,
        extra=f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {ca.name}\n"
        "  client_allowed_sans: [prometheus.test]\n",
    )
    try:
        url = agent.base() + "/metrics"
        done = subprocess.run([need("curl"), "-sS", "--max-time", "10", "--cacert", str(files.ca), url], capture_output=True)
        assert done.returncode != 0
        rogue_cert = ("--cert", str(files.rogue_cert), "--key", str(files.rogue_key))
        rogue = subprocess.run(
            [need("curl"), "-sS", "--max-time", "10", "--cacert", str(files.ca), *rogue_cert, url], capture_output=True
        )
        assert rogue.returncode != 0
        status, _, body = curl("--cacert", str(files.ca), "--cert", str(cert), "--key", str(key), url)
        assert status == 200 and "alertmail_" in body
    finally:
        agent.stop()


def test_chromium_signs_in_with_basic_auth_and_adds_a_silence_with_the_form(tmp_path):
    from urllib.parse import quote

    from tests.devtools import Browser

    need("chromium")
    agent, _ = start(tmp_path, users={"alice": bcrypt_hash(PASSWORD)}, tls=False)
    browser = None
    try:
        base = agent.base()
        browser = Browser(tmp_path / "profile")
        browser.open(base.replace("http://", f"http://alice:{quote(PASSWORD)}@") + "/")
        assert "Signed in as alice" in browser.evaluate("document.body.innerText")
        # The page runs no script of its own: the fields are filled and the form sent as a user would.
        browser.evaluate(
            "const f = document.getElementById('silence-add');"
            "f.rule.value = 'gauge-slow'; f.duration.value = '90m'; f.comment.value = 'from chromium'; f.requestSubmit(); true"
        )
        browser.wait_event("Page.loadEventFired")
        assert browser.evaluate("location.href") == base + "/"  # 303 back to the page
        assert "from chromium" in browser.evaluate("document.body.innerText")
    finally:
        if browser is not None:
            browser.close()
        agent.stop()
    listed = alertmail("silence", "list", "-c", "config.toml", "--json", cwd=agent.folder)
    (silence,) = json.loads(listed.stdout)
    assert (silence["author"], silence["comment"]) == ("alice", "from chromium")


@pytest.mark.parametrize("dark", [False, True], ids=["light", "dark"])
def test_the_page_with_its_forms_reads_at_390_px_in_chromium(secured, tmp_path, dark):
    from tests.browser import measure

    need("chromium")
    agent, files = secured
    status, _, page = curl("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}", agent.base() + "/")
    assert status == 200 and 'id="silence-add"' in page
    (tmp_path / "measure").mkdir()
    layout = measure(page, 390, folder=tmp_path / "measure", dark=dark)
    assert layout.scroll_width <= 390, layout
    assert not layout.overflowing, layout.overflowing
    assert not layout.low_contrast, layout.low_contrast
    assert layout.smallest_text >= 11


def test_a_queued_message_is_retried_from_the_page(tmp_path):
    closed = free_port()  # nothing listens here: every try is deferred
    config = agent_config().replace('route = ["pickup"]', 'route = ["smtp"]') + textwrap.dedent(f"""
    [transports.smtp]
    servers = ["127.0.0.1:{closed}"]
    """)
    make_tls_files(tmp_path / "tls")
    web_config(tmp_path, None, {"alice": bcrypt_hash(PASSWORD)})
    agent = WebAgent(tmp_path, config, value="80")
    try:
        agent.wait_for("deferred", timeout=60)
        auth = ("-u", f"alice:{PASSWORD}")
        page = curl(*auth, agent.base() + "/")[2]
        found = re.search(r'name="csrf" value="([0-9a-f]{64})"><input type="hidden" name="id" value="(\w+)"><button', page)
        assert found, page[-3000:]
        token, msg_id = found.groups()
        assert agent.log.read_text().count(f"message {msg_id}") >= 1
        status, headers, _ = curl(*auth, "-d", f"csrf={token}&id={msg_id}", agent.base() + "/queue/retry")
        assert status == 303 and headers["location"] == "/"
        agent.wait_for(f"retry requested for {msg_id}: 1 message(s)")
        assert f"status page: retry of message {msg_id} requested by alice" in agent.log.read_text()
        status, _, text = curl(*auth, "-d", f"csrf={token}&id=0000000000000000000", agent.base() + "/queue/retry")
        assert status == 404 and "no message" in text
    finally:
        agent.stop()


def test_prometheus_scrapes_over_tls_with_basic_auth(secured, tmp_path):
    from tests.fleet_peers import Prometheus
    from tests.test_agent_e2e import wait_for

    need("prometheus")
    agent, files = secured
    target = agent.base().removeprefix("https://")
    (tmp_path / "scrape-password").write_text(PASSWORD)
    job = textwrap.dedent(f"""\
    scheme: https
    tls_config:
      ca_file: {files.ca}
    basic_auth:
      username: alice
      password_file: {tmp_path / "scrape-password"}
    """)
    with Prometheus(tmp_path / "prometheus", [target], job=job) as prometheus:
        up = wait_for(lambda: prometheus.query('up{job="alertmail"} == 1'), timeout=30, what="a scrape over TLS")
        assert up[0]["metric"]["instance"] == target
        firing = wait_for(lambda: prometheus.query('alertmail_alert{rule="gauge-high"}'), timeout=30, what="the alert")
        assert firing[0]["metric"]["state"] == "firing"
    assert "wrong credentials" not in agent.log.read_text()


def test_without_a_place_for_the_form_secret_the_page_stays_read_only(tmp_path):
    (tmp_path / "var" / "web-secret").mkdir(parents=True)  # where the secret goes, taken by a folder
    agent, files = start(tmp_path, users={"alice": bcrypt_hash(PASSWORD)})
    try:
        auth = ("--cacert", str(files.ca), "-u", f"alice:{PASSWORD}")
        status, _, page = curl(*auth, agent.base() + "/")
        assert status == 200 and "<form" not in page and "Read-only." in page
        assert curl(*auth, "-d", "rule=x&duration=1h", agent.base() + "/silence/add")[0] == 405
        assert "the status page stays read-only" in agent.log.read_text()
    finally:
        agent.stop()


if __name__ == "__main__":  # python -m tests.test_status_web docs/status-page-actions.png: docs/status.md's picture
    import sys
    import tempfile

    from tests.browser import screenshot
    from tests.test_status_page import stage_picture

    with tempfile.TemporaryDirectory() as tmp:
        running, made = start(Path(tmp), users={"alice": bcrypt_hash(PASSWORD)})
        try:
            stage_picture(running)
            html = curl("--cacert", str(made.ca), "-u", f"alice:{PASSWORD}", running.base() + "/")[2]
            screenshot(html, 390, Path(sys.argv[1]))
        finally:
            running.stop()
