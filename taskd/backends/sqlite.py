"""The embedded result backend: task states and group metadata in a SQLite file."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path
from typing import Self

import orjson

from taskd import forking
from taskd.backends import board_json
from taskd.backends.base import SPENT_CLAIM, Entry, ResultBackend, claim_covers
from taskd.config import Config
from taskd.confirms import Confirm, confirmed
from taskd.errors import BackendError, BackendUnavailable
from taskd.sqlite_writer import Writer
from taskd.sqlitedb import (
    FileWatch,
    FollowsFile,
    opened,
    sqlite_path,
    synchronous_mode,
    translated,
)
from taskd.wire import GroupMeta, State, TaskState
from taskd.wire.state import merged

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskd_states (
    task_id TEXT PRIMARY KEY,
    state BLOB NOT NULL,            -- machinery's TaskState JSON
    expires_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS taskd_chord_claims (
    group_id TEXT PRIMARY KEY,
    claimant TEXT NOT NULL,         -- the member task that triggered the chord
    expires_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS taskd_chord_members (
    group_id TEXT NOT NULL,
    task_id TEXT NOT NULL,          -- a member that succeeded, counted once
    expires_ns INTEGER NOT NULL,
    PRIMARY KEY (group_id, task_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS taskd_chord_counts (
    group_id TEXT PRIMARY KEY,
    counted INTEGER NOT NULL,       -- rows of taskd_chord_members for the group
    expires_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS taskd_boards (
    board TEXT NOT NULL,
    key TEXT NOT NULL,
    entry BLOB NOT NULL,            -- JSON object
    expires_ns INTEGER NOT NULL,
    PRIMARY KEY (board, key)
);
CREATE TABLE IF NOT EXISTS taskd_groups (
    group_id TEXT PRIMARY KEY,
    meta BLOB NOT NULL,             -- machinery's GroupMeta JSON
    expires_ns INTEGER NOT NULL
);
"""

UPSERT_STATES = "INSERT OR REPLACE INTO taskd_states (task_id, state, expires_ns) VALUES (?, ?, ?)"
INSERT_FRESH = "INSERT OR IGNORE INTO taskd_states (task_id, state, expires_ns) VALUES (?, ?, ?)"
SWEEP_INTERVAL_S = 60.0  # how often a writer deletes expired records...
EXPIRING_TABLES = (  # ...from these (boards prune their own on each post)
    "taskd_states",
    "taskd_groups",
    "taskd_chord_claims",
    "taskd_chord_members",
    "taskd_chord_counts",
)


class SQLiteBackend(FollowsFile, ResultBackend):
    driver = "sqlite"

    def __init__(self, path: Path, synchronous: str, *, expire_s: int) -> None:
        self._path, self._synchronous = path, synchronous
        self._expire_ns = expire_s * 1_000_000_000
        self._open()
        self._lock = threading.Lock()
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        forking.forget_in_children(self)

    def forget_parents(self) -> None:
        """In a forked child: a connection of its own (SQLite warns that one carried across
        a fork can corrupt the database)."""
        self._parents = self._conn  # kept, never closed here
        self._lock = threading.Lock()
        self._open()

    def _open(self) -> None:
        """The connection, and the writer that commits on it."""
        self._conn = opened(
            self._path, self._synchronous, _SCHEMA, BackendUnavailable, BackendError, self.driver
        )
        self._writer = Writer(self._conn, self._path, self._synchronous, BackendError, self.driver)
        self._watch = FileWatch(self._path)

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(
            sqlite_path(url, "result_backend", config.source),
            synchronous_mode(url, "result_backend", config.source),
            expire_s=config.results_expire_in_s,
        )

    def _guard(self, task_id: str | None = None) -> AbstractContextManager[None]:
        self._follow()  # the file an operator's reset made, where workers now write
        return translated(BackendUnavailable, BackendError, self.driver, task_id=task_id)

    def set_states(self, states: Sequence[TaskState]) -> None:
        self.begin_pending(states, fresh=False)()

    def begin_pending(self, states: Sequence[TaskState], *, fresh: bool) -> Confirm:
        """Store the states; the function returned waits until they are on disk (whoever
        acks their messages on another broker calls it first: ``set_states``). ``fresh``
        records are only added: the sync is split off, so keep the contract of drivers
        whose write may land late."""
        if not states:
            return confirmed
        with self._guard(states[0].task_uuid), self._lock:
            with self._writer.transaction():
                if fresh:
                    self._conn.executemany(INSERT_FRESH, self._rows(states))
                else:
                    self._store(self._conn, states)
            self._sweep()
        return self._writer.committed()

    def _store(self, conn: sqlite3.Connection, states: Sequence[TaskState]) -> None:
        later = [state.task_uuid for state in states if state.state is not State.PENDING]
        stored = dict(zip(later, self._read_states(later, conn), strict=True))
        conn.executemany(
            UPSERT_STATES,
            self._rows([merged(state, stored.get(state.task_uuid)) for state in states]),
        )

    def _rows(self, states: Sequence[TaskState]) -> list[tuple[str, bytes, int]]:
        expires_ns = time.time_ns() + self._expire_ns
        return [(state.task_uuid, state.encode(), expires_ns) for state in states]

    @property
    def path(self) -> Path:
        return self._path

    def writing(self, states: Sequence[TaskState]) -> Callable[[sqlite3.Connection], None]:
        """``states`` stored, by machinery's merge rule, on the connection of a broker sharing
        the file, inside its transaction (``taskd.pairs``): one commit for both. Where the
        file was replaced, its tables are made in the new one first (the broker follows too)."""
        self._follow()
        return lambda conn: self._store(conn, states)

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if not task_ids:
            return []
        with self._guard(task_ids[0]), self._lock:
            return self._read_states(task_ids)

    def _read_states(
        self, task_ids: Sequence[str], conn: sqlite3.Connection | None = None
    ) -> list[TaskState | None]:
        if not task_ids:
            return []
        marks = ",".join("?" * len(task_ids))
        rows = (
            (conn or self._conn)
            .execute(
                f"SELECT task_id, state FROM taskd_states WHERE task_id IN ({marks})"
                " AND expires_ns > ?",
                (*task_ids, time.time_ns()),
            )
            .fetchall()
        )
        found = dict(rows)
        return [
            self._load_state(found[task_id], task_id) if task_id in found else None
            for task_id in task_ids
        ]

    def init_group(self, group: GroupMeta) -> None:
        with self._guard(group.group_uuid), self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO taskd_groups (group_id, meta, expires_ns) VALUES (?, ?, ?)",
                (group.group_uuid, group.encode(), time.time_ns() + self._expire_ns),
            )

    def get_group(self, group_id: str) -> GroupMeta | None:
        with self._guard(group_id), self._lock:
            row = self._conn.execute(
                "SELECT meta FROM taskd_groups WHERE group_id = ? AND expires_ns > ?",
                (group_id, time.time_ns()),
            ).fetchone()
        return None if row is None else self._load_group(row[0], group_id)

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        with self._guard(group_id), self._lock, self._writer.transaction():
            owner = self._conn.execute(
                "SELECT claimant FROM taskd_chord_claims WHERE group_id = ?", (group_id,)
            ).fetchone()
            if owner is not None:
                return claim_covers(owner[0], claimant)
            row = self._conn.execute(
                "SELECT meta FROM taskd_groups WHERE group_id = ?", (group_id,)
            ).fetchone()
            if row is None:
                raise BackendError(self.driver, "group metadata is missing or expired", group_id)
            group = self._load_group(row[0], group_id)
            if group.chord_triggered:
                return False
            self._conn.execute(
                "UPDATE taskd_groups SET meta = ? WHERE group_id = ?",
                (replace(group, chord_triggered=True).encode(), group_id),
            )
            self._conn.execute(
                "INSERT INTO taskd_chord_claims (group_id, claimant, expires_ns) VALUES (?, ?, ?)",
                (group_id, claimant, time.time_ns() + self._expire_ns),
            )
            return True

    def chord_fired(self, group_id: str) -> None:
        with self._guard(group_id), self._lock, self._writer.transaction():
            self._conn.execute(
                "UPDATE taskd_chord_claims SET claimant = ? WHERE group_id = ?",
                (SPENT_CLAIM, group_id),
            )

    def count_chord_member(self, group_id: str, task_id: str) -> int | None:
        expires_ns = time.time_ns() + self._expire_ns
        with self._guard(group_id), self._lock, self._writer.transaction():
            added = self._conn.execute(
                "INSERT OR IGNORE INTO taskd_chord_members VALUES (?, ?, ?)",
                (group_id, task_id, expires_ns),
            ).rowcount
            if added:  # a count kept beside the members: no member counts them all
                self._conn.execute(
                    "INSERT INTO taskd_chord_counts VALUES (?, 1, ?) ON CONFLICT (group_id)"
                    " DO UPDATE SET counted = counted + 1, expires_ns = excluded.expires_ns",
                    (group_id, expires_ns),
                )
            row = self._conn.execute(
                "SELECT counted FROM taskd_chord_counts WHERE group_id = ?", (group_id,)
            ).fetchone()
        return row[0] if row else None  # its count swept: read the states (never count short)

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        now = time.time_ns()
        expires_ns = now + round(ttl_s * 1e9)
        pinned = [
            (board, key, orjson.dumps(entry), expires_ns)
            for key, entry in entries.items()
            if entry is not None
        ]
        down = [(board, key) for key, entry in entries.items() if entry is None]
        with self._guard(), self._lock, self._writer.transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO taskd_boards (board, key, entry, expires_ns)"
                " VALUES (?, ?, ?, ?)",
                pinned,
            )
            self._conn.executemany("DELETE FROM taskd_boards WHERE board = ? AND key = ?", down)
            self._conn.execute(
                "DELETE FROM taskd_boards WHERE board = ? AND expires_ns <= ?", (board, now)
            )

    def read_board(self, board: str) -> dict[str, Entry]:
        with self._guard(), self._lock:
            rows = self._conn.execute(
                "SELECT key, entry FROM taskd_boards WHERE board = ? AND expires_ns > ?",
                (board, time.time_ns()),
            ).fetchall()
        return board_json.entries(rows, driver=self.driver, board=board)

    def purge(self, task_id: str) -> None:
        with self._guard(task_id), self._lock:
            self._conn.execute("DELETE FROM taskd_states WHERE task_id = ?", (task_id,))
        self._writer.synced()

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._conn.close()

    def _sweep(self) -> None:
        """Delete expired records now and then, so the file does not grow forever."""
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + SWEEP_INTERVAL_S
        now = time.time_ns()
        for table in EXPIRING_TABLES:
            self._conn.execute(f"DELETE FROM {table} WHERE expires_ns <= ?", (now,))
