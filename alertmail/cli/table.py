"""Plain-text tables for the terminal."""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import Sequence

# The last column is wrapped rather than cut: a server's reply is read whole.
MIN_LAST = 24


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], *, align_right: Sequence[int] = (), width: int | None = None
) -> str:
    """A table with a header rule; columns in ``align_right`` are right-aligned (numbers).

    On a terminal (or with ``width``) the last column is wrapped to its width, continuation
    lines under its start; into a pipe lines stay whole. Nothing is ever cut.
    """
    cells = [[str(c) for c in header]] + [[" ".join(str(c).split()) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    total = width or (shutil.get_terminal_size((80, 24)).columns if sys.stdout.isatty() else 1 << 30)
    start = sum(widths[:-1]) + 2 * (len(widths) - 1)
    room = max(total - start, MIN_LAST)
    widths[-1] = min(widths[-1], room)

    def lines(row: Sequence[str]) -> list[str]:
        parts = [c.rjust(w) if i in align_right else c.ljust(w) for i, (c, w) in enumerate(zip(row[:-1], widths, strict=False))]
        last = textwrap.wrap(row[-1], room, break_long_words=True, break_on_hyphens=False) or [""]
        first = "  ".join([*parts, last[0]]).rstrip()
        return [first, *(" " * start + more for more in last[1:])]

    out = [*lines(cells[0]), "  ".join("-" * w for w in widths)]
    for row in cells[1:]:
        out += lines(row)
    return "\n".join(out)
