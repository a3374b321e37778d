"""The embedded drivers' file: where a relative URL puts it, for good."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from taskd import sqlitedb
from taskd.backends.sqlite import SQLiteBackend
from taskd.brokers import open_broker
from taskd.wire import GoTime, State, TaskState, new_id


def test_a_relative_file_stays_the_one_opened_when_a_task_changes_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite://results.db`` names a file of the directory the driver was opened in; a
    task's os.chdir must not make it follow to (and create) a file of the same name there."""
    monkeypatch.setattr(sqlitedb, "FILE_CHECK_S", 0.0)  # the path looked at on each use
    opened_in, task_dir = tmp_path / "opened", tmp_path / "task"
    opened_in.mkdir()
    task_dir.mkdir()
    monkeypatch.chdir(opened_in)
    backend = SQLiteBackend(
        sqlitedb.sqlite_path("sqlite://results.db", "result_backend"), "NORMAL", expire_s=60
    )
    try:
        state = TaskState(new_id(), State.SUCCESS, task_name="add", created_at=GoTime.now())
        backend.set_states([state])
        monkeypatch.chdir(task_dir)  # what a task may do in the child
        (stored,) = backend.get_states([state.task_uuid])
        assert stored is not None and stored.state is State.SUCCESS
        assert not (task_dir / "results.db").exists()
    finally:
        backend.close()


def test_a_consumer_on_a_relative_file_is_not_made_stale_by_a_task_changing_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_config: Any
) -> None:
    """Its fetch would take the same name in the task's directory for a deleted file and
    raise DriverStale: the child would make way for a fresh one after every such task."""
    monkeypatch.setattr(sqlitedb, "FILE_CHECK_S", 0.0)
    monkeypatch.chdir(tmp_path)
    config = make_config("sqlite", broker="sqlite://queue.db", result_backend="sqlite://queue.db")
    broker = open_broker(config)
    try:
        broker.publish("q", b"first")
        assert [d.body for d in broker.fetch("q", max_messages=1, wait_s=0)] == [b"first"]
        (tmp_path / "task").mkdir()
        monkeypatch.chdir(tmp_path / "task")
        broker.publish("q", b"second")
        assert [d.body for d in broker.fetch("q", max_messages=1, wait_s=0)] == [b"second"]
    finally:
        broker.close()
