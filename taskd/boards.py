"""The result backend's shared boards (``ResultBackend.post``): their names, and reading the
workers board for ``taskctl workers``."""

from __future__ import annotations

from typing import Any

from taskd.backends import ResultBackend
from taskd.backends.base import Entry

WORKERS = "workers"  # live daemons, by machine and pid (posted by ``taskd.worker.beacon``)
REVOKED = "revoked"  # revoked tasks, by id (``taskd.revocations``)


def live_workers(backend: ResultBackend) -> list[Entry]:
    """The daemons on the workers board, by host and pid."""
    entries = backend.read_board(WORKERS).values()
    return sorted(entries, key=lambda entry: (str(entry.get("host")), str(entry.get("pid"))))


def listed(value: object) -> list[Any]:
    """A list an entry holds, or none: another version's or program's entry may hold anything
    in a field (boards keep JSON objects only, ``taskd.backends.board_json``)."""
    return value if isinstance(value, list) else []
