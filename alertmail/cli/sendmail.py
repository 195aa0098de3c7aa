"""``alertmail sendmail``: the host's ``/usr/sbin/sendmail``, as cron, mail(1) and mdadm call it.

It reads a message on standard input, completes it (Date, Message-ID, From), and leaves it
in ``state_dir/maildrop`` for the agent, durable (fsynced, renamed into place) before it
exits 0, whether an agent runs or not; a byte in ``maildrop/.wake`` tells a running agent
to take it at once (see ``alertmail.plugins.maildrop`` for the folder's modes and why any
user may submit but none may read another's mail).

Every submission starts a process, so this module imports nothing from alertmail and
little from the standard library: no click, no email package, no config validation, not
even ``os`` (``posix`` is what it wraps, already loaded; ``os`` costs another millisecond).
The wrapper ``alertmail init --sendmail`` installs imports it (its bytecode cached) and
calls ``run``, which ends the process without the interpreter's clean-up.

Exit codes (sysexits.h): 0 submitted; 64 a bad option, no recipients or a malformed
address; 73 the maildrop cannot be written (missing, or not writable by this user);
75 a temporary failure (disk full, an I/O error); 78 the config cannot be read.
"""

import posix
import sys
import time

EX_OK = 0
EX_USAGE = 64
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

DEFAULT_CONFIG = "/etc/alertmail/config.toml"
USAGE = """\
usage: alertmail sendmail [-t] [-i] [-f sender] [-F name] [-bm|-bs|-bp|-bv|-q] [-C config] [--] [recipient ...]

  -t          recipients from To, Cc and Bcc (added to those named); Bcc is removed
  -i, -oi     a line holding only "." does not end the message
  -f, -r ADDR envelope sender (and From when the message has none)
  -F NAME     full name for a From header that sendmail adds
  -bm         submit a message (the default); -bs SMTP on standard input; -bp lists the queue
  -bv         say what would happen to each recipient, without sending anything
  -q          retry every queued message now (alertmail queue retry --all)
  -C FILE     the alertmail config (default: $ALERTMAIL_CONFIG, else /etc/alertmail/config.toml)
  -odi -odb -oem -v -B TYPE -N DSN -R RET -V ID -L TAG -n -U -x ...: accepted, without effect

Exit codes: 0 submitted, 64 usage or no recipients, 73 maildrop not writable,
75 temporary failure, 78 config unreadable.
"""
# Options that take a value (glued, -fADDR, or as the next word); historic ones are ignored.
WITH_VALUE = set("fFrCBNRVLXOhd")
WITHOUT_VALUE = set("tivnUxGmeIs")
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Refused(Exception):
    """Submission refused: the message says why, ``code`` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class Options:
    def __init__(self) -> None:
        self.mode = "m"
        self.from_headers = False
        self.ignore_dots = False
        self.sender: str | None = None
        self.full_name: str | None = None
        self.config: str | None = None
        self.recipients: list[str] = []


# The declared defaults of [agent] state_dir and [mail] route (alertmail.config.core), written
# here because the wrapper runs this file without the package (python -I -S); a test holds them equal.
DEFAULT_STATE_DIR = "var"
DEFAULT_ROUTE = ("pickup",)


def parse_args(argv: list[str]) -> Options:
    """sendmail(8)'s options as programs pass them; Refused(64) for anything else."""
    opts = Options()
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--":
            opts.recipients += args
            break
        if not arg.startswith("-") or arg == "-":
            opts.recipients.append(arg)
            continue
        if arg in ("-h", "--help"):
            raise Refused(USAGE, EX_OK)
        flag, glued = arg[1], arg[2:]
        if flag == "b":
            if glued not in ("m", "p", "i", "s", "v"):
                raise Refused(f"sendmail: -b{glued} is not supported (only -bm, -bs, -bp, -bv and -bi)", EX_USAGE)
            opts.mode = glued
        elif flag == "q":
            if glued:
                raise Refused(
                    f"sendmail: -q{glued} is not supported: the agent retries on its own schedule; -q alone retries now",
                    EX_USAGE,
                )
            opts.mode = "q"
        elif flag == "o":
            if glued == "i":
                opts.ignore_dots = True
            # -odb, -odi, -oem, -oQ..., -om: the agent decides how and when mail is delivered.
        elif flag in WITH_VALUE:
            if not glued:
                if not args:
                    raise Refused(f"sendmail: option -{flag} needs a value\n{USAGE}", EX_USAGE)
                glued = args.pop(0)
            if flag in "fr":
                opts.sender = glued
            elif flag == "F":
                opts.full_name = glued
            elif flag == "C":
                opts.config = glued
        elif all(c in WITHOUT_VALUE for c in arg[1:]):
            opts.from_headers |= "t" in arg
            opts.ignore_dots |= "i" in arg
        else:
            raise Refused(f"sendmail: unknown option {arg}\n{USAGE}", EX_USAGE)
    return opts


WANTED = {("agent", "state_dir"), ("agent", "hostname"), ("mail", "from")}


def plain_values(text: str) -> dict[str, dict[str, str]] | None:
    """The WANTED keys of a config written plainly (``[table]`` then ``key = "string"``); None for anything
    less plain near them (inline tables, dotted keys, escapes, multi-line strings): then tomllib reads it.

    Importing tomllib (with re, typing, datetime) costs more than the rest of a submission.
    """
    if '"""' in text or "'''" in text:
        return None
    table: str | None = ""
    out: dict[str, dict[str, str]] = {"agent": {}, "mail": {}}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name = line.split("]", 1)[0].lstrip("[").strip()
            table = name if not line.startswith("[[") else None
            continue
        key, eq, value = line.partition("=")
        key = key.strip()
        if not eq or key[:1] in ("'", '"'):
            return None
        if table == "" and key.split(".", 1)[0].strip().strip("\"'") in ("agent", "mail"):
            return None  # agent = {...} or agent.state_dir = ...
        if table in ("agent", "mail") and (table, key) in WANTED:
            value = value.strip()
            quote = value[:1]
            end = value.find(quote, 1) if quote in ("'", '"') else -1
            if end < 0 or (quote == '"' and "\\" in value[:end]):
                return None
            rest = value[end + 1 :].strip()
            if rest and not rest.startswith("#"):
                return None
            out[table][key] = value[1:end]
    return out


def read_config(path: str) -> tuple[str, str, str]:
    """The state folder, the mail domain and the host name from the config file (only these keys)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        raw: dict = plain_values(data.decode("utf-8")) or {}
        if not raw:
            import tomllib

            raw = tomllib.loads(data.decode("utf-8"))
    except FileNotFoundError:
        raise Refused(f"sendmail: {path}: file not found; set ALERTMAIL_CONFIG or pass -C FILE", EX_CONFIG) from None
    except PermissionError:
        raise Refused(
            f"sendmail: {path}: not readable by this user; make it readable to all (it holds no secrets)", EX_CONFIG
        ) from None
    except (OSError, ValueError) as exc:
        raise Refused(f"sendmail: {path}: {exc}; check it with: alertmail check --config {path}", EX_CONFIG) from None
    agent = raw.get("agent")
    mail = raw.get("mail")
    agent = agent if isinstance(agent, dict) else {}
    mail = mail if isinstance(mail, dict) else {}
    state_dir = str(agent.get("state_dir") or DEFAULT_STATE_DIR)
    if state_dir.startswith("~"):  # rare: only then is os (a millisecond) worth importing
        import os

        state_dir = os.path.expanduser(state_dir)
    if not state_dir.startswith("/"):
        state_dir = _join(_dirname(path if path.startswith("/") else _join(posix.getcwd(), path)), state_dir)
    if "/." in state_dir:
        import os

        state_dir = os.path.normpath(state_dir)
    hostname = str(agent.get("hostname") or posix.uname().nodename)
    sender = str(mail.get("from") or "")
    domain = sender.rpartition("@")[2].strip(" >") if "@" in sender else hostname
    return state_dir, domain, hostname


def _environ(name: str) -> str | None:
    value = posix.environ.get(name.encode())  # posix.environ: bytes, as the kernel gave them
    return value.decode(sys.getfilesystemencoding(), "surrogateescape") if value else None


def _join(folder: str, name: str) -> str:
    return folder + name if folder.endswith("/") else f"{folder}/{name}"


def _dirname(path: str) -> str:
    """``os.path.dirname`` of an absolute path."""
    head = path[: path.rfind("/") + 1]
    return head.rstrip("/") or "/"


# -- the message ---------------------------------------------------------------


def read_message(stream, ignore_dots: bool) -> bytes:
    data = stream.read()
    if not ignore_dots:
        # Without -i a line holding only "." ends the message, as in sendmail(8).
        for end in (b"\n.\n", b"\n.\r\n"):
            cut = data.find(end)
            if cut >= 0:
                data = data[: cut + 1]
        if data.startswith((b".\n", b".\r\n")) or data == b".":
            data = b""
        elif data.endswith(b"\n."):
            data = data[:-1]
    return data


def split_head(data: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (unfolded lines kept as they are, without line ends) and the body."""
    fields: list[bytes] = []
    pos = 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        line = data[pos:] if end < 0 else data[pos:end]
        line = line.rstrip(b"\r")
        nxt = len(data) if end < 0 else end + 1
        if not line:
            return fields, data[nxt:]
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        elif _is_field(line):
            fields.append(line)
        else:
            break  # not a header: what is left is all body
        pos = nxt
    return fields, data[pos:]


def _is_field(line: bytes) -> bool:
    name, colon, _ = line.partition(b":")
    return bool(colon and name) and all(33 <= c <= 126 for c in name.rstrip(b" \t"))


def field_name(field: bytes) -> str:
    return field.partition(b":")[0].strip().decode("ascii", "replace").lower()


def addresses(value: str) -> list[str]:
    """The addr-specs of an address-list header value (names, comments and groups skipped)."""
    out: list[str] = []
    part: list[str] = []
    quoted = False
    depth = 0
    angle: list[str] | None = None
    escaped = False
    for ch in value + ",":
        if escaped:
            escaped = False
            (angle if angle is not None else part).append(ch)
            continue
        if ch == "\\":
            escaped = True
            continue
        if quoted:
            quoted = ch != '"'
            (angle if angle is not None else part).append(ch)
            continue
        if depth:
            depth += ch == "("
            depth -= ch == ")"
            continue
        if ch == '"':
            quoted = True
            (angle if angle is not None else part).append(ch)
        elif ch == "(":
            depth = 1
        elif ch == "<":
            angle = []
        elif ch == ">" and angle is not None:
            part = angle
            angle = None
            part.insert(0, "\0")  # an angle address: the name before it is dropped
        elif angle is not None:
            angle.append(ch)
        elif ch == ":":
            part = []  # a group's name
        elif ch in ",;":
            text = "".join(part)
            if text.startswith("\0"):
                text = text[1:]
            text = text.strip()
            if text:
                out.append(text)
            part = []
        elif part[:1] == ["\0"]:
            continue  # text after an angle address
        else:
            part.append(ch)
    return ["".join(a.split()) for a in out]


def qualified(address: str, domain: str) -> str:
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1]
    if address and "@" not in address:
        address = f"{address}@{domain}"
    return address


def valid(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(c in address for c in " \t\r\n<>,;()\\")


def rfc5322_date(now: float) -> str:
    t = time.localtime(now)
    offset = t.tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} {sign}{hours:02d}{minutes:02d}"
    )


def display_name(name: str) -> str:
    """A phrase for From: an RFC 2047 word for non-ASCII, a quoted string when it has specials."""
    name = "".join(c for c in name if c >= " " and c != "\x7f")
    if not name.isascii():
        import base64

        return "=?utf-8?b?" + base64.b64encode(name.encode()).decode() + "?="
    if any(c in name for c in '()<>[]:;@\\,."'):
        return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return name


def login_name() -> tuple[str, str]:
    """This user's login name and full name (from the password database, not $USER)."""
    import pwd

    try:
        entry = pwd.getpwuid(posix.getuid())
    except KeyError:
        return f"uid{posix.getuid()}", ""
    return entry.pw_name, entry.pw_gecos.split(",", 1)[0]


def recipients_of(opts: Options, fields: list[bytes], names: list[str], domain: str) -> list[str]:
    """The command line's recipients, then (``-t``) those of To, Cc and Bcc; each once, qualified."""
    recipients = [qualified(r, domain) for word in opts.recipients for r in word.split(",") if r.strip()]
    if opts.from_headers:
        for field, name in zip(fields, names, strict=True):
            if name in ("to", "cc", "bcc"):
                value = field.partition(b":")[2].decode("utf-8", "replace")
                recipients += [qualified(a, domain) for a in addresses(value)]
    return list(dict.fromkeys(recipients))


def compose(opts: Options, data: bytes, domain: str, hostname: str, now: float) -> tuple[str, list[str], bytes]:
    """The envelope sender, the recipients and the completed message; Refused(64) without recipients."""
    fields, body = split_head(data)
    names = [field_name(f) for f in fields]
    user, gecos = login_name()
    if opts.sender is None:
        sender = f"{user}@{domain}"
    elif opts.sender in ("", "<>"):
        sender = ""  # the null sender: bounces of this mail go nowhere
    else:
        sender = qualified(opts.sender, domain)
    recipients = recipients_of(opts, fields, names, domain)
    if not recipients:
        raise Refused("sendmail: no recipients: name them on the command line, or use -t with To, Cc or Bcc", EX_USAGE)
    for address in (sender, *recipients):
        if address and not valid(address):
            raise Refused(f"sendmail: not a mail address: {address!r}", EX_USAGE)
    kept = [f for f, n in zip(fields, names, strict=True) if n != "bcc"]
    added = []
    if "from" not in names:
        name = opts.full_name if opts.full_name is not None else gecos
        address = sender or f"{user}@{domain}"
        added.append(f"From: {display_name(name)} <{address}>" if name else f"From: {address}")
    if "date" not in names:
        added.append(f"Date: {rfc5322_date(now)}")
    if "message-id" not in names:
        added.append(f"Message-ID: <{int(now * 1e6):x}.{posix.urandom(8).hex()}@{hostname}>")
    envelope = [f"X-Sender: <{sender}>"] + [f"X-Receiver: <{r}>" for r in recipients]
    head = "\r\n".join(envelope + added).encode() + b"\r\n"
    kept_bytes = b"".join(f + b"\r\n" for f in kept)
    return sender, recipients, head + kept_bytes + b"\r\n" + body


# -- the maildrop ----------------------------------------------------------------


def drop(folder: str, content: bytes, now: float) -> str:
    """Write ``content`` into the maildrop, durable before returning; the file's name."""
    name = f"{int(now * 1e6):x}-{posix.getpid()}-{posix.urandom(6).hex()}"
    temp = _join(folder, "." + name)
    final = _join(folder, name)
    flags = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_CLOEXEC | posix.O_NOFOLLOW
    try:
        try:
            fd = posix.open(temp, flags, 0o640)
        except FileNotFoundError:
            make_maildrop(folder)
            fd = posix.open(temp, flags, 0o640)
    except FileNotFoundError:
        raise Refused(f"sendmail: {folder} does not exist; see: alertmail init --sendmail", EX_CANTCREAT) from None
    except PermissionError:
        raise Refused(f"sendmail: {folder} is not writable by this user; see: alertmail init --sendmail", EX_CANTCREAT) from None
    except OSError as exc:
        raise Refused(f"sendmail: cannot write into {folder}: {exc.strerror}", EX_TEMPFAIL) from None
    try:
        try:
            posix.fchmod(fd, 0o640)  # whatever the umask: the agent reads it through the folder's group
            view = memoryview(content)
            while view:
                view = view[posix.write(fd, view) :]
            posix.fsync(fd)
            posix.rename(temp, final)
            _sync_entry(folder, fd)
        finally:
            posix.close(fd)
    except OSError as exc:
        try:
            posix.unlink(temp)
        except OSError:
            pass
        raise Refused(f"sendmail: cannot write into {folder}: {exc.strerror}; nothing was submitted", EX_TEMPFAIL) from None
    return name


def make_maildrop(folder: str) -> None:
    """The maildrop before any agent made it: as the agent would, owned as the state folder is."""
    posix.mkdir(folder, 0o700)
    if posix.geteuid() == 0:
        parent = posix.stat(_dirname(folder))
        posix.chown(folder, parent.st_uid, parent.st_gid)
    posix.chmod(folder, 0o3733)


def _sync_entry(folder: str, fd: int) -> None:
    """Make the rename durable: fsync the folder when this user may open it, else the file again.

    Other users may not read the maildrop (no listing), so they cannot open it to fsync it;
    on journalling file systems (ext4, XFS) fsync of a file whose inode the rename changed
    commits the rename with it.
    """
    try:
        dfd = posix.open(folder, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_CLOEXEC)
    except OSError:
        posix.fsync(fd)
        return
    try:
        posix.fsync(dfd)
    finally:
        posix.close(dfd)


def wake(folder: str) -> None:
    """Tell a running agent that there is mail (a byte in its FIFO); nothing when none runs."""
    try:
        fd = posix.open(_join(folder, ".wake"), posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC)
    except OSError:
        return  # no agent holds the FIFO open (ENXIO), or there is none yet: it scans when it starts
    try:
        posix.write(fd, b"\0")
    except OSError:
        pass  # the FIFO is full: the agent is woken already
    finally:
        posix.close(fd)


def main(argv: list[str] | None = None) -> int:
    """Run sendmail with ``argv`` (default: sys.argv[1:]); the exit code."""
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
        config = opts.config or _environ("ALERTMAIL_CONFIG") or DEFAULT_CONFIG
        if opts.mode == "i":
            return EX_OK  # newaliases: alertmail keeps no aliases
        if opts.mode in ("p", "q"):
            return queue_command(config, ["list"] if opts.mode == "p" else ["retry", "--all"])
        state_dir, domain, hostname = read_config(config)
        if opts.mode == "s":
            return smtp_session(opts, _join(state_dir, "maildrop"), domain, hostname)
        if opts.mode == "v":
            return verify(opts, config, _join(state_dir, "maildrop"), domain)
        now = time.time()
        data = read_message(sys.stdin.buffer, opts.ignore_dots)
        _, _, content = compose(opts, data, domain, hostname, now)
        folder = _join(state_dir, "maildrop")
        drop(folder, content, now)
        wake(folder)
    except Refused as exc:
        print(str(exc).rstrip("\n"), file=sys.stdout if exc.code == EX_OK else sys.stderr)
        return exc.code
    return EX_OK


def smtp_session(opts: Options, folder: str, domain: str, hostname: str) -> int:
    """``-bs``: SMTP on standard input and output, each message submitted as a ``-bm`` one would be."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer

    def reply(*lines: str) -> None:
        stdout.write(b"".join(f"{code_text}\r\n".encode() for code_text in lines))
        stdout.flush()

    def path_of(argument: str) -> str | None:
        start, end = argument.find("<"), argument.find(">")
        return argument[start + 1 : end].strip() if 0 <= start < end else None

    reply(f"220 {hostname} alertmail sendmail ESMTP")
    sender: str | None = None
    recipients: list[str] = []
    while True:
        line = stdin.readline(4096)
        if not line:
            return EX_OK
        command = line.rstrip(b"\r\n").decode("utf-8", "replace")
        verb = command[:4].upper()
        if verb == "EHLO":
            reply(f"250-{hostname}", "250-8BITMIME", "250 PIPELINING")
        elif verb == "HELO":
            reply(f"250 {hostname}")
        elif command[:10].upper() == "MAIL FROM:":
            sender = path_of(command[10:])
            recipients = []
            reply("250 2.1.0 ok" if sender is not None else "501 5.1.7 MAIL FROM:<address>")
        elif command[:8].upper() == "RCPT TO:":
            address = path_of(command[8:])
            if sender is None:
                reply("503 5.5.1 MAIL first")
            elif not address or not valid(qualified(address, domain)):
                reply("501 5.1.3 RCPT TO:<address>")
            else:
                recipients.append(address)
                reply("250 2.1.5 ok")
        elif verb == "DATA":
            if sender is None or not recipients:
                reply("503 5.5.1 RCPT first")
                continue
            reply("354 end with <CRLF>.<CRLF>")
            lines = []
            while (text := stdin.readline()) and text.rstrip(b"\r\n") != b".":
                lines.append(text[1:] if text.startswith(b".") else text)
            one = Options()
            one.sender, one.recipients, one.full_name = sender, recipients, opts.full_name
            sender, recipients = None, []
            now = time.time()
            try:
                _, _, content = compose(one, b"".join(lines), domain, hostname, now)
                drop(folder, content, now)
            except Refused as exc:
                code = "451 4.3.0" if exc.code in (EX_TEMPFAIL, EX_CANTCREAT) else "554 5.6.0"
                reply(f"{code} {' '.join(str(exc).split())}")
                continue
            wake(folder)
            reply("250 2.0.0 queued")
        elif verb == "RSET":
            sender, recipients = None, []
            reply("250 2.0.0 ok")
        elif verb == "NOOP":
            reply("250 2.0.0 ok")
        elif verb == "QUIT":
            reply("221 2.0.0 bye")
            return EX_OK
        else:
            reply("500 5.5.2 not understood")


def queue_command(config: str, args: list[str]) -> int:
    """``-bp`` (mailq) and ``-q``: ``alertmail queue list`` and ``queue retry --all``, in a Python that
    has the whole package (this one, under ``-I -S``, may not)."""
    posix.execv(sys.executable, [sys.executable, "-m", "alertmail", "queue", *args, "--config", config])
    return EX_OK  # not reached: execv replaces this process


def verify(opts: Options, config: str, folder: str, domain: str) -> int:
    """``-bv``: each recipient, and the way its mail would go; nothing is read from standard input
    without ``-t``, nothing is sent. 64 when a recipient is not a mail address."""
    fields = split_head(read_message(sys.stdin.buffer, opts.ignore_dots))[0] if opts.from_headers else []
    recipients = recipients_of(opts, fields, [field_name(f) for f in fields], domain)
    if not recipients:
        raise Refused("sendmail: no recipients: name them on the command line, or use -t with To, Cc or Bcc", EX_USAGE)
    way = route_text(config)
    code = EX_OK
    for address in recipients:
        if valid(address):
            print(f"{address}... deliverable: {way}")
        else:
            print(f"{address}... not a mail address")
            code = EX_USAGE
    try:
        posix.close(posix.open(_join(folder, ".wake"), posix.O_WRONLY | posix.O_NONBLOCK | posix.O_CLOEXEC))
        print("The agent is running: it takes submitted mail at once.")
    except OSError:  # ENXIO: nobody holds the FIFO open; ENOENT: no agent ever ran here
        print(f"No agent is running: submitted mail waits in {folder} until one starts.")
    return code


def route_text(config: str) -> str:
    """How submitted mail leaves: the queue, then ``[sendmail].route`` (else ``[mail].route``) in order."""
    import tomllib

    try:
        with open(config, "rb") as fh:
            raw = tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise Refused(f"sendmail: {config}: {exc}; check it with: alertmail check --config {config}", EX_CONFIG) from None
    sections: dict[str, dict] = {}
    for key in ("sendmail", "mail", "transports"):
        value = raw.get(key)
        sections[key] = value if isinstance(value, dict) else {}
    # Read as written, without the full check (whose folder checks refuse a user who may only submit).
    route = sections["sendmail"].get("route") or sections["mail"].get("route") or list(DEFAULT_ROUTE)
    steps = []
    for name in route:
        table = sections["transports"].get(name)
        table = table if isinstance(table, dict) else {}
        where = next((table[k] for k in ("servers", "directory", "url", "command") if table.get(k)), None)
        where = " ".join(map(str, where)) if isinstance(where, list) else where
        steps.append(f"{name} ({where})" if where else str(name))
    return "queued, then through " + ", else ".join(steps)


def run(config: str | None = None) -> None:
    """The ``alertmail-sendmail`` entry point, and the wrapper's (``config``: its ``-C``; one given later wins).

    The process ends with ``_exit``: the interpreter's clean-up (freeing every module and
    object) would take as long as the submission itself, and the file is durable already.
    """
    argv = sys.argv[1:] if config is None else ["-C", config, *sys.argv[1:]]
    code = main(argv)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # the reader went away: the exit code still says what happened
    posix._exit(code)


def wrapper(python: str, module: str, config: str | None) -> str:
    """The script ``alertmail init --sendmail`` installs as /usr/sbin/sendmail.

    ``python -I -S`` (the standard library alone, no site-packages) imports ``module`` from its
    folder, its bytecode cached, and calls ``run``: it never runs it as a script (compiled
    again for every mail), nor through /bin/sh (one exec more) unless the kernel cannot take
    ``python`` as the interpreter line (a space in it, or too long).
    """
    folder, _, name = module.rpartition("/")
    lines = [
        "import sys",
        f"sys.path.append({_literal(folder)})",
        f"from {name.removesuffix('.py')} import run",
        f"run({_literal(config)})" if config else "run()",
    ]
    if " " in python or len(python) > 120:
        quoted = "'" + python.replace("'", "'\\''") + "'"
        lines[:0] = ["#!/bin/sh", f"""'''exec' {quoted} -IS "$0" "$@\"""", "' '''"]
    else:
        lines.insert(0, f"#!{python} -IS")
    return "\n".join(lines) + "\n"


def _literal(text: str) -> str:
    """A Python string in double quotes: the wrapper's lines travel single-quoted through the shell."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


if __name__ == "__main__":
    run()
