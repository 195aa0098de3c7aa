"""The bytes of a segment: records that carry their lengths and checksums, and reading them back.

A record (since checksums)::

    %AMQ2 <meta length> <data length> <crc32 of meta, 8 hex>\\n
    <meta: the entry as one line of JSON, with "crc": the crc32 of the data>\\n
    <data: the message>

Segments written before checksums hold records of a JSON line and the message bytes
(``{"id":...,"size":N,...}\\n`` then N bytes); they are still read, with a length check
only, so a queue written before the upgrade delivers.

Reading never trusts what it cannot verify: a record whose header, lengths or checksums
do not hold is damage, and reading goes on at the next record that does verify. A
metadata line that carries a ``crc`` was written with checksums: it is never read as an
old record, whatever became of its header (an overwritten header must not turn a
checksummed record into one that is delivered unchecked). The messages lost in a damaged
stretch are named: by the id of a record whose header still reads, and by every metadata
line found in the stretch, with what it says (unverified) of sender, recipients and size.

A message's state after delivery attempts (``<id>.json``) is written as::

    %AMS1 <metadata length> <crc32 of metadata, 8 hex>\n
    <metadata: the entry as one line of JSON>\n

``read_state`` verifies it; a state file written before it carried a checksum (the JSON
line alone) is still read, and the queue then takes only what agrees with the verified
segment record (see ``alertmail.queue.spool``).
zlib.crc32 is the checksum: the threat is a torn or truncated write and flipped bits, not
an attacker (who could rewrite a checksum as easily); it costs about 1.6 µs for an
alert-sized mail (blake2b: 4.5 µs), next to the two fsyncs of a commit round.
"""

from __future__ import annotations

import mmap
import os
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from alertmail.queue.entry import Entry, valid_id

MAGIC = b"%AMQ2 "
STATE_MAGIC = b"%AMS1 "
OLD_START = b'{"id":"'
HEADER_MAX = 64  # a header line is far shorter; a longer one is damage
OLD_LINE_MAX = 1 << 20  # the JSON line of an old record (many recipients) stays well below this


class DamagedRecord(ValueError):
    """A record that does not verify; ``args[1]``, when given, is its entry as its metadata says."""


def known(entry: Entry) -> str:
    """What the (possibly unverified) metadata says of a message, for people."""
    rcpts = ", ".join(f"<{r}>" for r in entry.recipients) or "no recipient"
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(entry.created)) if isinstance(entry.created, int | float) else "?"
    return f"from <{entry.sender}> to {rcpts}, queued {when} from {entry.origin}, {entry.size} bytes"


@dataclass
class Damage:
    """A stretch of a segment that holds no verified record."""

    start: int
    end: int
    reason: str
    ids: list[str] = field(default_factory=list)  # messages known to be lost in it
    known: dict[str, str] = field(default_factory=dict)  # id -> what its metadata says of it (unverified)

    def lose(self, entry: Entry | str) -> None:
        msg_id = entry if isinstance(entry, str) else entry.id
        if msg_id not in self.ids:
            self.ids.append(msg_id)
        if not isinstance(entry, str) and msg_id not in self.known:
            self.known[msg_id] = known(entry)

    def describe(self) -> str:
        if not self.ids:
            return f"bytes {self.start}-{self.end}: {self.reason}; no message id readable in them"
        lost = "; ".join(
            f"message {i} not delivered ({self.known[i]}, as its damaged metadata says)"
            if i in self.known
            else f"message {i} not delivered"
            for i in self.ids
        )
        return f"bytes {self.start}-{self.end}: {self.reason}; {lost}"


@dataclass
class Scan:
    """What a segment holds: the verified entries and the damaged stretches."""

    entries: list[Entry] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    size: int = 0
    data: dict[str, bytes] = field(default_factory=dict)  # id -> the verified message, when asked for


def encode(entry: Entry, data: bytes) -> tuple[bytes, int]:
    """The record for ``entry`` (its ``crc`` is set here) and where its data starts within it."""
    entry.crc = zlib.crc32(data)
    meta = entry.to_json()
    header = MAGIC + f"{len(meta)} {len(data)} {zlib.crc32(meta):08x}\n".encode()
    head = header + meta + b"\n"
    return head + data, len(head)


def data_ok(entry: Entry, data: bytes) -> bool:
    """True when ``data`` is the whole message ``entry`` describes, unchanged."""
    if len(data) != entry.size:
        return False
    return entry.crc is None or zlib.crc32(data) == entry.crc


def scan(path: Path, *, with_data: bool = False) -> Scan:
    """Every verified entry of the segment at ``path`` (with offset), and its damage (blocking).

    ``with_data`` also keeps each verified message's bytes, as ``read_message`` would return them.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return Scan(damage=[Damage(0, 0, "empty segment")])
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _scan(mm, size, with_data)


def _scan(mm: mmap.mmap, size: int, with_data: bool = False) -> Scan:
    out = Scan(size=size)
    # Old records carry no checksum: they are taken only from a segment with no new record
    # at all, so a message quoting an old record is never mistaken for one.
    old = mm.find(MAGIC) < 0
    pos = 0
    while pos < size:
        try:
            entry, end = _record(mm, pos, size, old)
        except DamagedRecord as exc:
            nxt = _next_record(mm, pos + 1, size, old)
            if out.damage and out.damage[-1].end == pos:  # one stretch, however many false starts
                out.damage[-1].end = nxt
            else:
                out.damage.append(Damage(pos, nxt, str(exc.args[0])))
            if len(exc.args) > 1:
                out.damage[-1].lose(exc.args[1])
            pos = nxt
            continue
        out.entries.append(entry)
        if with_data:
            out.data[entry.id] = mm[entry.offset : end]
        pos = end
    for damage in out.damage:
        for named in _named_in(mm, damage.start, damage.end):
            damage.lose(named)
    return out


def _named_in(mm: mmap.mmap, start: int, end: int) -> list[Entry | str]:
    """The messages whose metadata lines stand in ``mm[start:end]``: entries that parse, else bare ids."""
    out: list[Entry | str] = []
    pos = start
    while (at := mm.find(OLD_START, pos, end)) >= 0:
        pos = at + 1
        if at > 0 and mm[at - 1 : at] != b"\n":
            continue  # a metadata line starts a line
        eol = mm.find(b"\n", at, min(at + OLD_LINE_MAX, end))
        try:
            out.append(_entry(mm[at : eol if eol >= 0 else min(at + OLD_LINE_MAX, end)]))
            continue
        except DamagedRecord:
            pass
        tail = mm[at + len(OLD_START) : at + len(OLD_START) + 41]
        msg_id = tail.split(b'"', 1)[0].decode("ascii", "replace")
        if b'"' in tail and valid_id(msg_id):
            out.append(msg_id)
    return out


def _next_record(mm: mmap.mmap, start: int, size: int, old: bool) -> int:
    """Where the next record that verifies begins (``size`` when none does)."""
    pos = start
    marker = OLD_START if old else MAGIC
    while pos < size:
        at = mm.find(marker, pos)
        if at < 0:
            return size
        try:
            _record(mm, at, size, old)
            return at
        except DamagedRecord:
            pos = at + 1
    return size


def _record(mm: mmap.mmap, pos: int, size: int, old: bool) -> tuple[Entry, int]:
    """The entry of the record at ``pos`` and where the record ends; DamagedRecord when it does not verify."""
    if mm[pos : pos + len(MAGIC)] == MAGIC:
        return _new_record(mm, pos, size)
    if old and mm[pos : pos + len(OLD_START)] == OLD_START:
        return _old_record(mm, pos, size)
    raise DamagedRecord("no record starts here")


def _new_record(mm: mmap.mmap, pos: int, size: int) -> tuple[Entry, int]:
    eol = mm.find(b"\n", pos, min(pos + HEADER_MAX, size))
    if eol < 0:
        raise DamagedRecord("record header cut short or unreadable")
    try:
        meta_len_text, data_len_text, meta_crc_text = mm[pos + len(MAGIC) : eol].decode("ascii").split(" ")
        meta_len, data_len, meta_crc = int(meta_len_text), int(data_len_text), int(meta_crc_text, 16)
    except ValueError:
        raise DamagedRecord("record header unreadable") from None
    if meta_len < 0 or data_len < 0:
        raise DamagedRecord("record header unreadable")
    meta_start = eol + 1
    data_start = meta_start + meta_len + 1
    end = data_start + data_len
    if data_start > size:
        raise DamagedRecord("metadata cut short")
    meta = mm[meta_start : meta_start + meta_len]
    if zlib.crc32(meta) != meta_crc or mm[data_start - 1 : data_start] != b"\n":
        raise DamagedRecord("metadata checksum mismatch")
    entry = _entry(meta)
    if entry.size != data_len or entry.crc is None:
        raise DamagedRecord("metadata disagrees with the record header")
    if end > size:
        raise DamagedRecord(f"message truncated ({size - data_start} of {data_len} bytes)", entry)
    if zlib.crc32(memoryview(mm)[data_start:end]) != entry.crc:
        raise DamagedRecord("message checksum mismatch", entry)
    entry.offset = data_start
    return entry, end


def _old_record(mm: mmap.mmap, pos: int, size: int) -> tuple[Entry, int]:
    eol = mm.find(b"\n", pos, min(pos + OLD_LINE_MAX, size))
    if eol < 0:
        raise DamagedRecord("record metadata cut short or unreadable")
    entry = _entry(mm[pos:eol])
    if entry.crc is not None:
        raise DamagedRecord("record header damaged (its metadata carries a checksum)", entry)
    entry.crc = None  # written before checksums: only the length can be checked
    start = eol + 1
    end = start + entry.size
    if end > size:
        raise DamagedRecord(f"message truncated ({size - start} of {entry.size} bytes)", entry)
    entry.offset = start
    return entry, end


def _entry(meta: bytes) -> Entry:
    try:
        entry = Entry.from_json(meta)
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
        raise DamagedRecord(f"metadata unreadable ({type(exc).__name__})") from None
    if not valid_id(str(entry.id)) or not isinstance(entry.size, int) or entry.size < 0:
        raise DamagedRecord("metadata unreadable (id or size)")
    return entry


def encode_state(entry: Entry) -> bytes:
    """The content of ``<id>.json``: a checksummed header line, then the entry as JSON."""
    meta = entry.to_json()
    return STATE_MAGIC + f"{len(meta)} {zlib.crc32(meta):08x}\n".encode() + meta + b"\n"


def read_state(raw: bytes) -> tuple[Entry, bool]:
    """The entry of a state file and whether a checksum verified it (False: written before state
    checksums); DamagedRecord when it does not verify or does not read."""
    if raw.startswith(STATE_MAGIC):
        eol = raw.find(b"\n", 0, HEADER_MAX)
        try:
            length_text, crc_text = raw[len(STATE_MAGIC) : eol].decode("ascii").split(" ")
            length, crc = int(length_text), int(crc_text, 16)
        except ValueError:
            raise DamagedRecord("state header unreadable") from None
        meta = raw[eol + 1 : eol + 1 + length]
        if eol < 0 or len(meta) != length or raw[eol + 1 + length :] != b"\n":
            raise DamagedRecord("state file cut short or too long")
        if zlib.crc32(meta) != crc:
            raise DamagedRecord("state checksum mismatch")
        return _entry(meta), True
    if raw.startswith(OLD_START):
        return _entry(raw.strip()), False
    raise DamagedRecord("state header unreadable")
