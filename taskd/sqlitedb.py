"""SQLite plumbing shared by the embedded broker and result backend (one file serves both).

URL: ``sqlite:///absolute/path.db`` or ``sqlite://relative.db``; ``?synchronous=normal`` trades
durability on power loss for speed (the default, ``full``, has every commit that was
promised synced to disk).
The drivers' own connections write through ``taskd.sqlite_writer`` (one writer at a time
across processes, commits synced in groups).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from taskd import drivers, logs
from taskd.errors import ConfigError, DriverError, DriverStale

log = logs.get_logger("taskd.sqlite")

BUSY_TIMEOUT_S = 30.0  # how long a writer waits for the file lock before giving up
FILE_CHECK_S = 1.0  # how often a driver looks whether its file is still the one at its path
_SYNCHRONOUS = ("FULL", "NORMAL", "EXTRA")


def sqlite_path(url: str, key: str, source: str | None = None) -> Path:
    """The database file of ``sqlite:///abs/path.db`` or ``sqlite://relative.db``; a relative
    one is of the directory this is called in, for good (a task may change directory)."""
    rest = url.split("://", 1)[1].split("?", 1)[0]
    if not rest or rest == "/":
        raise ConfigError(key, f"{url!r} names no database file", source)
    return Path(rest).absolute()


def synchronous_mode(url: str, key: str, source: str | None = None) -> str:
    mode = parse_qs(url.partition("?")[2]).get("synchronous", ["full"])[0].upper()
    if mode not in _SYNCHRONOUS:
        raise ConfigError(key, f"synchronous={mode.lower()} is not full, normal or extra", source)
    return mode


def connect(path: Path, synchronous: str, schema: str) -> sqlite3.Connection:
    """An autocommit connection in WAL mode with ``schema`` created; raises OSError or
    sqlite3.Error.

    Switching a new file to WAL takes an exclusive lock that SQLite does not wait for, so
    processes opening the same new file at once retry that step until the busy timeout.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    conn = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(schema)
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT: one writer at a time, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def translated(
    unavailable: type[DriverError], permanent: type[DriverError], driver: str, **context: Any
) -> AbstractContextManager[None]:
    """sqlite3 errors as taskd's: a locked or busy file, or disk I/O, may pass; the rest not."""
    return drivers.translated(
        sqlite3.OperationalError, sqlite3.Error, unavailable, permanent, driver, **context
    )


def opened(
    path: Path,
    synchronous: str,
    schema: str,
    unavailable: type[DriverError],
    permanent: type[DriverError],
    driver: str,
) -> sqlite3.Connection:
    """``connect``, with failures as the driver's errors naming the file."""
    try:
        return connect(path, synchronous, schema)
    except sqlite3.OperationalError as exc:  # locked past the busy timeout, disk I/O
        if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _NOT_ALLOWED:
            raise permanent(driver, f"cannot open {path}: {exc}{_as_whom()}") from exc
        raise unavailable(driver, f"cannot open {path}: {exc}") from exc
    except (OSError, sqlite3.Error) as exc:
        raise permanent(driver, f"cannot open {path}: {exc}") from exc


# What waiting does not mend: a file, its -wal or -shm, or its directory that this user may
# not write (say, created by root before the service ran as its own user).
_NOT_ALLOWED = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM})


def _as_whom() -> str:
    import os
    import pwd

    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    return (
        f" (as {user}: the file, its -wal and -shm files and its directory must be writable"
        " by the user taskd runs as)"
    )


class FileWatch:
    """Whether the file at ``path`` is still the one opened: an operator's rm of the state
    directory while taskd runs left it on a file nobody else reaches, clients on a new one,
    and nothing ran, silently. The path is looked at once a FILE_CHECK_S at most, and what
    was seen is shared by the process's drivers on that path (a broker and a backend sharing
    the file see a change at once, and follow it together)."""

    def __init__(self, path: Path) -> None:
        self._path, self._identity = path, _identity(path)
        _seen[path] = (time.monotonic(), self._identity)

    def moved(self) -> bool:
        """Whether the path names another file than the one opened (or none)."""
        now = time.monotonic()
        looked_at, seen = _seen.get(self._path, (-FILE_CHECK_S, None))
        if now - looked_at >= FILE_CHECK_S:
            seen = _identity(self._path)
            _seen[self._path] = (now, seen)
        return seen != self._identity

    def check(self, driver: str) -> None:
        """DriverStale where the path names another file than the one opened (or none)."""
        if self.moved():
            raise DriverStale(driver, f"{self._path} was deleted or replaced while open")


_seen: dict[Path, tuple[float, tuple[int, int] | None]] = {}  # path -> (looked at, identity)


class FollowsFile:
    """Of a driver whose connection may be opened anew in place, holding nothing tied to
    the file but the connection (a result backend; a broker that is no consumer):
    ``_follow`` does that where the file at its path was deleted or replaced, so that a
    long-lived producer writes where the workers now read. The driver sets ``driver``,
    ``_path``, ``_lock``, ``_conn``, ``_writer`` and ``_watch`` (in ``_open``)."""

    driver: str
    _path: Path
    _lock: AbstractContextManager[Any]
    _conn: sqlite3.Connection
    _writer: Any  # taskd.sqlite_writer.Writer, which imports this module
    _watch: FileWatch

    def _open(self) -> None:
        raise NotImplementedError

    def _follow(self) -> None:
        if not self._watch.moved():
            return
        with self._lock:
            stale_writer, stale_conn = self._writer, self._conn
            self._open()
        log.warning(
            "sqlite_file_followed",
            driver=self.driver,
            database=str(self._path),
            reason="deleted or replaced while open: what it held went with it",
        )
        with contextlib.suppress(Exception):  # a file gone: nothing there to keep
            stale_writer.close()
            stale_conn.close()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino
