"""Process exit codes (sysexits.h)."""

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    USAGE = 64
    TEMPFAIL = 75
    CONFIG = 78
