"""Boards read leniently: an entry that is not taskd's (another program's or version's value,
not JSON or no object) is left out of a read and logged once, never raised. A worker reads the
revoked board for its tasks: such an entry there crashed every child at every task."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import orjson
from structlog.testing import capture_logs

from taskd.backends import board_json, open_backend
from taskd.config import Config
from taskd.wire import new_id
from tests.support.harness import REDIS_URL

JUNK = [b"junk{", b"5", b"[1, 2]", b"null", b'"text"']


def test_entries_that_are_no_json_object_are_left_out_and_told_once() -> None:
    board = f"test-{new_id()}"
    stored = [("good", b'{"n": 1}'), *((f"bad{i}", raw) for i, raw in enumerate(JUNK))]
    with capture_logs() as logs:
        assert board_json.entries(stored, driver="x", board=board) == {"good": {"n": 1}}
        assert board_json.entries(stored, driver="x", board=board) == {"good": {"n": 1}}
    told = [entry["key"] for entry in logs if entry["event"] == "board_entry_unreadable"]
    assert told == [f"bad{i}" for i in range(len(JUNK))]  # once each, not at every read


def test_a_board_kept_whole_keeps_what_it_can_read_and_is_written_anew() -> None:
    board, now = f"test-{new_id()}", time.time()
    mixed = orjson.dumps({"good": [now + 60, {"n": 1}], "bad": [now + 60, 5], "worse": "x"})
    assert board_json.live(mixed, now, driver="x", board=board) == {"good": {"n": 1}}
    for raw in JUNK:
        assert board_json.live(raw, now, driver="x", board=board) == {}
        value, _longest_s = board_json.pinned(
            raw, {"a": {"n": 2}}, 60, now, driver="x", board=board
        )
        assert board_json.live(value, now, driver="x", board=board) == {"a": {"n": 2}}


def test_redis_and_sqlite_boards_leave_out_what_they_cannot_read(tmp_path: Path) -> None:
    board = f"test-{new_id()}"
    redis_backend = open_backend(Config(result_backend=REDIS_URL))
    sqlite_path = tmp_path / "boards.db"
    sqlite_backend = open_backend(Config(result_backend=f"sqlite://{sqlite_path}"))
    try:
        for backend in (redis_backend, sqlite_backend):
            backend.post(board, {"good": {"n": 1}}, 60)
        far_ms, far_ns = int(time.time() * 1000) + 60_000, time.time_ns() + 60 * 10**9
        key = f"{redis_backend._prefix}board:{board}"
        with sqlite3.connect(sqlite_path) as raw_sqlite:
            for i, raw in enumerate(JUNK):
                redis_backend.redis.hset(key, f"bad{i}", b"%d %s" % (far_ms, raw))
                raw_sqlite.execute(
                    "INSERT INTO taskd_boards (board, key, entry, expires_ns) VALUES (?, ?, ?, ?)",
                    (board, f"bad{i}", raw, far_ns),
                )
        for backend in (redis_backend, sqlite_backend):
            assert backend.read_board(board) == {"good": {"n": 1}}
    finally:
        redis_backend.redis.delete(key)
        redis_backend.close()
        sqlite_backend.close()
