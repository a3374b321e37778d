"""The embedded broker's dead letters: rows of ``taskd_dead_letters``, named by their row id.

Each function runs on the caller's connection, inside the caller's write transaction where it
writes, so setting a message aside, trimming to the cap, and requeueing are each atomic.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence

from taskd.brokers.base import DeadLetter, DeadLetterCap
from taskd.errors import UnknownDeadLetters
from taskd.wire import GoTime

SCHEMA = """
CREATE TABLE IF NOT EXISTS taskd_dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL,
    rejected_ns INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS taskd_dead_letters_by_queue ON taskd_dead_letters (queue, id);
CREATE INDEX IF NOT EXISTS taskd_dead_letters_by_age ON taskd_dead_letters (queue, rejected_ns);
"""
DRIVER = "sqlite"


def set_aside(
    conn: sqlite3.Connection, queue: str, body: bytes, reason: str, cap: DeadLetterCap
) -> int:
    """Keep a message with its reason, then drop the queue's oldest beyond the cap (both
    cheap with the indexes: an index walk of ``max_count`` rows, a range delete); how many
    the count cap dropped."""
    now_ns = time.time_ns()
    conn.execute(
        "INSERT INTO taskd_dead_letters (queue, body, reason, rejected_ns) VALUES (?, ?, ?, ?)",
        (queue, body, reason, now_ns),
    )
    if cap.max_age_s:
        conn.execute(
            "DELETE FROM taskd_dead_letters WHERE queue = ? AND rejected_ns < ?",
            (queue, now_ns - cap.max_age_s * 1_000_000_000),
        )
    if not cap.max_count:
        return 0
    return conn.execute(
        "DELETE FROM taskd_dead_letters WHERE queue = ? AND id <= ("
        "  SELECT id FROM taskd_dead_letters WHERE queue = ? ORDER BY id DESC"
        "  LIMIT 1 OFFSET ?)",
        (queue, queue, cap.max_count),
    ).rowcount


def newest(conn: sqlite3.Connection, queue: str, limit: int) -> list[DeadLetter]:
    rows = conn.execute(
        "SELECT id, body, reason, rejected_ns FROM taskd_dead_letters WHERE queue = ?"
        " ORDER BY id DESC LIMIT ?",
        (queue, limit),
    ).fetchall()
    return [
        DeadLetter(queue, bytes(body), reason, GoTime(ns), str(row_id))
        for row_id, body, reason, ns in rows
    ]


def take(conn: sqlite3.Connection, queue: str, ids: Sequence[str] | None) -> list[bytes]:
    """Delete the dead letters ``ids`` names (every one for None) and return their bodies,
    oldest first; UnknownDeadLetters, deleting nothing, when some are not there."""
    if ids is None:
        rows = conn.execute(
            "DELETE FROM taskd_dead_letters WHERE queue = ? RETURNING id, body", (queue,)
        ).fetchall()
    else:
        wanted = {i: int(i) if i.isdecimal() else None for i in ids}
        rows = conn.execute(
            "DELETE FROM taskd_dead_letters WHERE queue = ?"
            " AND id IN (SELECT value FROM json_each(?)) RETURNING id, body",
            (queue, json.dumps([row_id for row_id in wanted.values() if row_id is not None])),
        ).fetchall()
        found = {row_id for row_id, _ in rows}
        missing = [i for i, row_id in wanted.items() if row_id not in found]
        if missing:
            raise UnknownDeadLetters(DRIVER, queue, missing)
    return [bytes(body) for _, body in sorted(rows)]
