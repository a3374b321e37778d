"""The embedded broker: a durable queue in one SQLite file, for a machine with no server.

Many processes share the file (WAL mode). A fetch leases messages to the consumer in one
transaction; a consumer whose process is gone, or that stopped beating, loses its leases and
the messages are delivered again. An ETA is just a later ``due_ns``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Self

from taskd import forking, logs
from taskd.brokers import lease, sqlite_dead
from taskd.brokers.base import Broker, DeadLetter, DeadLetterCap, Delivery, Holding, Message
from taskd.brokers.doorbell import Doorbell
from taskd.brokers.lease import BeatThread, SilenceJudge, new_consumer_id, process_alive
from taskd.config import Config, Lease
from taskd.confirms import Confirm
from taskd.errors import BrokerError, BrokerUnavailable
from taskd.sqlite_writer import Writer
from taskd.sqlitedb import (
    FileWatch,
    FollowsFile,
    opened,
    sqlite_path,
    synchronous_mode,
    translated,
    write_transaction,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS taskd_messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    body BLOB NOT NULL,
    due_ns INTEGER NOT NULL,        -- not before: the ETA, or when it was published
    consumer TEXT,                  -- the lease holder; NULL while waiting
    deliveries INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS taskd_messages_waiting ON taskd_messages (queue, consumer, due_ns, id);
CREATE INDEX IF NOT EXISTS taskd_messages_leased ON taskd_messages (consumer);
CREATE TABLE IF NOT EXISTS taskd_consumers (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    beat_ns INTEGER NOT NULL
);
"""

log = logs.get_logger("taskd.sqlite")
IDLE_CHECK_S = 0.005  # how often a fetch looks for new commits (a cheap PRAGMA) when busy...
IDLE_CHECK_MAX_S = 0.05  # ...backing off to this while the queue stays empty
InTransaction = Callable[[sqlite3.Connection], None] | None  # more writes, in the same commit


class SQLiteBroker(FollowsFile, Broker):
    driver = "sqlite"
    counts_releases = False  # a release takes back the count its fetch added

    def __init__(
        self, path: Path, synchronous: str, silence: Lease, dead_cap: DeadLetterCap
    ) -> None:
        self._path, self._synchronous, self._lease = path, synchronous, silence
        self._dead_cap = dead_cap
        self._judge = SilenceJudge(silence.consumer_timeout_s, silence.heartbeat_interval_s)
        self._open()
        self._consumer_id: str | None = None
        self._beats: BeatThread | None = None
        self._heartbeat_conn: sqlite3.Connection | None = None  # used by the heartbeat thread only
        self._data_version = -1
        self._idle_pause_s = IDLE_CHECK_S
        self._lock = threading.Lock()  # the main connection is used from one thread at a time
        self._doorbell = Doorbell(path)  # rung after each publish, waited on by idle fetches
        self._backlog = False  # the last fetch filled its batch: more may wait
        forking.forget_in_children(self)

    def forget_parents(self) -> None:
        """In a forked child: a connection of its own (SQLite warns that one carried across
        a fork can corrupt the database), no consumer or heartbeat of the parent's."""
        self._parents = (self._conn, self._heartbeat_conn)  # kept, never closed here
        self._lock = threading.Lock()
        self._open()
        self._consumer_id, self._beats, self._heartbeat_conn = None, None, None

    def _open(self) -> None:
        """The main connection, and the writer that commits on it."""
        self._conn = self._connect()
        self._writer = Writer(self._conn, self._path, self._synchronous, BrokerError, self.driver)
        self._watch = FileWatch(self._path)

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(
            sqlite_path(url, "broker", config.source),
            synchronous_mode(url, "broker", config.source),
            config.lease,
            DeadLetterCap.of(config),
        )

    def _connect(self) -> sqlite3.Connection:
        return opened(
            self._path,
            self._synchronous,
            _SCHEMA + sqlite_dead.SCHEMA,
            BrokerUnavailable,
            BrokerError,
            self.driver,
        )

    def _guard(self, queue: str | None = None) -> AbstractContextManager[None]:
        return translated(BrokerUnavailable, BrokerError, self.driver, queue=queue)

    # -- producing ------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def publish_many(self, messages: Sequence[Message], also: InTransaction = None) -> None:
        self.begin_publish(messages, also)()

    def begin_publish(self, messages: Sequence[Message], also: InTransaction = None) -> Confirm:
        """Insert the messages in one transaction, with what ``also`` writes (a result
        backend sharing the file: ``taskd.pairs``), and ring the doorbell; the confirm
        returned waits until the commit is on disk (``sqlite_writer``)."""
        self.check_priorities(messages)
        if self._consumer_id is None:  # a consumer's file is its fetch's to check (DriverStale)
            self._follow()
        now = time.time_ns()
        rows = [(m.queue, m.body, max(now, m.eta.unix_ns) if m.eta else now) for m in messages]
        with self._guard(), self._lock, self._writer.transaction():
            if also is not None:
                also(self._conn)
            self._conn.executemany(
                "INSERT INTO taskd_messages (queue, body, due_ns) VALUES (?, ?, ?)", rows
            )
        self._doorbell.ring()  # the task may start while the commit is being synced
        return self._writer.committed()

    # -- consuming ------------------------------------------------------------------------

    def _register(self, queue: str) -> str:
        """This consumer's id, registered (and beating) before it takes its first message."""
        if self._consumer_id is None:
            self._consumer_id = new_consumer_id()
            try:
                with self._guard(queue), self._lock:
                    self._beat(self._conn)
                    self._reclaim(self._conn)
            except BrokerError:
                self._consumer_id = None  # registered on the next fetch instead
                raise
            self._beats = BeatThread(
                self._beat_and_reclaim, self._lease.heartbeat_interval_s, self.driver
            )
            self._beats.start()
        return self._consumer_id

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        consumer = self._register(queue)
        deadline = time.monotonic() + wait_s
        while True:
            self._watch.check(self.driver)  # DriverStale: a fresh child opens the new file
            with self._guard(queue), self._lock:
                version = self._conn.execute("PRAGMA data_version").fetchone()[0]
                if version != self._data_version or self._ready_now(queue):
                    taken = self._take(queue, consumer, max_messages)
                    self._backlog = len(taken) == max_messages  # more may wait behind them
                    if taken:
                        self._idle_pause_s = IDLE_CHECK_S
                        return taken
                    self._data_version = version
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            self._doorbell.wait(min(self._idle_pause_s, remaining))
            self._idle_pause_s = min(self._idle_pause_s * 2, IDLE_CHECK_MAX_S)

    def more_ready(self, queue: str) -> bool:
        """A full last batch, or a look at the file (a read, far cheaper than the synced
        commit a settle costs, which the next batch can then share)."""
        if self._backlog:
            return True
        with self._guard(queue), self._lock:
            return self._ready_now(queue)

    def _ready_now(self, queue: str) -> bool:
        """Whether a message waits that is due now (one that fell due since the last look
        included: commits by others are seen via data_version, not ETAs passing)."""
        row = self._conn.execute(
            "SELECT 1 FROM taskd_messages WHERE queue = ? AND consumer IS NULL AND due_ns <= ?"
            " LIMIT 1",
            (queue, time.time_ns()),
        ).fetchone()
        return row is not None

    def _take(self, queue: str, consumer: str, limit: int) -> list[Delivery]:
        """Lease messages; no sync is asked for (``sqlite_writer``): a lease lost to a
        power cut only delivers its messages again."""
        with self._writer.transaction():
            rows = self._conn.execute(
                "UPDATE taskd_messages SET consumer = ?, deliveries = deliveries + 1"
                " WHERE id IN (SELECT id FROM taskd_messages"
                "   WHERE queue = ? AND consumer IS NULL AND due_ns <= ?"
                "   ORDER BY due_ns, id LIMIT ?)"
                " RETURNING id, body, deliveries, due_ns",
                (consumer, queue, time.time_ns(), limit),
            ).fetchall()
        rows.sort(key=lambda row: (row[3], row[0]))
        return [
            Delivery(queue, bytes(body), deliveries, msg_id) for msg_id, body, deliveries, _ in rows
        ]

    def ack_many(self, deliveries: Sequence[Delivery], also: InTransaction = None) -> None:
        """Delete settled messages, in one transaction with what ``also`` writes first (their
        states, by a result backend sharing the file: ``taskd.pairs``).

        Synced soon after, not waited for: a power cut that loses the commit loses the
        states with it, so the messages are delivered again."""
        ids = [(delivery.handle,) for delivery in deliveries]
        queue = deliveries[0].queue if deliveries else None
        with self._guard(queue), self._lock, self._writer.transaction():
            if also is not None:
                also(self._conn)
            self._conn.executemany("DELETE FROM taskd_messages WHERE id = ?", ids)
        self._writer.committed()

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        ids = [(delivery.handle, self._consumer_id) for delivery in deliveries]
        queue = deliveries[0].queue if deliveries else None
        with self._guard(queue), self._lock, self._writer.transaction():
            # due_ns is kept: each goes back to its place at the head of the queue
            self._conn.executemany(
                "UPDATE taskd_messages SET consumer = NULL, deliveries = deliveries - 1"
                " WHERE id = ? AND consumer = ?",
                ids,
            )
        for _ in deliveries[:2]:  # idle consumers can take them now
            self._doorbell.ring()

    def reject(self, delivery: Delivery, reason: str) -> None:
        with self._guard(delivery.queue), self._lock, self._writer.transaction():
            dropped = sqlite_dead.set_aside(
                self._conn, delivery.queue, delivery.body, reason, self._dead_cap
            )
            self._conn.execute("DELETE FROM taskd_messages WHERE id = ?", (delivery.handle,))
        self._writer.committed()
        self._dead_cap.dropped(delivery.queue, dropped)

    def close(self) -> None:
        if self._beats is not None:
            self._beats.stop()
        if self._heartbeat_conn is not None:
            self._heartbeat_conn.close()
        with self._lock:
            if self._consumer_id is not None:
                try:
                    with self._writer.transaction():
                        self._release_consumer(self._conn, [self._consumer_id])
                except sqlite3.Error:
                    pass  # the next reclaim by another consumer does the same
            self._writer.close()  # what this process committed is on disk
            self._conn.close()
        self._doorbell.close()

    # -- liveness -------------------------------------------------------------------------

    def _beat_and_reclaim(self) -> None:
        if self._heartbeat_conn is None:
            self._heartbeat_conn = self._connect()
        with self._guard():
            self._beat(self._heartbeat_conn)
            self._judge.beat_succeeded()
            self._reclaim(self._heartbeat_conn)

    def _beat(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO taskd_consumers (id, host, pid, beat_ns) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET beat_ns = excluded.beat_ns",
            (self._consumer_id, lease.MACHINE, os.getpid(), time.time_ns()),
        )

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        """Give the messages of consumers that are gone back to their queues: those whose
        process is gone from this machine, and (once this one may judge) silent ones."""
        stale_ns = time.time_ns() - int(self._lease.consumer_timeout_s * 1e9)
        by_silence = self._judge.may_judge()
        rows = conn.execute("SELECT id, host, pid, beat_ns FROM taskd_consumers").fetchall()
        gone = [
            consumer_id
            for consumer_id, host, pid, beat_ns in rows
            if (by_silence and beat_ns < stale_ns)
            or (host == lease.MACHINE and not process_alive(pid))
        ]
        orphaned = conn.execute(
            "SELECT 1 FROM taskd_messages WHERE consumer IS NOT NULL"
            " AND consumer NOT IN (SELECT id FROM taskd_consumers) LIMIT 1"
        ).fetchone()
        if gone or orphaned:
            with write_transaction(conn):
                recovered = self._release_consumer(conn, gone)
            if recovered:
                log.warning("messages_recovered", count=recovered, dead_consumers=gone)

    @staticmethod
    def _release_consumer(conn: sqlite3.Connection, consumer_ids: Sequence[str]) -> int:
        """Forget these consumers; what no known consumer holds goes back. How many did."""
        conn.executemany("DELETE FROM taskd_consumers WHERE id = ?", [(c,) for c in consumer_ids])
        return conn.execute(
            "UPDATE taskd_messages SET consumer = NULL WHERE consumer IS NOT NULL"
            " AND consumer NOT IN (SELECT id FROM taskd_consumers)"
        ).rowcount

    # -- taskctl --------------------------------------------------------------------------

    def _scalar(self, sql: str, params: tuple[object, ...]) -> int:
        with self._guard(), self._lock:
            return int(self._conn.execute(sql, params).fetchone()[0])

    def size(self, queue: str) -> int:
        return self._scalar(
            "SELECT count(*) FROM taskd_messages WHERE queue = ? AND consumer IS NULL"
            " AND due_ns <= ?",
            (queue, time.time_ns()),
        )

    def delayed(self, queue: str) -> int:
        return self._scalar(
            "SELECT count(*) FROM taskd_messages WHERE queue = ? AND consumer IS NULL"
            " AND due_ns > ?",
            (queue, time.time_ns()),
        )

    def peek(self, queue: str, limit: int) -> list[bytes]:
        with self._guard(queue), self._lock:
            rows = self._conn.execute(
                "SELECT body FROM taskd_messages WHERE queue = ? AND consumer IS NULL"
                " AND due_ns <= ? ORDER BY due_ns, id LIMIT ?",
                (queue, time.time_ns(), limit),
            ).fetchall()
        return [bytes(body) for (body,) in rows]

    def purge(self, queue: str) -> int:
        with self._guard(queue), self._lock:
            cursor = self._conn.execute(
                "DELETE FROM taskd_messages WHERE queue = ? AND consumer IS NULL", (queue,)
            )
        self._writer.synced()  # an operator's change sticks once taskctl says it is done
        return cursor.rowcount

    def holding(self, queue: str) -> Holding:
        with self._guard(queue), self._lock:
            rows = self._conn.execute(
                "SELECT m.consumer, c.beat_ns, count(*) FROM taskd_messages m"
                " LEFT JOIN taskd_consumers c ON c.id = m.consumer"
                " WHERE m.queue = ? AND m.consumer IS NOT NULL GROUP BY m.consumer",
                (queue,),
            ).fetchall()
        now_ns, timeout_s = time.time_ns(), self._lease.consumer_timeout_s
        dead = sum(
            count
            for consumer, beat_ns, count in rows
            if lease.seems_dead(
                consumer, None if beat_ns is None else (now_ns - beat_ns) / 1e9, timeout_s
            )
        )
        return Holding(sum(count for *_, count in rows) - dead, dead)

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        with self._guard(queue), self._lock:
            return sqlite_dead.newest(self._conn, queue, limit)

    def requeue_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        """In one transaction: out of the dead letters, in at the tail of the queue with no
        deliveries counted."""
        with self._guard(queue), self._lock, self._writer.transaction():
            bodies = sqlite_dead.take(self._conn, queue, ids)
            now = time.time_ns()
            self._conn.executemany(
                "INSERT INTO taskd_messages (queue, body, due_ns) VALUES (?, ?, ?)",
                [(queue, body, now) for body in bodies],
            )
        self._writer.synced()
        return len(bodies)

    def drop_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        with self._guard(queue), self._lock, self._writer.transaction():
            dropped = len(sqlite_dead.take(self._conn, queue, ids))
        self._writer.synced()
        return dropped
