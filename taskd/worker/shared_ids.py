"""A set of ids one process publishes and the processes it forks read, in shared memory.

The supervisor reads the revoked board for its children (``taskd.worker.beacon``), so that a
child deciding whether a task may run reads memory, not the backend: a round trip a task
paid before it ran whenever its child had been idle for a second, which is how tasks arrive
at a live service.

The ids are JSON in an anonymous mapping made before the fork, guarded by a generation
number (a sequence lock): odd while the publisher writes, even after. A reader copies the
bytes between two reads of it and keeps what it read only if they agree; each cell is read
and written whole (``taskd.worker.cells``). A copy older than the reader allows, or one too
large for the mapping, is none: the reader then asks the backend itself, as it did before.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Iterable

import orjson

from taskd.worker.cells import COUNT, FLOAT, Columns

CAPACITY = 1 << 20  # bytes of JSON (about 20,000 task ids); pages are taken as they are used
TOO_LARGE = (1 << 64) - 1  # the length of a set that did not fit
READ_TRIES = 3  # a reader that meets a write under way this often asks the backend instead


class SharedIds:
    def __init__(self, capacity: int = CAPACITY) -> None:
        self._head = Columns(1, {"generation": COUNT, "length": COUNT, "published_at": FLOAT})
        self._data = memoryview(mmap.mmap(-1, capacity))
        self._published: bytes | None = None  # the publisher's last write
        self._seen, self._ids = -1, frozenset[str]()  # a reader's last copy, by generation

    def publish(self, ids: Iterable[str]) -> None:
        """Publish ``ids`` as read now (only the time is written where they did not change)."""
        data = orjson.dumps(sorted(ids))
        if data != self._published:
            generation = self._head["generation"]
            generation[0] += 1  # odd: readers leave what they read meanwhile
            if len(data) <= len(self._data):
                self._data[: len(data)] = data
                self._head["length"][0] = len(data)
            else:
                self._head["length"][0] = TOO_LARGE
            generation[0] += 1
            self._published = data
        self._head["published_at"][0] = time.monotonic()

    def read(self, max_age_s: float) -> frozenset[str] | None:
        """The ids, if published at most ``max_age_s`` ago and read whole; else None."""
        if time.monotonic() - self._head["published_at"][0] > max_age_s:
            return None
        generation, length = self._head["generation"], self._head["length"]
        for _ in range(READ_TRIES):
            before = generation[0]
            if before == self._seen:
                return self._ids
            if before % 2:
                continue
            size = length[0]
            if size == TOO_LARGE:
                return None
            data = bytes(self._data[:size])
            if generation[0] == before:
                self._seen, self._ids = before, frozenset(orjson.loads(data))
                return self._ids
        return None
