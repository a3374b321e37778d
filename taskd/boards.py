"""The result backend's shared boards (``ResultBackend.post``): their names, and reading the
workers board for ``taskctl workers``."""

from __future__ import annotations

from taskd.backends import ResultBackend
from taskd.backends.base import Entry

WORKERS = "workers"  # live daemons, by host:pid (posted by ``taskd.worker.beacon``)
REVOKED = "revoked"  # revoked tasks, by id (``taskd.revocations``)


def live_workers(backend: ResultBackend) -> list[Entry]:
    """The daemons on the workers board, by host and pid."""
    entries = backend.read_board(WORKERS).values()
    return sorted(entries, key=lambda entry: (str(entry.get("host")), str(entry.get("pid"))))
