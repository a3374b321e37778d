"""The MongoDB backend against documents as Go's machinery v2 writes and reads them, over a real
socket (the run's MongoDB: the mockupdb + mongomock wire server, or $TASKD_TEST_MONGODB_URL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import Decimal128, Int64

from taskd.backends import ResultBackend, open_backend
from taskd.backends.mongodb_documents import bson_value, wire_value
from taskd.config import Config
from taskd.errors import BackendUnavailable, ConfigError
from taskd.wire import ZERO_TIME, GoTime, GroupMeta, State, TaskResult, TaskState, new_id
from tests.backends.test_merge_rule import CASES, with_id
from tests.support import harness
from tests.support.harness import config_data, free_port, taskctl, write_config

GO_CREATED = datetime(2026, 11, 27, 10, 0, 0, 123_000, tzinfo=UTC)  # Go: time.Now().UTC(), in ms


@pytest.fixture
def database(mongodb: Any, mongodb_namespace: str) -> Any:
    """This test's database, as a Go worker sharing it would see it."""
    return mongodb[mongodb_namespace]


@pytest.fixture
def backend(make_config: Callable[..., Any], database: Any) -> Iterator[ResultBackend]:
    opened = open_backend(make_config("mongodb"))
    yield opened
    opened.close()


def go_writes_state(database: Any, task_id: str, fields: dict[str, Any]) -> None:
    """machinery v2's updateState: ``UpdateOne({_id}, {$set: fields}, upsert)``."""
    database.tasks.update_one({"_id": task_id}, {"$set": fields}, upsert=True)


def test_a_state_go_wrote_reads_back_through_taskctl(
    database: Any, namespace: str, tmp_path: Path
) -> None:
    task_id = new_id()
    # SetStatePending, then SetStateSuccess (which sets neither task_name nor created_at).
    go_writes_state(
        database, task_id, {"state": "PENDING", "task_name": "sum", "created_at": GO_CREATED}
    )
    expires = datetime.now(UTC) + timedelta(seconds=3600)
    results = [{"type": "int64", "value": Int64(6)}]
    go_writes_state(
        database, task_id, {"state": "SUCCESS", "results": results, "delete_at": expires}
    )
    config = write_config(tmp_path, config_data("mongodb", namespace, tmp_path))
    plain = taskctl(tmp_path, config, "result", task_id)
    assert (plain.returncode, plain.stdout) == (0, "6\n"), plain.stderr
    shown = taskctl(tmp_path, config, "result", task_id, "--json")
    assert shown.returncode == 0, shown.stderr
    state = json.loads(shown.stdout)
    assert state["State"] == "SUCCESS"
    assert state["TaskName"] == "sum"
    assert state["CreatedAt"] == "2026-11-27T10:00:00.123Z"
    assert state["Results"] == [{"Type": "int64", "Value": 6}]


def test_go_result_forms_decode(backend: ResultBackend, database: Any) -> None:
    """A FAILURE with no PENDING before it (zero time, no name), and SUCCESS results in the
    forms Go's driver stores: binary for []byte, and machinery's ``{type: "json"}``."""
    failed, succeeded = new_id(), new_id()
    go_writes_state(database, failed, {"state": "FAILURE", "error": "boom"})
    values = [
        {"type": "[]byte", "value": b"hi"},
        {"type": "json", "value": {"b": [1.0, "x"], "a": 2.5}},
        {"type": "float64", "value": 1.5},
    ]
    go_writes_state(database, succeeded, {"state": "SUCCESS", "results": values})
    assert backend.get_states([failed, succeeded]) == [
        TaskState(failed, State.FAILURE, error="boom", created_at=ZERO_TIME),
        TaskState(
            succeeded,
            State.SUCCESS,
            results=(
                TaskResult("[]byte", "aGk="),
                TaskResult("string", '{"a":2.5,"b":[1,"x"]}'),
                TaskResult("float64", 1.5),
            ),
        ),
    ]


def test_taskd_writes_machinerys_layout(backend: ResultBackend, database: Any) -> None:
    task_id, created = new_id(), GoTime.parse("2026-11-27T10:00:00.123456789Z")
    backend.set_state(TaskState(task_id, State.PENDING, task_name="sum", created_at=created))
    backend.set_state(
        TaskState(task_id, State.SUCCESS, created_at=created, results=(TaskResult("int64", 6),))
    )
    stored = database.tasks.find_one({"_id": task_id})
    go_fields = {"_id", "task_name", "state", "results", "error", "created_at", "delete_at"}
    assert set(stored) == go_fields | {"created_at_ns"}
    assert (stored["state"], stored["task_name"], stored["error"]) == ("SUCCESS", "sum", "")
    assert stored["results"] == [{"type": "int64", "value": 6}]
    assert stored["created_at"].replace(tzinfo=UTC) == GO_CREATED  # a BSON date, to the ms
    left = stored["delete_at"].replace(tzinfo=UTC) - datetime.now(UTC)
    assert timedelta(seconds=250) < left <= timedelta(seconds=harness.TEST_RESULTS_EXPIRE_S)
    assert backend.get_state(task_id) == TaskState(
        task_id,
        State.SUCCESS,
        task_name="sum",
        created_at=created,
        results=(TaskResult("int64", 6),),
    )
    for collection in (database.tasks, database.group_metas):
        assert collection.index_information()["delete_at_1"]["expireAfterSeconds"] == 0


@pytest.mark.parametrize(
    ("type_name", "value", "stored"),
    [
        ("int64", 6, Int64(6)),
        ("uint64", 2**64 - 1, Decimal128(str(2**64 - 1))),
        ("[]int32", [1, -2], [Int64(1), Int64(-2)]),
        ("float64", 3, 3.0),
        ("[]byte", "aGk=", b"hi"),
        ("string", "x", "x"),
        ("bool", True, True),
    ],
)
def test_result_values_are_stored_as_gos_driver_stores_them(
    type_name: str, value: Any, stored: Any
) -> None:
    as_bson = bson_value(type_name, value)
    assert as_bson == stored
    assert type(as_bson) is type(stored)  # Go's ReflectValue reads int64, not int32
    assert wire_value(as_bson) == value


def test_a_group_go_wrote_is_read_and_claimed_once(backend: ResultBackend, database: Any) -> None:
    group_id, members = new_id("group"), [new_id(), new_id()]
    database.group_metas.insert_one(  # machinery's InitGroup: InsertOne(GroupMeta)
        {
            "_id": group_id,
            "task_uuids": members,
            "chord_triggered": False,
            "lock": False,
            "created_at": GO_CREATED,
        }
    )
    assert backend.get_group(group_id) == GroupMeta(
        group_id, tuple(members), created_at=GoTime.from_datetime(GO_CREATED)
    )
    assert backend.claim_chord(group_id, members[1]) is True
    assert backend.claim_chord(group_id, members[0]) is False
    assert backend.claim_chord(group_id, members[1]) is True
    stored = database.group_metas.find_one({"_id": group_id})
    assert (stored["chord_triggered"], stored["chord_claimant"]) == (True, members[1])
    triggered_by_go = new_id("group")
    database.group_metas.insert_one(
        {"_id": triggered_by_go, "task_uuids": members, "chord_triggered": True, "lock": False}
    )
    assert backend.claim_chord(triggered_by_go, members[0]) is False


@pytest.mark.parametrize(("case", "stored", "new", "expected"), CASES, ids=[c[0] for c in CASES])
def test_the_merge_rule_in_one_update(
    case: str, stored: TaskState | None, new: TaskState, expected: TaskState, backend: ResultBackend
) -> None:
    task_id = new_id()
    if stored is not None:
        backend.set_state(with_id(stored, task_id))
    backend.set_state(with_id(new, task_id))
    assert backend.get_state(task_id) == with_id(expected, task_id)


def test_a_record_past_its_delete_at_is_gone_and_not_merged(
    backend: ResultBackend, database: Any
) -> None:
    task_id, created = new_id(), GoTime.now()
    past = datetime.now(UTC) - timedelta(seconds=1)
    go_writes_state(
        database,
        task_id,
        {"state": "SUCCESS", "task_name": "old", "created_at": GO_CREATED, "delete_at": past},
    )
    assert backend.get_state(task_id) is None  # though MongoDB's TTL monitor has not run
    backend.set_state(TaskState(task_id, State.STARTED, task_name="new", created_at=created))
    assert backend.get_state(task_id) == TaskState(
        task_id, State.STARTED, task_name="new", created_at=created
    )


def test_the_database_is_the_configured_one_else_the_urls(
    mongodb: Any, mongodb_namespace: str
) -> None:
    elsewhere = f"{mongodb_namespace}-url"
    named_in_url = replace(Config(), result_backend=f"{harness.MONGODB_URL}/{elsewhere}")
    configured = replace(
        named_in_url, mongodb=replace(Config().mongodb, database=mongodb_namespace)
    )
    from_url = replace(Config(), result_backend=f"{harness.MONGODB_URL}/{mongodb_namespace}")
    for config in (configured, from_url):
        backend, task_id = open_backend(config), new_id()
        try:
            backend.set_state(TaskState(task_id, State.PENDING, created_at=GoTime.now()))
        finally:
            backend.close()
        assert mongodb[mongodb_namespace].tasks.find_one({"_id": task_id}) is not None
    assert elsewhere not in mongodb.list_database_names()


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://",
        "mongodb://127.0.0.1:99999",
        "mongodb://user:s3cret@127.0.0.1/bad$name",
        "mongodb+srv://user:s3cret@a.example,b.example",
        "mongodb+srv://a.example:27017",
    ],
)
def test_a_malformed_url_names_the_key_and_hides_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_backend(replace(Config(), result_backend=url))
    assert caught.value.key == "result_backend"
    assert "s3cret" not in str(caught.value)


def test_a_bad_database_name_names_its_key() -> None:
    config = replace(Config(), result_backend="mongodb://127.0.0.1")
    with pytest.raises(ConfigError) as caught:
        open_backend(replace(config, mongodb=replace(config.mongodb, database="a.b")))
    assert caught.value.key == "mongodb.database"


def test_no_server_is_unavailable_not_an_error() -> None:
    url = f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=300"
    backend = open_backend(replace(Config(), result_backend=url))
    try:
        with pytest.raises(BackendUnavailable):
            backend.get_state(new_id())
        with pytest.raises(BackendUnavailable):
            backend.set_state(TaskState(new_id(), State.PENDING, created_at=GoTime.now()))
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("deny", "refused", "writes"),
    [
        ("auth", "Authentication failed", True),
        ("auth", "Authentication failed", False),
        ("writes", "not authorized", True),
        ("writes", None, False),  # a user that may read looks with taskctl
    ],
    ids=["credentials-start", "credentials-taskctl", "read-only-start", "read-only-taskctl"],
)
def test_a_mongodb_that_refuses_the_user_is_a_config_error_naming_the_key(
    deny: str, refused: str | None, writes: bool, tmp_path: Path, mongodb_namespace: str
) -> None:
    """Credentials MongoDB refuses, or a role that may only read, passed check-config; each
    child then failed at boot and the daemon exited 1 (taskd_cannot_start_children). Here
    the test server refuses as MongoDB does (AuthenticationFailed, Unauthorized)."""
    import sys

    server = [sys.executable, "-m", "tests.support.mongo_server", "--deny", deny, "--port"]
    with harness.server_on_free_port(
        lambda port: [*server, str(port)], "a MongoDB test server that refuses", cwd=harness.REPO
    ) as port:
        user = "taskd:not-the-password@" if deny == "auth" else ""  # the server has no users
        url = f"mongodb://{user}127.0.0.1:{port}/?serverSelectionTimeoutMS=5000"
        data = config_data("mongodb", mongodb_namespace, tmp_path, result_backend=url)
        config = write_config(tmp_path, data)
        if writes:
            done = harness.run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
        else:
            done = harness.run_cli(tmp_path, "taskctl", "-c", str(config), "result", "task_x")
    if refused is None:  # read as no such task, not refused
        assert done.returncode != 2 and "no state" in done.stderr.lower(), done.stderr
        return
    assert done.returncode == 2, done.stderr
    assert f"{config}: result_backend: MongoDB refused taskd's" in done.stderr
    assert refused in done.stderr and "readWrite" in done.stderr
    assert "not-the-password" not in done.stderr
