"""Process exit codes (sysexits.h)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 64
    NOINPUT = 66  # no such queue or badmail message
    UNAVAILABLE = 69  # a permanent delivery failure (send-test); no agent to ask (status)
    CANTCREAT = 73  # an output file that cannot be made (dkim keygen)
    TEMPFAIL = 75
    CONFIG = 78


# The one table, shown by `alertmail --help` and in the README.
EXIT_CODE_MEANINGS = {
    ExitCode.OK: "ok",
    ExitCode.USAGE: "usage: an unknown command or option, a bad argument",
    ExitCode.NOINPUT: "no such message in the queue or in badmail",
    ExitCode.UNAVAILABLE: "send-test: a recipient was refused for good; status: no agent runs",
    ExitCode.CANTCREAT: "dkim keygen: the key file exists already or cannot be written",
    ExitCode.TEMPFAIL: "temporary failure: try again (a server down, the queue in use)",
    ExitCode.CONFIG: "configuration error: every problem is printed with file, key path and fix",
}
