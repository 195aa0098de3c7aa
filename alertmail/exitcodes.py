"""Process exit codes (sysexits.h)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 64
    NOINPUT = 66  # no such queue or badmail message
    UNAVAILABLE = 69  # a permanent delivery failure (send-test)
    TEMPFAIL = 75
    CONFIG = 78
