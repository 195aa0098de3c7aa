"""Message data as a session receives it: in memory up to a small bound, then in a file.

A session in DATA holds at most ``MEMORY_BOUND`` bytes of its message in memory; the
rest goes to an unnamed file in ``state_dir/relay-data`` (on Linux ``O_TMPFILE``: no
name, nothing left behind by a crash), so 300 clients each sending most of a 10 MB
message and then nothing more cost the relay 300 × 64 KB of memory, not 3 GB. Only
when the message is complete is it read back for the queue, and at most
``LOADING_AT_ONCE`` such messages per receiving process are in memory at once: the
others wait for their turn, so the memory of finishing messages is bounded as well.

Imported only when the relay starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import tempfile
import weakref
from pathlib import Path
from typing import IO

# Bytes of a message kept in memory per session; beyond them the data goes to a file.
MEMORY_BOUND = 64 * 1024
# Messages larger than MEMORY_BOUND read back into memory at once, per process, for the queue.
LOADING_AT_ONCE = 2
# The folder under state_dir for the files.
FOLDER = "relay-data"

_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


class MessageData:
    """The raw data of one message (dot-stuffed, as received), in memory up to ``memory`` bytes, then in a file."""

    def __init__(self, folder: Path | None = None, *, memory: int = MEMORY_BOUND) -> None:
        self.folder = folder  # where the file goes (state_dir/relay-data); None: the system's temporary folder
        self.memory = memory
        self.size = 0
        self.error: OSError | None = None  # the file could not be written (a full disk): the data is lost
        self._buffer = bytearray()
        self._file: IO[bytes] | None = None

    @property
    def in_memory(self) -> int:
        """Bytes of the message held in memory now."""
        return len(self._buffer)

    @property
    def spilled(self) -> bool:
        return self._file is not None

    def write(self, part: bytes) -> None:
        self.size += len(part)
        if self.error is not None:
            return
        if len(self._buffer) + len(part) <= self.memory:
            self._buffer += part
            return
        try:
            if self._file is None:
                self._file = self._open()
            _write_all(self._file, self._buffer)
            _write_all(self._file, part)
        except OSError as exc:
            self.error = exc
            self.close()
        self._buffer = bytearray()

    def _open(self) -> IO[bytes]:
        folder = self.folder
        if folder is not None:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return tempfile.TemporaryFile(dir=folder, buffering=0)

    def raw(self) -> bytes:
        """Everything written, from the file and from memory (blocking: the file is read)."""
        if self._file is None:
            return bytes(self._buffer)
        self._file.seek(0)
        return self._file.read() + self._buffer

    def close(self) -> None:
        """Drop the data; the file, unnamed, goes with its descriptor."""
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self._buffer = bytearray()

    def loaded(self) -> Loaded:
        """``async with data.loaded() as content``: the message dot-unstuffed, without its final ``.<CRLF>``.

        A message that went to a file waits for one of ``LOADING_AT_ONCE`` places first and
        keeps it until the block ends (the queue has made it durable by then).
        """
        return Loaded(self)


class Loaded:
    """The context of ``MessageData.loaded()`` (a class: it runs for every message, a generator costs more)."""

    __slots__ = ("data", "gate")

    def __init__(self, data: MessageData) -> None:
        self.data = data
        self.gate: asyncio.Semaphore | None = None

    async def __aenter__(self) -> bytes:
        data = self.data
        if not data.spilled:
            return unstuff(bytes(data._buffer))
        loop = asyncio.get_running_loop()
        gate = _gates.get(loop)
        if gate is None:
            gate = _gates[loop] = asyncio.Semaphore(LOADING_AT_ONCE)
        await gate.acquire()
        self.gate = gate
        try:
            return unstuff(await asyncio.to_thread(data.raw))
        except BaseException:
            self.gate = None
            gate.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        if self.gate is not None:
            self.gate.release()
            self.gate = None


def _write_all(file: IO[bytes], data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(errno.EIO, "the file took no data")
        view = view[written:]


def unstuff(raw: bytes) -> bytes:
    """Message data as received up to and including ``.<CRLF>``, without it and with each line's leading dot undoubled."""
    # Transparency (RFC 5321 section 4.5.2): a line's leading dot was doubled by the client.
    return (b"\r\n" + raw[:-3]).replace(b"\r\n.", b"\r\n")[2:]


async def read_data(reader: asyncio.StreamReader, limit: int, folder: Path | None) -> tuple[MessageData | None, int]:
    """The data up to <CRLF>.<CRLF> and the bytes read; None when over ``limit`` (0: no limit).

    Read up to each ".<CRLF>" and the two bytes before it checked, so a message takes a
    few reads rather than one per line; past ``limit`` the rest is read and dropped. What
    passes the memory bound goes to a file in ``folder``.
    """
    data: MessageData | None = MessageData(folder)
    size = 0
    before = b"\r\n"  # the two bytes before the next part: at first, the end of the DATA line
    try:
        while True:
            try:
                part = await reader.readuntil(b".\r\n")
                ended = (before + part)[-5:] == b"\r\n.\r\n"
            except asyncio.LimitOverrunError as exc:  # no ".<CRLF>" within the reader's limit yet
                part = await reader.readexactly(exc.consumed)
                ended = False
            size += len(part)
            if data is not None:
                if limit and size > limit + 3:
                    data.close()
                    data = None  # keep reading to the end, keep nothing
                else:
                    data.write(part)
            if ended:
                return data, size
            before = (before + part)[-2:]
    except BaseException:
        if data is not None:
            data.close()
        raise
