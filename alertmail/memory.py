"""Handing freed memory back to the system, so an idle agent stays small.

Start-up reads the config, scans the installed distributions for plugins and imports
what it needs; the garbage it leaves sits in the C heap as free blocks the kernel still
counts in the agent's RSS until glibc is asked to return them (``malloc_trim``). Elsewhere
(musl, macOS) there is no such call and this does nothing.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

_trim: Callable[[int], int] | None = None


def _glibc() -> bool:
    try:
        return os.confstr("CS_GNU_LIBC_VERSION") is not None  # type: ignore[attr-defined,unused-ignore]
    except (AttributeError, ValueError, OSError):  # not a glibc system
        return False


if _glibc():
    # ctypes only here: its import costs the idle agent a third of a megabyte elsewhere for nothing.
    # Not ctypes.util.find_library: the symbol is already in the process, and that module costs more.
    import ctypes

    try:
        _trim = ctypes.CDLL(None).malloc_trim
        _trim.argtypes = (ctypes.c_size_t,)
        _trim.restype = ctypes.c_int
    except (OSError, AttributeError):  # a libc without malloc_trim
        _trim = None


def release_free_memory() -> bool:
    """Collect cycles and give the C heap's free pages back; False where the platform cannot."""
    gc.collect()
    if _trim is None:
        return False
    return bool(_trim(0))
