"""Columns of numbers in shared memory, written by one process and read by another.

The supervisor makes a table before it forks, so its children share it: a child writes its
own row, the supervisor reads every row. Each cell is 8 bytes, aligned, written and read
through a typed ``memoryview`` (one copy of 8 bytes, which the compiler makes one store or
load): a reader in another process sees the old value or the new one, never a mix.
``struct.pack_into`` would not do: it zeroes its target first, then writes a float byte by
byte, so a reader can see 0 in between (the supervisor once took a busy child's last
stamp for 0, and so the child for stalled).
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping

CELL_BYTES = 8
FLOAT, COUNT = "d", "Q"  # the kinds of column: a float, or an unsigned 64-bit integer


class Columns:
    """``rows`` rows of the named columns (each FLOAT or COUNT), all 0 at first; a column is
    a memoryview indexed by row: ``table["beat"][row] = time.monotonic()``."""

    def __init__(self, rows: int, kinds: Mapping[str, str]) -> None:
        self.rows = rows
        self._mem = mmap.mmap(-1, rows * CELL_BYTES * len(kinds))  # anonymous: shared by fork
        whole = memoryview(self._mem)
        size = rows * CELL_BYTES
        self._columns = {
            name: whole[index * size : (index + 1) * size].cast(kind)
            for index, (name, kind) in enumerate(kinds.items())
        }

    def __getitem__(self, name: str) -> memoryview:
        return self._columns[name]

    def row(self, row: int) -> dict[str, float | int]:
        """Each column's cell of ``row``, by column name (each read whole, one at a time)."""
        return {name: column[row] for name, column in self._columns.items()}
