"""The embedded SQLite default syncs to disk in groups (``sqlite_writer.GroupSync``): a commit is
visible at once, a send is confirmed only by a sync that began after its commit, and a failed
sync is an error the sender sees. These run on the default ``synchronous=full``, with the
sync itself replaced where a test must hold it or fail it."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd import sqlite_writer, sqlitedb
from taskd.backends import open_backend
from taskd.client import Client
from taskd.config import load_config
from taskd.errors import BackendError, BrokerError, SendError
from taskd.wire import State, TaskState, new_id
from tests.support.harness import config_data, wait_until, write_config

THREAD_DEADLINE_S = 20.0


class HeldSync:
    """Stands in for the sync of a file: counts the syncs, and holds each one until
    released (or fails it) as the test says."""

    def __init__(self) -> None:
        self.calls = 0
        self.started = threading.Event()
        self.released = threading.Event()
        self.failure: OSError | None = None

    def __call__(self, path: str) -> OSError | None:
        assert path.endswith("-wal")
        self.calls += 1
        self.started.set()
        assert self.released.wait(THREAD_DEADLINE_S), "the test never released the sync"
        return self.failure


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldSync:
    sync = HeldSync()
    monkeypatch.setattr(sqlite_writer, "_sync_file", sync)
    return sync


@pytest.fixture
def database(tmp_path: Path, namespace: str) -> Path:
    return tmp_path / f"{namespace}.db"


@pytest.fixture
def full_client(database: Path, namespace: str, tmp_path: Path) -> Iterator[Callable[..., Client]]:
    """``full_client(mode="", **options)``: clients on the embedded default, whose URL names
    no synchronous mode (full), or ``mode``."""
    opened: list[Client] = []

    def make(mode: str = "", **options: Any) -> Client:
        url = f"sqlite://{database}" + (f"?synchronous={mode}" if mode else "")
        data = config_data("sqlite", namespace, tmp_path, broker=url, result_backend=url)
        path = write_config(tmp_path, {**data, "default_queue": namespace})
        client = Client(load_config(path), **options)
        opened.append(client)
        return client

    yield make
    for client in opened:
        with contextlib.suppress(SendError, BrokerError):  # the tests that provoke one checked it
            client.close()


def _queued(database: Path, namespace: str) -> int:
    """Messages waiting in the queue, as another process reading the file sees them."""
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return conn.execute(
            "SELECT count(*) FROM taskd_messages WHERE queue = ?", (namespace,)
        ).fetchone()[0]


def _in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``call`` in a thread; the list gets its result or its exception."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("mode", ["", "extra"])  # extra is full in WAL mode
def test_a_send_is_visible_at_once_and_returns_only_once_synced(
    mode: str,
    full_client: Callable[..., Client],
    held: HeldSync,
    database: Path,
    namespace: str,
) -> None:
    client = full_client(mode, pipeline=0)
    assert client.broker is not None  # opened here: the send in the thread only sends
    sending, outcome = _in_thread(lambda: client.send("count", 1))
    wait_until(lambda: _queued(database, namespace) == 1, THREAD_DEADLINE_S)
    assert held.started.wait(THREAD_DEADLINE_S)
    assert sending.is_alive() and not outcome  # committed and visible, not yet confirmed
    held.released.set()
    sending.join(THREAD_DEADLINE_S)
    assert not sending.is_alive()
    assert outcome[0].state().state is State.PENDING


def test_pipelined_sends_share_syncs_and_flush_waits_for_the_last(
    full_client: Callable[..., Client], held: HeldSync, database: Path, namespace: str
) -> None:
    client = full_client(pipeline=64)
    sent = [client.send("count", n) for n in range(50)]  # none waits: the first sync is held
    assert _queued(database, namespace) == 50
    assert held.started.wait(THREAD_DEADLINE_S)
    flushing, outcome = _in_thread(client.flush)
    assert held.calls == 1 and flushing.is_alive()
    held.released.set()
    flushing.join(THREAD_DEADLINE_S)
    assert outcome == [None]
    # The held sync covered the sends committed before it began; one more covers the rest.
    assert 1 <= held.calls <= 2
    states = client.backend.get_states([result.task_id for result in sent])
    assert {state.state for state in states} == {State.PENDING}


def test_commits_nobody_waits_for_share_one_sync_which_a_wait_starts(
    full_client: Callable[..., Client],
    held: HeldSync,
    monkeypatch: pytest.MonkeyPatch,
    database: Path,
    namespace: str,
) -> None:
    """Each sync stalls the file's writers: commits nobody waits for yet are gathered,
    and a caller that waits starts the sync at once instead of waiting out the gathering."""
    monkeypatch.setattr(sqlite_writer, "GATHER_S", 3600.0)
    held.released.set()
    client = full_client(pipeline=64)
    sent = [client.send("count", n) for n in range(20)]
    assert _queued(database, namespace) == 20  # committed and visible
    assert held.calls == 0  # gathering: nobody waits yet
    flushing, outcome = _in_thread(client.flush)
    flushing.join(THREAD_DEADLINE_S)
    assert outcome == [None]
    assert held.calls == 1  # one sync for all twenty
    states = client.backend.get_states([result.task_id for result in sent])
    assert {state.state for state in states} == {State.PENDING}


def test_a_commit_nobody_waits_for_is_synced_once_gathered(
    full_client: Callable[..., Client], held: HeldSync, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power cut loses at most the commits of the last gathering (GATHER_S)."""
    monkeypatch.setattr(sqlite_writer, "GATHER_S", 0.01)
    held.released.set()
    client = full_client(pipeline=64)
    client.send("count", 1)
    # No flush, no confirm awaited: the sync thread syncs it on its own.
    wait_until(lambda: held.calls == 1, THREAD_DEADLINE_S, what="the gathered sync")


def test_a_failed_sync_fails_the_sends_it_covered_and_names_them(
    full_client: Callable[..., Client], held: HeldSync
) -> None:
    held.failure = OSError(errno.EIO, "Input/output error")
    held.released.set()
    with pytest.raises(BrokerError, match=r"syncing .*\.db to disk failed: .*Input/output"):
        full_client(pipeline=0).send("count", 1)

    client = full_client(pipeline=64)
    results = [client.send("count", n) for n in range(3)]
    with pytest.raises(SendError) as caught:
        client.flush()
    assert set(caught.value.task_ids) <= {result.task_id for result in results}
    assert caught.value.task_ids  # the failed sync covered at least the first send

    held.failure = None  # the disk is back: later sends are confirmed
    client.send("count", 4)
    client.flush()


def test_states_on_sqlite_with_another_broker_are_synced_before_set_states_returns(
    held: HeldSync, database: Path, namespace: str, tmp_path: Path, redis_namespace: str
) -> None:
    """A worker acks on the other broker once ``set_states`` returns: the state must be on
    disk by then."""
    url = f"sqlite://{database}"
    data = config_data("redis", redis_namespace, tmp_path, result_backend=url)
    backend = open_backend(load_config(write_config(tmp_path, data)))
    try:
        task_id = new_id()
        writing, outcome = _in_thread(
            lambda: backend.set_states([TaskState(task_id, State.SUCCESS)])
        )
        wait_until(lambda: backend.get_state(task_id) is not None, THREAD_DEADLINE_S)
        assert writing.is_alive() and not outcome
        held.released.set()
        writing.join(THREAD_DEADLINE_S)
        assert outcome == [None]
        held.failure = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(BackendError, match="No space left"):
            backend.set_states([TaskState(new_id(), State.SUCCESS)])
    finally:
        held.failure = None
        backend.close()


def test_synchronous_normal_never_waits_for_a_sync(
    full_client: Callable[..., Client], held: HeldSync
) -> None:
    """The user opted out of power-cut safety for speed."""
    with full_client("normal", pipeline=8) as client:
        result = client.send("count", 1)
        client.flush()
        assert result.state().state is State.PENDING
    assert held.calls == 0


# -- one writer at a time --------------------------------------------------------------------


def _flock_waiters(pid: int) -> int:
    """Lock requests of ``pid`` that wait for an flock held by another (``/proc/locks``
    lists a waiter with ``->`` before its type)."""
    text = Path("/proc/locks").read_text()
    return sum(
        1
        for line in text.splitlines()
        if "->" in line and "FLOCK" in line and f" {pid} " in f" {line.split('FLOCK', 1)[1]} "
    )


def test_the_writers_lock_is_taken_again_by_a_forked_child(tmp_path: Path) -> None:
    """A forked child opens the lock file again: the open file it inherits holds the
    parent's lock, which would exclude nothing between the two."""
    database = tmp_path / "w.db"
    conn = sqlitedb.connect(database, "FULL", "CREATE TABLE IF NOT EXISTS t (x INTEGER);")
    writer = sqlite_writer.Writer(conn, database, "FULL", BrokerError, "sqlite")
    with writer.transaction():
        conn.execute("INSERT INTO t VALUES (1)")
    assert (tmp_path / "w.db.lock").exists()
    with writer._lock:  # the lock only: SQLite connections must not cross a fork mid-write
        pid = os.fork()
        if pid == 0:  # the child takes the lock it inherited, once the parent lets go
            with writer._lock:
                os._exit(0)
        wait_until(lambda: _flock_waiters(pid) == 1, THREAD_DEADLINE_S, what="child waits")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.close()
    conn.close()


def test_the_log_starts_over_while_writers_never_pause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints run after commits, letting others write meanwhile; a log that grew past
    LOG_RESTART_PAGES all the same is checkpointed under the lock, so it starts over."""
    monkeypatch.setattr(sqlite_writer, "CHECKPOINT_EVERY", 10)
    monkeypatch.setattr(sqlite_writer, "LOG_RESTART_PAGES", 50)
    database = tmp_path / "busy.db"
    schema = "CREATE TABLE IF NOT EXISTS t (x BLOB);"
    biggest = 0

    def write(commits: int) -> None:
        nonlocal biggest
        conn = sqlitedb.connect(database, "NORMAL", schema)
        writer = sqlite_writer.Writer(conn, database, "NORMAL", BrokerError, "sqlite")
        for _ in range(commits):
            with writer.transaction():
                conn.execute("INSERT INTO t VALUES (?)", (os.urandom(3000),))
            biggest = max(biggest, Path(f"{database}-wal").stat().st_size)
        writer.close()
        conn.close()

    sqlitedb.connect(database, "NORMAL", schema).close()
    threads = [threading.Thread(target=write, args=(1000,)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    rows = sqlitedb.connect(database, "NORMAL", schema).execute("SELECT count(*) FROM t")
    assert rows.fetchone()[0] == 3000
    # Were the log never started over, 3,000 commits of 2 pages or so would make it some
    # 35 MB; past 50 pages it is, give or take the commits made meanwhile (3-5 MB here).
    assert biggest < 10_000_000, biggest
