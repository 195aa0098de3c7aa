"""``alertmail sendmail``: submission into the maildrop, and the agent taking it to smtp-sink."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from alertmail.cli import sendmail
from alertmail.exitcodes import ExitCode
from tests.peers import SmtpSink
from tests.test_agent_e2e import start_agent, stop_agent

SENDMAIL = [sys.executable, "-m", "alertmail", "sendmail"]


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    """smtp-sink dumping outside pytest's base folder, which other test runs may close to it."""
    folder = Path(tempfile.mkdtemp(prefix="alertmail-sink-", dir="/var/tmp"))
    try:
        with SmtpSink(folder / "sink") as running:
            yield running
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can traverse (pytest's own base folder is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="alertmail-sendmail-", dir="/var/tmp"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def write_config(folder: Path, sink: SmtpSink | None, extra: str = "") -> Path:
    path = folder / "config.toml"
    server = sink.address if sink else "127.0.0.1:9"
    path.write_text(
        '[agent]\nstate_dir = "var"\nhostname = "web01.example.test"\n'
        '[mail]\nfrom = "alerts@example.test"\nto = ["ops@example.test"]\nroute = ["smtp"]\n'
        f'[transports.smtp]\nservers = ["{server}"]\ntls = "none"\nconnect_timeout = "5s"\n'
        # Only the wake-up can bring a submission in quickly: the scan alone waits an hour.
        '[sendmail]\nscan_interval = "1h"\n' + extra
    )
    os.chmod(path, 0o644)
    return path


def submit(config: Path, args: list[str], message: bytes, command=SENDMAIL, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "ALERTMAIL_CONFIG": str(config)}
    return subprocess.run([*command, *args], input=message, capture_output=True, env=env, timeout=60, **kwargs)


def system_python() -> str:
    """A Python 3.11+ that other users may run (this one may live under /root)."""
    for path in ("/usr/bin/python3", "/usr/local/bin/python3"):
        done = subprocess.run([path, "-c", "import tomllib"], capture_output=True) if os.path.exists(path) else None
        if done is not None and done.returncode == 0 and os.stat(path).st_mode & 0o001:
            return path
    pytest.skip("no Python 3.11+ that other users may run")


def wake_ready(config: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Wait until the agent holds the maildrop's FIFO open (its sendmail service is up)."""
    wake = config.parent / "var" / "maildrop" / ".wake"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, stop_agent(proc)
        try:
            os.close(os.open(wake, os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the agent never opened {wake}: {stop_agent(proc)}")


def wait_messages(sink: SmtpSink, count: int, proc: subprocess.Popen | None = None, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sink.messages()
        if len(found) >= count:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{len(sink.messages())} of {count} mail(s) reached smtp-sink: {proc and stop_agent(proc)}")


# -- the submission alone (no agent) ----------------------------------------------


def test_t_takes_recipients_from_to_cc_and_bcc_removes_bcc_and_adds_date_message_id_and_from():
    opts = sendmail.parse_args(["-t", "-oi", "-F", "Cron Daemon", "extra@example.test"])
    message = b"To: Ann <ann@example.test>\nCc: bob@example.test\nBcc: carol@example.test\nSubject: hi\n\nbody\n"
    sender, recipients, content = sendmail.compose(opts, message, "example.test", "web01.example.test", 1_700_000_000)
    assert recipients == ["extra@example.test", "ann@example.test", "bob@example.test", "carol@example.test"]
    assert sender == f"{pwd.getpwuid(os.getuid()).pw_name}@example.test"
    head = content.split(b"\r\n\r\n", 1)[0].decode()
    assert "Bcc" not in head and "carol" not in head.split("X-Receiver: <carol@example.test>")[1]
    assert f"From: Cron Daemon <{sender}>" in head
    assert "\r\nDate: " in head and "\r\nMessage-ID: <" in head and "@web01.example.test>" in head
    assert content.endswith(b"\r\n\r\nbody\n")


def test_bare_user_names_are_qualified_with_the_domain_of_mail_from():
    opts = sendmail.parse_args(["-f", "backup", "root"])
    sender, recipients, content = sendmail.compose(opts, b"Subject: x\n\nx\n", "example.test", "h", 0)
    assert (sender, recipients) == ("backup@example.test", ["root@example.test"])
    assert b"From: backup@example.test" in content or b"<backup@example.test>" in content


def test_a_line_with_a_single_dot_ends_the_message_unless_i_is_given():
    from io import BytesIO

    data = b"Subject: x\n\nfirst\n.\nsecond\n"
    assert sendmail.read_message(BytesIO(data), ignore_dots=False) == b"Subject: x\n\nfirst\n"
    assert sendmail.read_message(BytesIO(data), ignore_dots=True) == data


@pytest.mark.parametrize(
    "text",
    [
        (Path(__file__).resolve().parent.parent / "config.toml").read_text(),
        '[agent]\nstate_dir = "/srv/am" # here\nhostname = \'web01\'\n[mail]\nfrom = "Ops <ops@example.test>"\n',
        '[mail.dkim]\nfrom = "x@y"\n[agent]\nstate_dir = "var"\n[[rules]]\nname = "a"\n',
        'agent.state_dir = "dotted"\n',
        'agent = { state_dir = "inline" }\n',
        '[agent]\nstate_dir = "esc\\\\aped"\n',
        '[agent]\n"state_dir" = "quoted key"\n',
        '[agent]\nstate_dir = """multi"""\n',
    ],
)
def test_the_config_is_read_as_tomllib_reads_it_with_or_without_tomllib(tmp_path, text):
    import tomllib

    path = tmp_path / "config.toml"
    path.write_text(text)
    raw = tomllib.loads(text)
    agent, mail = raw.get("agent", {}), raw.get("mail", {})
    state_dir, domain, hostname = sendmail.read_config(str(path))
    assert state_dir == os.path.join(str(tmp_path), agent.get("state_dir", "var"))
    assert hostname == agent.get("hostname", os.uname().nodename)
    assert domain == (mail["from"].rpartition("@")[2].strip(" >") if "from" in mail else hostname)


@pytest.mark.parametrize("state_dir", ["var", "../shared/./var", "~/alertmail", "/srv/alertmail"])
@pytest.mark.parametrize("relative", [False, True])
def test_the_state_folder_is_the_agent_s_and_reads_plainly_however_the_config_path_is_written(
    tmp_path, monkeypatch, state_dir, relative
):
    (tmp_path / "etc").mkdir()
    config = tmp_path / "etc" / "config.toml"
    config.write_text(f'[agent]\nstate_dir = "{state_dir}"\n')
    monkeypatch.chdir(tmp_path)
    path = "etc/../etc/config.toml" if relative else str(config)
    expected = os.path.normpath(os.path.join(tmp_path / "etc", os.path.expanduser(state_dir)))
    assert sendmail.read_config(path)[0] == expected


def test_the_exit_codes_are_alertmail_s_own():
    assert sendmail.EX_USAGE == ExitCode.USAGE
    assert sendmail.EX_CANTCREAT == ExitCode.CANTCREAT
    assert sendmail.EX_TEMPFAIL == ExitCode.TEMPFAIL
    assert sendmail.EX_CONFIG == ExitCode.CONFIG


def test_a_message_without_recipients_is_refused_with_64_and_nothing_is_queued(shared_dir):
    config = write_config(shared_dir, None)
    done = submit(config, ["-t", "-i"], b"Subject: nobody\n\nno To, no Cc\n")
    assert done.returncode == 64, done.stderr
    assert b"no recipients" in done.stderr
    maildrop = shared_dir / "var" / "maildrop"
    assert not maildrop.exists() or not [p for p in maildrop.iterdir() if p.name != ".wake"]


def test_historic_options_are_accepted_and_an_unknown_one_is_refused_with_64(shared_dir):
    config = write_config(shared_dir, None)
    (shared_dir / "var" / "maildrop").mkdir(parents=True)
    done = submit(config, ["-odi", "-oem", "-v", "-B8BITMIME", "-N", "never", "-i", "root"], b"Subject: s\n\nb\n")
    assert done.returncode == 0, done.stderr
    done = submit(config, ["-Y", "root"], b"Subject: s\n\nb\n")
    assert done.returncode == 64 and b"unknown option -Y" in done.stderr


def test_bp_lists_the_queue_as_queue_list_does(shared_dir):
    config = write_config(shared_dir, None)
    (shared_dir / "var").mkdir()
    done = submit(config, ["-bp"], b"")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == b"the queue is empty"


def test_without_a_config_sendmail_exits_78_and_names_the_file(shared_dir):
    done = submit(shared_dir / "missing.toml", ["root"], b"Subject: s\n\nb\n")
    assert done.returncode == 78
    assert b"missing.toml: file not found" in done.stderr


# -- through the agent to smtp-sink -------------------------------------------------


@pytest.mark.peers
def test_a_running_agent_is_woken_by_a_submission_and_sends_it_through_the_route(shared_dir, sink):
    config = write_config(shared_dir, sink)
    agent = start_agent(config)
    try:
        wake_ready(config, agent)
        message = b"To: ops@example.test\nBcc: audit@example.test\nSubject: disk report\n\nall fine\n"
        done = submit(config, ["-t", "-i"], message)
        assert done.returncode == 0, done.stderr
        received = wait_messages(sink, 1, agent)
    finally:
        log = stop_agent(agent)
    mail = received[0]
    assert sorted(mail.recipients) == ["audit@example.test", "ops@example.test"], log
    assert mail.message["Subject"] == "disk report"
    assert mail.message["Bcc"] is None
    assert mail.message["Message-ID"] and mail.message["Date"] and mail.message["From"]
    assert f"from userid {os.getuid()}" in " ".join(map(str, mail.message.get_all("Received")))


@pytest.mark.peers
def test_a_submission_made_while_no_agent_runs_is_durable_and_sent_when_one_starts(shared_dir, sink):
    config = write_config(shared_dir, sink)
    (shared_dir / "var").mkdir()  # the state folder as installed; its maildrop does not exist yet
    done = submit(config, ["-i", "ops@example.test"], b"Subject: while down\n\nqueued before the agent\n")
    assert done.returncode == 0, done.stderr
    maildrop = shared_dir / "var" / "maildrop"
    assert len([p for p in maildrop.iterdir() if not p.name.startswith(".")]) == 1
    agent = start_agent(config)
    try:
        received = wait_messages(sink, 1, agent)
    finally:
        stop_agent(agent)
    assert received[0].message["Subject"] == "while down"
    assert not [p for p in maildrop.iterdir() if not p.name.startswith(".")]


# -- other users ----------------------------------------------------------------------


@pytest.fixture
def two_users() -> Iterator[tuple[str, str]]:
    """Two throwaway unprivileged users (root only: useradd)."""
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("needs root and useradd to make unprivileged users")
    names = [f"amtest{os.getpid() % 10000}{tag}" for tag in "ab"]
    for name in names:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield names[0], names[1]
    finally:
        for name in names:
            subprocess.run(["userdel", name], check=False)


def as_user(name: str):
    entry = pwd.getpwnam(name)

    def demote() -> None:
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)

    return demote


@pytest.mark.peers
def test_an_unprivileged_user_can_submit_but_not_list_read_or_remove_another_user_s_mail(shared_dir, sink, two_users):
    from alertmail.plugins.maildrop import prepare_folder

    alice, mallory = two_users
    # The wrapper /usr/sbin/sendmail runs: the standard library alone, in a Python every user may run.
    python = system_python()
    config = write_config(shared_dir, sink)
    command = [str(make_wrapper(shared_dir, python, str(config)))]
    maildrop = shared_dir / "var" / "maildrop"
    os.chmod(maildrop.parent.parent, 0o755)
    prepare_folder(maildrop)
    os.chmod(maildrop.parent, 0o755)
    done = submit(
        config, ["-i", "ops@example.test"], b"Subject: alice's secret\n\nfor ops only\n", command, preexec_fn=as_user(alice)
    )
    assert done.returncode == 0, done.stderr
    (dropped,) = [p for p in maildrop.iterdir() if not p.name.startswith(".")]
    st = dropped.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pwd.getpwnam(alice).pw_uid, 0o640)
    probe = (
        "import os, sys\n"
        "folder, name = sys.argv[1], sys.argv[2]\n"
        "for what, act in (('list', lambda: os.listdir(folder)), ('read', lambda: open(os.path.join(folder, name)).read()),"
        " ('remove', lambda: os.unlink(os.path.join(folder, name))), ('rename', lambda: os.rename(os.path.join(folder, name),"
        " os.path.join(folder, 'mine')))):\n"
        "    try:\n        act()\n        print(what, 'allowed')\n    except PermissionError:\n        print(what, 'refused')\n"
    )
    tried = subprocess.run(
        [python, "-c", probe, str(maildrop), dropped.name],
        capture_output=True,
        text=True,
        preexec_fn=as_user(mallory),
        timeout=30,
    )
    assert tried.stdout.split("\n")[:4] == ["list refused", "read refused", "remove refused", "rename refused"], tried.stderr
    # Mallory may submit too, and the agent sends both with who submitted them.
    done = submit(config, ["-i", "ops@example.test"], b"Subject: mallory\n\nhi\n", command, preexec_fn=as_user(mallory))
    assert done.returncode == 0, done.stderr
    agent = start_agent(config)
    try:
        received = wait_messages(sink, 2, agent)
    finally:
        stop_agent(agent)
    traces = sorted(" ".join(map(str, m.message.get_all("Received"))).split("from userid ")[1].split(")")[0] for m in received)
    assert traces == sorted(str(pwd.getpwnam(u).pw_uid) for u in (alice, mallory))


def make_wrapper(folder: Path, python: str, config: str | None) -> Path:
    path = folder / "sendmail"
    path.write_text(sendmail.wrapper(python, str(Path(sendmail.__file__).resolve()), config))
    path.chmod(0o755)
    return path


def test_the_wrapper_runs_from_a_python_path_with_a_space_for_a_config_path_with_quotes(shared_dir):
    """The interpreter line cannot hold a space: the wrapper goes through /bin/sh then, and still submits."""
    (shared_dir / "my python").mkdir()
    python = shared_dir / "my python" / "python3"
    python.symlink_to(sys.executable)
    config = write_config(shared_dir, None).rename(shared_dir / 'alert\'s "mail".toml')
    (shared_dir / "var").mkdir()
    command = [str(make_wrapper(shared_dir, str(python), str(config)))]
    done = subprocess.run([*command, "-i", "ops@example.test"], input=b"Subject: s\n\nb\n", capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len([p for p in (shared_dir / "var" / "maildrop").iterdir() if not p.name.startswith(".")]) == 1
    # Output written just before the process ends (without the interpreter's clean-up) is not lost in a pipe.
    done = subprocess.run([*command, "-h"], capture_output=True, timeout=60)
    assert (done.returncode, done.stdout.split(b"\n")[0][:26]) == (0, b"usage: alertmail sendmail ")
    done = subprocess.run([*command, "-t"], input=b"Subject: s\n\nb\n", capture_output=True, timeout=60)
    assert done.returncode == 64 and b"no recipients" in done.stderr


@pytest.mark.peers
@pytest.mark.parametrize("sign", [True, False])
def test_mail_submitted_through_sendmail_leaves_signed_with_the_mail_dkim_keys_and_verifies(shared_dir, sink, sign):
    """Signed as the agent's own mail is ([mail.dkim]), unless ``[sendmail] dkim = false``."""
    import dkim

    from alertmail.delivery.dkim import generate_rsa, txt_value

    private, public = generate_rsa(2048)
    key = shared_dir / "sel.key"
    key.write_bytes(private)
    key.chmod(0o600)
    dkim_section = (
        "" if sign else "dkim = false\n"
    ) + f'[mail.dkim]\ndomain = "example.test"\nselector = "sel"\nkey_file = "{key}"\n'
    config = write_config(shared_dir, sink, dkim_section)
    (shared_dir / "var").mkdir()
    wrapper = make_wrapper(shared_dir, sys.executable, str(config))
    agent = start_agent(config)
    try:
        wake_ready(config, agent)
        message = b"From: backup@example.test\nTo: ops@example.test\nSubject: nightly backup\n\nall 42 volumes copied\n"
        done = submit(config, ["-t", "-i"], message, command=[str(wrapper)])
        assert done.returncode == 0, done.stderr
        wait_messages(sink, 1, agent)
    finally:
        log = stop_agent(agent)
    [dump] = sink.dumps()
    # smtp-sink's dump: its own X-* envelope fields first, then the message as it was sent.
    lines = dump.replace(b"\r\n", b"\n").split(b"\n")
    while lines[0].startswith((b"X-Client-", b"X-Helo-", b"X-Mail-Args", b"X-Rcpt-Args")):
        lines.pop(0)
    sent = b"\r\n".join(lines)
    assert sent.count(b"DKIM-Signature:") == int(sign), log
    if not sign:
        return
    record = txt_value("rsa", public).encode()

    def dns(name: bytes, timeout: int = 5) -> bytes | None:
        return record if name.rstrip(b".") == b"sel._domainkey.example.test" else None

    assert dkim.verify(sent, dnsfunc=dns), sent.decode(errors="replace")


@pytest.mark.peers
def test_bv_says_how_each_recipient_s_mail_would_leave_and_whether_an_agent_runs_without_sending(shared_dir, sink):
    from alertmail.queue.spool import Queue

    config = write_config(shared_dir, sink)
    (shared_dir / "var").mkdir()
    wrapper = [str(make_wrapper(shared_dir, sys.executable, str(config)))]
    way = f"deliverable: queued, then through smtp ({sink.address})"
    done = subprocess.run([*wrapper, "-bv", "root", "ops@"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 64, done.stderr
    assert done.stdout.splitlines() == [
        f"root@example.test... {way}",
        "ops@... not a mail address",
        f"No agent is running: submitted mail waits in {shared_dir}/var/maildrop until one starts.",
    ]
    agent = start_agent(config)
    try:
        wake_ready(config, agent)
        message = "To: Ops <ops@example.test>\nBcc: audit@example.test\nSubject: s\n\nb\n"
        done = subprocess.run([*wrapper, "-bv", "-t"], input=message, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    finally:
        stop_agent(agent)
    assert done.stdout.splitlines() == [
        f"ops@example.test... {way}",
        f"audit@example.test... {way}",
        "The agent is running: it takes submitted mail at once.",
    ]
    # Submitted mail is always in one of these three places: in none of them, nothing was submitted.
    assert sink.messages() == []
    assert [p.name for p in (shared_dir / "var" / "maildrop").iterdir() if not p.name.startswith(".")] == []
    queue = Queue(shared_dir / "var" / "queue")
    queue.load()
    assert list(queue.entries()) == []


@pytest.mark.peers
def test_q_has_the_running_agent_retry_the_queue_now(shared_dir):
    from alertmail.queue.spool import Queue
    from tests.peers import free_port

    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="alertmail-sink-", dir="/var/tmp"))
    down = SmtpSink(folder / "sink", port=port)  # not started: the first attempt fails
    config = write_config(shared_dir, down)
    wrapper = [str(make_wrapper(shared_dir, sys.executable, str(config)))]
    agent = start_agent(config)
    try:
        wake_ready(config, agent)
        done = subprocess.run([*wrapper, "-i", "ops@example.test"], input=b"Subject: retried\n\nb\n", timeout=60)
        assert done.returncode == 0
        queue = Queue(shared_dir / "var" / "queue")
        deadline = time.monotonic() + 60
        while not (queue.load() or [e for e in queue.entries() if e.attempts]):
            assert time.monotonic() < deadline, stop_agent(agent)
            time.sleep(0.2)
        with down:
            done = subprocess.run([*wrapper, "-q"], capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stdout + done.stderr
            assert ": delivered" in done.stdout, done.stdout
            [mail] = down.messages()
    finally:
        stop_agent(agent)
        shutil.rmtree(folder, ignore_errors=True)
    assert mail.message["Subject"] == "retried"


def test_init_sendmail_says_how_to_install_it_as_usr_sbin_sendmail_and_what_it_replaces(shared_dir):
    config = write_config(shared_dir, None)
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "init", "--sendmail", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "ln -s /usr/local/sbin/alertmail-sendmail /usr/sbin/sendmail" in done.stdout
    module = Path(sendmail.__file__).resolve()
    assert (
        f"'#!{sys.executable} -IS' 'import sys' 'sys.path.append(\"{module.parent}\")' 'from sendmail import run'" in done.stdout
    )
    assert f"'run(\"{config}\")' > /usr/local/sbin/alertmail-sendmail" in done.stdout
    assert f"-I -m py_compile {module}" in done.stdout
    assert "update-alternatives --install /usr/sbin/sendmail mta" in done.stdout
    assert f"install -d -o alertmail -g alertmail -m 3733 {shared_dir.resolve()}/var/maildrop" in done.stdout
    if os.path.lexists("/usr/sbin/sendmail"):
        assert f"It replaces /usr/sbin/sendmail, now {os.path.realpath('/usr/sbin/sendmail')}" in done.stdout


def test_a_plainly_written_config_is_read_without_importing_tomllib():
    text = (Path(__file__).resolve().parent.parent / "config.toml").read_text()
    assert sendmail.plain_values(text) is not None
    assert sendmail.plain_values('agent = { state_dir = "x" }\n') is None


@pytest.mark.peers
def test_bs_speaks_smtp_on_stdin_to_swaks_and_the_agent_sends_what_it_took(shared_dir, sink):
    from tests.peers import swaks

    config = write_config(shared_dir, sink)
    (shared_dir / "var").mkdir()
    pipe = f"{sys.executable} -m alertmail sendmail -bs -C {config}"
    done = swaks(
        "--pipe",
        pipe,
        "--from",
        "backup@example.test",
        "--to",
        "ops@example.test,dba@example.test",
        "--header",
        "Subject: over -bs",
        "--body",
        ".leading dot\nline two",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "250 2.0.0 queued" in done.stdout
    agent = start_agent(config)
    try:
        [mail] = wait_messages(sink, 1, agent)
    finally:
        stop_agent(agent)
    assert sorted(mail.recipients) == ["dba@example.test", "ops@example.test"]
    assert mail.message["Subject"] == "over -bs"
    assert ".leading dot" in mail.message.get_content()


def test_a_scan_interval_of_zero_is_a_config_error_naming_the_key(shared_dir):
    config = write_config(shared_dir, None).read_text().replace('scan_interval = "1h"', "scan_interval = 0")
    (shared_dir / "config.toml").write_text(config)
    done = subprocess.run(
        [sys.executable, "-m", "alertmail", "check", "--config", str(shared_dir / "config.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 78, done.stderr
    assert "sendmail.scan_interval: must be more than 0" in done.stderr
