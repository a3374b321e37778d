"""The revoked ids a supervisor publishes for its children, in shared memory."""

from __future__ import annotations

import os
import time

import pytest

from taskd.worker.shared_ids import SharedIds


def in_a_fork(read: SharedIds, max_age_s: float = 5.0) -> frozenset[str] | None:
    """What a forked child reads, sent back through a pipe."""
    import pickle

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: read, write it back, leave without running the test's teardown
        try:
            os.write(w, pickle.dumps(read.read(max_age_s)))
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_a_child_reads_what_its_parent_published_after_the_fork() -> None:
    shared = SharedIds()
    assert in_a_fork(shared) is None  # nothing published yet: the child asks the backend
    shared.publish({"task_a", "task_b"})
    assert in_a_fork(shared) == {"task_a", "task_b"}
    shared.publish([])
    assert in_a_fork(shared) == frozenset()
    shared.publish({'odd "id"\n with a newline'})
    assert in_a_fork(shared) == {'odd "id"\n with a newline'}


def test_a_copy_older_than_the_reader_allows_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    shared = SharedIds()
    shared.publish({"task_a"})
    now[0] += 1.0
    assert shared.read(1.0) == {"task_a"}
    now[0] += 0.01
    assert shared.read(1.0) is None
    shared.publish({"task_a"})  # unchanged ids: only the time is written
    assert shared.read(1.0) == {"task_a"}


def test_ids_that_do_not_fit_are_none_so_the_child_reads_the_board_itself() -> None:
    shared = SharedIds(capacity=64)
    shared.publish({f"task_{n}" for n in range(20)})
    assert in_a_fork(shared) is None
    shared.publish({"task_1"})
    assert in_a_fork(shared) == {"task_1"}


def test_a_reader_never_takes_half_a_write() -> None:
    """A publisher changing the ids as fast as it can while a forked reader reads: each read
    is one of the sets published whole, or None (a write under way each try)."""
    sets = [frozenset(f"task_{n}_{k}" for k in range(200)) for n in range(2)]
    shared = SharedIds()
    shared.publish(sets[0])
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the reader
        bad = b"0"
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                seen = shared.read(5.0)
                shared._seen = -1  # read the bytes again each time, not the kept copy
                if seen is not None and seen not in sets:
                    bad = b"1"
                    break
        finally:
            os.write(w, bad)
            os._exit(0)
    os.close(w)
    n = 0
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        shared.publish(sets[n % 2])
        n += 1
    with os.fdopen(r, "rb") as pipe:
        assert pipe.read() == b"0"
    assert n > 100  # it did write meanwhile
