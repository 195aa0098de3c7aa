"""Durable file writes (temp file, fsync, rename into place, fsync the folder) and file locks.

The lock is ``flock`` where there is ``fcntl`` (every Unix); it is imported when a lock is
taken, so what never locks (``alertmail check``, ``probe``, ``replay``) runs without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path


def lock(fd: int, *, wait: bool = True) -> bool:
    """Lock the open file ``fd`` for this process; False when ``wait`` is off and another holds it."""
    try:
        import fcntl
    except ImportError:
        raise OSError("file locking needs fcntl; alertmail runs its queue on Unix only") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def fsync_dir(folder: Path | str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(
    path: Path | str,
    data: bytes | Iterable[bytes],
    *,
    mode: int = 0o640,
    sync: bool = True,
    sync_folder: bool = True,
    fsynced: Callable[[], None] | None = None,
) -> Path:
    """Write ``data`` (bytes, or pieces of them, for what should not sit in memory whole) to ``path``
    so a reader sees the whole file or none of it.

    The temp name starts with a dot, so folder watchers skip it. With ``sync`` the
    data (and, with ``sync_folder``, the rename) are on disk when this returns;
    ``fsynced`` is called after each fsync (the queue counts them). On failure
    nothing is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            for piece in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            if sync:
                os.fsync(fd)
                if fsynced is not None:
                    fsynced()
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync and sync_folder:
        fsync_dir(path.parent)
        if fsynced is not None:
            fsynced()
    return path
