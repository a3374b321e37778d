"""How the embedded drivers write to their SQLite file: one writer at a time, synced in groups.

**One writer at a time.** SQLite lets one connection write at once; a connection that finds
the file locked sleeps in SQLite's busy handler, 1 ms at first and longer after, even when the
lock is free again 20 µs later. Under load most of a sender's time went to those sleeps. So
taskd's writers first take a lock the kernel hands over at once (``flock`` on a file beside
the database), and SQLite's lock is then free nearly always. Other programs writing the file
still meet SQLite's own lock, and nothing breaks where the lock file cannot be made.

**Synced in groups.** With ``synchronous=full`` (the default) or ``extra``, a commit is made
without a sync, and a thread of the process syncs the write-ahead log after it
(``GroupSync``): one sync covers every commit made before it began, by any process. The commit
is visible at once (a worker starts a task while its send is being synced), and writers do
not hold the write lock through each other's syncs. A caller promised durability (a send's
confirm, a state stored before an ack on another broker, an operator's purge) waits for the
sync, which then starts at once. A commit nobody waits for yet (a pipelined send, an ack
with its states, a dead letter) is synced within GATHER_S, with every other commit made
meanwhile: each sync stalls the writers of the file for a moment, and under load a sync
per commit cost a quarter of the throughput (measured). The rest asks for no sync: a lease or
a beat lost only delivers a message again, and a group's record or a chord's claim is
followed by sends whose confirms cover it, since the log is lost only from its end (a commit
that survives a power cut means every earlier one did too). ``synchronous=normal``: the user
chose speed over power-cut safety, and nothing waits.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from taskd import logs
from taskd.confirms import Confirm, confirmed
from taskd.errors import DriverError
from taskd.sqlitedb import write_transaction

log = logs.get_logger("taskd.sqlite")
SYNC_THREAD_IDLE_S = 5.0  # a sync thread with nothing to sync for this long ends
CHECKPOINT_EVERY = 100  # commits of a connection between its checkpoints (about SQLite's own
# 1,000 pages of log at the 7 or so pages a send or a settle writes)
LOG_RESTART_PAGES = 4000  # a log longer than this is made to start over (16 MB at 4 KiB)
LOCKED_CHECKPOINT_TRIES = 20  # ...by a checkpoint holding the writers' lock, tried this often
LOCKED_CHECKPOINT_PAUSE_S = 0.001
GATHER_S = 0.05  # longest a commit nobody waits for waits for its sync (a power cut's window)


class Writer:
    """The writes of one connection to a database file."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        database: Path,
        synchronous: str,
        failed: type[DriverError],
        driver: str,
    ) -> None:
        """``failed``, ``driver``: the error a failed sync is raised as."""
        self._conn, self._database = conn, database
        self._failed, self._driver = failed, driver
        self._lock = _WriteLock(Path(f"{database}.lock"))
        self._commits = 0
        self._group: GroupSync | None = None
        conn.execute("PRAGMA wal_autocheckpoint=0")  # its checkpoints: transaction()
        if synchronous != "NORMAL":
            conn.execute("PRAGMA synchronous=NORMAL")  # this connection's syncs are ours
            key = (database.resolve(), os.getpid())
            with _group_syncs_lock:
                self._group = _group_syncs.setdefault(key, GroupSync(database))

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, holding the writers' lock; now and then a checkpoint
        after it (``_checkpoint``)."""
        with self._lock, write_transaction(self._conn):
            yield self._conn
        self._commits += 1
        if self._commits % CHECKPOINT_EVERY == 0:
            try:
                self._checkpoint()
            except sqlite3.Error as exc:  # the commit stands; a later checkpoint catches up
                log.warning("sqlite_checkpoint_failed", database=str(self._database), error=exc)

    def _checkpoint(self) -> None:
        """Copy the log into the database. SQLite's automatic checkpoint would run inside a
        commit, with two syncs, while other writers wait on the lock; this one runs after
        it and lets them write meanwhile. But the log starts over only once a checkpoint
        has copied all of it, which writers that never pause prevent: past LOG_RESTART_PAGES
        one runs holding the lock, so that the next commit starts the log over."""
        _busy, pages, _copied = self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if pages > LOG_RESTART_PAGES:
            with self._lock:
                # Another connection's checkpoint (run without the lock) makes this one give
                # up at once, busy, and the log grows on: wait for it to end.
                for _ in range(LOCKED_CHECKPOINT_TRIES):
                    busy, pages, copied = self._conn.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    if not busy and copied == pages:
                        break
                    time.sleep(LOCKED_CHECKPOINT_PAUSE_S)

    def committed(self) -> Confirm:
        """After a commit: what waits until it is on disk (raising the driver's error if
        its sync failed). Its sync starts within GATHER_S, or at once when that is called."""
        if self._group is None:
            return confirmed  # never waited for (normal)
        ticket = self._group.committed()
        return lambda: self.wait(ticket)

    def synced(self) -> None:
        """After a commit: wait until it is on disk."""
        self.committed()()

    def wait(self, ticket: int | None = None) -> None:
        """Until the commit of ``ticket`` (default: every one so far) is on disk."""
        if self._group is None:
            return
        try:
            self._group.wait(ticket)
        except OSError as exc:
            raise self._failed(
                self._driver, f"syncing {self._database} to disk failed: {exc}"
            ) from exc

    def close(self) -> None:
        """Wait for the syncs of what was committed (a failure is logged: closing goes on)."""
        try:
            self.wait()
        except DriverError as exc:
            log.error("sqlite_sync_failed", error=str(exc))
        self._lock.close()


class _WriteLock:
    """``flock`` on a file beside the database, opened per connection and process (a lock
    belongs to an open file, which a forked child would otherwise share)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None
        self._pid = -1

    def __enter__(self) -> None:
        if self._pid != os.getpid():
            if self._fd is not None:
                os.close(self._fd)  # the parent's: its lock is not ours
            self._fd, self._pid = self._open(), os.getpid()
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _open(self) -> int | None:
        try:
            return os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError:
            return None  # a read-only directory, say: SQLite's own lock still guards

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd, self._pid = None, -1


class GroupSync:
    """Syncs one database's write-ahead log from a thread of this process: each commit made
    unsynced takes a ticket, and one sync covers every ticket taken before it began."""

    def __init__(self, database: Path) -> None:
        self._wal = f"{database}-wal"
        self._changed = threading.Condition()
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._taken = 0  # tickets given out: commits made without a sync
        self._synced = 0  # tickets whose commits are on disk
        self._failed: tuple[int, OSError] | None = None  # tickets up to this one were not
        self._thread: threading.Thread | None = None
        self._waiting = 0  # callers of wait() for a ticket not yet synced

    def committed(self) -> int:
        """A commit was just made without a sync: its ticket. Its sync starts once someone
        waits for it, or GATHER_S later."""
        with self._changed:
            if self._pid != os.getpid():  # a forked child: the parent's thread is not here
                self._start()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="taskd-sqlite-sync")
                self._thread.daemon = True  # the confirms' exit hook still waits for it
                self._thread.start()
            self._taken += 1
            if self._taken == self._synced + 1:  # the thread was idle: it gathers from now
                self._changed.notify_all()
            return self._taken

    def wait(self, ticket: int | None = None) -> None:
        """Return once the commit of ``ticket`` (default: every one so far) is on disk;
        OSError if its sync failed."""
        with self._changed:
            if self._pid != os.getpid():
                return  # the parent's commits are the parent's to wait for
            ticket = self._taken if ticket is None else ticket
            if self._synced < ticket:
                self._waiting += 1
                self._changed.notify_all()  # the thread stops gathering and syncs
                try:
                    while self._synced < ticket:
                        self._changed.wait()
                finally:
                    self._waiting -= 1
            if self._failed is not None and ticket <= self._failed[0]:
                raise self._failed[1]

    def _run(self) -> None:
        while True:
            with self._changed:
                if self._synced == self._taken:
                    self._changed.wait(SYNC_THREAD_IDLE_S)
                if self._synced == self._taken:  # idle: the next commit starts another
                    self._thread = None
                    return
                if not self._waiting:  # let the commits of the next moment share this sync
                    self._changed.wait(GATHER_S)
                covered = self._taken
            failure = _sync_file(self._wal)
            with self._changed:
                if failure is not None:
                    self._failed = (covered, failure)
                self._synced = covered
                self._changed.notify_all()


def _sync_file(path: str) -> OSError | None:
    """fdatasync ``path``; None when done or when there is no such file (the log was
    checkpointed into the database, which a checkpoint syncs, and removed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return exc
    try:
        os.fdatasync(fd)
        return None
    except OSError as exc:
        return exc
    finally:
        os.close(fd)


_group_syncs: dict[tuple[Path, int], GroupSync] = {}
_group_syncs_lock = threading.Lock()
