"""The MongoDB result backend: machinery v2's collections and documents, with its races closed.

URL ``mongodb://[user:password@]host[:port][,...][/database][?options]`` or ``mongodb+srv://``.
The database is ``mongodb.database``, else the URL's, else ``machinery``. As in machinery
(``v2/backends/mongo/mongodb.go``), collection ``tasks`` holds ``{_id: <task id>, task_name,
state, results: [{type, value}], error, created_at, delete_at}`` (dates as BSON dates, integer
results as int64, ``[]byte`` as binary, as Go's driver writes them), ``group_metas`` holds
``{_id: <group id>, task_uuids, chord_triggered, lock, created_at}``, and each has a TTL index
on ``delete_at`` (expireAfterSeconds 0), created once per backend.

Unlike machinery:
- every write sets ``delete_at = now + results_expire_in`` (machinery: SUCCESS/FAILURE only;
  its groups never expire), and a record past it reads as gone (the TTL monitor is lazy);
- PENDING replaces the document; a later state is one pipeline update that keeps the stored
  ``task_name`` and ``created_at`` (machinery's merge rule); ``created_at_ns`` keeps the
  nanoseconds a BSON date drops;
- a chord is claimed by one findAndModify recording ``chord_claimant`` (machinery's UpdateOne
  says yes even when nothing matched); members count themselves in ``chord_counted``;
- a string result holding JSON stays a string; machinery's ``{type: "json"}`` reads as one.

Boards (taskd's own) are in ``taskd_boards``: see ``taskd.backends.mongodb_board``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Self

from taskd import drivers
from taskd.backends import mongodb_board as boards
from taskd.backends import mongodb_documents as docs
from taskd.backends.base import SPENT_CLAIM, Entry, ResultBackend
from taskd.backends.mongodb_url import check_database, parse_url
from taskd.config import Config
from taskd.errors import ArgumentError, BackendError, BackendUnavailable, ConfigError, DecodeError
from taskd.wire import GroupMeta, State, TaskState
from taskd.wire.gotime import ZERO_TIME

DRIVER = "mongodb"
DEFAULT_DATABASE = "machinery"  # machinery's, when its config has no MongoDB section
TASKS, GROUPS = "tasks", "group_metas"  # machinery's collection names
# Client timeouts unless the URL sets them: a down server fails a call in seconds, so the
# worker's reconnect loop (not a hung call) rides out an outage.
CLIENT_DEFAULTS = dict(serverSelectionTimeoutMS=5000, connectTimeoutMS=5000, socketTimeoutMS=15000)
ZERO_MS = ZERO_TIME.unix_ns // 1_000_000  # Go's zero time.Time as a BSON date
FAR_FUTURE_MS = 253_402_300_799_000  # 9999-12-31T23:59:59Z: "no delete_at" in comparisons
INDEX_CONFLICTS = frozenset({85, 86})  # IndexOptionsConflict, IndexKeySpecsConflict


class MongoDBBackend(ResultBackend):
    driver = DRIVER

    def __init__(self, url: str, config: Config) -> None:
        try:
            import pymongo  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                "result_backend",
                f"the MongoDB driver needs pymongo (a dependency of taskd): {exc}",
                config.source,
            ) from None
        url_database, options = parse_url(url, "result_backend", config.source)
        key = "mongodb.database" if config.mongodb.database else "result_backend"
        database = config.mongodb.database or url_database or DEFAULT_DATABASE
        self._url, self._database = url, check_database(database, key, config.source)
        self._client_options = {
            name: value for name, value in CLIENT_DEFAULTS.items() if name.lower() not in options
        }
        self._expire_ms = config.results_expire_in_s * 1000
        self._source = config.source
        self._client: Any = None
        self._indexed = False
        self._lock = threading.Lock()

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    def check(self, *, writes: bool = True, serves: bool = False) -> None:
        """MongoDB refusing what every worker does first: ConfigError naming the key, where
        each child would fail at boot and the daemon exit 1 (credentials it refuses, a user
        that may not read the database). Writers make the TTL indexes, as the first write
        would, so a user that may only read is refused too; a reader reads a missing id."""
        try:
            with self._translated(None):
                if writes:
                    self._writable(TASKS)
                else:
                    self._collection(TASKS).find_one({"_id": ""})
        except BackendUnavailable:  # checked once it answers
            return
        except BackendError as exc:
            raise ConfigError(
                "result_backend",
                f"MongoDB refused taskd's {'index' if writes else 'read'} in database"
                f" {self._database!r}: {exc.reason}. Check the credentials in the URL and that"
                " the user's role allows readWrite on that database",
                self._source,
            ) from None

    def _translated(self, about: str | None) -> AbstractContextManager[None]:
        from bson.errors import BSONError
        from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError, WTimeoutError

        transient = (ConnectionFailure, ExecutionTimeout, WTimeoutError)  # AutoReconnect too
        permanent = (PyMongoError, BSONError, OverflowError)
        errors = (BackendUnavailable, BackendError)
        return drivers.translated(transient, permanent, *errors, self.driver, task_id=about)

    def _collection(self, name: str) -> Any:
        """A collection, connecting on first use; the TTL indexes come with the first write."""
        with self._lock:
            if self._client is None:
                from bson import DatetimeConversion
                from pymongo import MongoClient

                self._client = MongoClient(
                    self._url,
                    appname="taskd",
                    datetime_conversion=DatetimeConversion.DATETIME_MS,  # Go's year 1, exactly
                    **self._client_options,
                )
            return self._client[self._database][name]

    def _writable(self, name: str) -> Any:
        collection = self._collection(name)
        if not self._indexed:
            from pymongo.errors import OperationFailure

            for each in (TASKS, GROUPS, boards.BOARDS):
                try:  # the same index machinery creates: {delete_at: 1}, expireAfterSeconds 0
                    self._collection(each).create_index("delete_at", expireAfterSeconds=0)
                except OperationFailure as exc:
                    if exc.code not in INDEX_CONFLICTS:  # one of another shape is there
                        raise
            boards.create_index(self._collection(boards.BOARDS))
            self._indexed = True
        return collection

    # -- states -----------------------------------------------------------------------------

    def set_states(self, states: Sequence[TaskState]) -> None:
        if not states:
            return
        now_ms = docs.now_ms()
        writes = [self._write_of(state, now_ms) for state in states]
        with self._translated(states[0].task_uuid):
            # Ordered: a task's states in one batch (STARTED, then SUCCESS) land in turn.
            self._writable(TASKS).bulk_write(writes, ordered=True)

    def _write_of(self, state: TaskState, now_ms: int) -> Any:
        from bson import DatetimeMS, Int64
        from pymongo import ReplaceOne, UpdateOne

        results = state.results
        fields = {
            "state": state.state.value,
            "results": None
            if results is None
            else [{"type": r.type, "value": docs.bson_value(r.type, r.value)} for r in results],
            "error": state.error,
            "delete_at": DatetimeMS(now_ms + self._expire_ms),
        }
        created = docs.created_fields(state.created_at)
        if state.ttl:
            fields["ttl"] = Int64(state.ttl)
        if state.state is State.PENDING:  # a sender's record replaces whatever was there
            document = {"_id": state.task_uuid, "task_name": state.task_name, **fields, **created}
            return ReplaceOne({"_id": state.task_uuid}, document, upsert=True)
        # machinery's merge rule in one atomic update: the stored name and time stay unless
        # the record is missing, past its delete_at, or has none (an empty name, a zero time).
        live = {"$gt": [{"$ifNull": ["$delete_at", DatetimeMS(FAR_FUTURE_MS)]}, DatetimeMS(now_ms)]}
        has_name = {"$ne": [{"$ifNull": ["$task_name", ""]}, ""]}
        has_time = {"$gt": [{"$ifNull": ["$created_at", DatetimeMS(ZERO_MS)]}, DatetimeMS(ZERO_MS)]}
        keep_name, keep_time = {"$and": [live, has_name]}, {"$and": [live, has_time]}
        merged = {name: {"$literal": value} for name, value in fields.items()}
        merged["task_name"] = {"$cond": [keep_name, "$task_name", {"$literal": state.task_name}]}
        for name, value in created.items():
            merged[name] = {"$cond": [keep_time, f"${name}", {"$literal": value}]}
        pipeline = [{"$set": merged}] if state.ttl else [{"$project": {"ttl": 0}}, {"$set": merged}]
        return UpdateOne({"_id": state.task_uuid}, pipeline, upsert=True)

    def get_states(self, task_ids: Sequence[str]) -> list[TaskState | None]:
        if not task_ids:
            return []
        with self._translated(task_ids[0]):
            found = {
                doc["_id"]: doc
                for doc in self._collection(TASKS).find({"_id": {"$in": list(set(task_ids))}})
            }
        now_ms = docs.now_ms()
        return [
            _decoded(docs.state_of, found[task_id], task_id, "state")
            if task_id in found and docs.live(found[task_id], now_ms)
            else None
            for task_id in task_ids
        ]

    def purge(self, task_id: str) -> None:
        with self._translated(task_id):
            self._collection(TASKS).delete_one({"_id": task_id})

    # -- groups and chords -------------------------------------------------------------------

    def init_group(self, group: GroupMeta) -> None:
        from bson import DatetimeMS, Int64

        document = {
            "_id": group.group_uuid,
            "task_uuids": list(group.task_uuids),
            "chord_triggered": group.chord_triggered,
            "lock": group.lock,
            **docs.created_fields(group.created_at),
            "delete_at": DatetimeMS(docs.now_ms() + self._expire_ms),
            "chord_counted": 0,  # count_chord_member's (machinery's readers ignore it)
        }
        if group.ttl:
            document["ttl"] = Int64(group.ttl)
        with self._translated(group.group_uuid):
            self._writable(GROUPS).replace_one({"_id": group.group_uuid}, document, upsert=True)

    def get_group(self, group_id: str) -> GroupMeta | None:
        with self._translated(group_id):
            doc = self._collection(GROUPS).find_one({"_id": group_id})
        if doc is None or not docs.live(doc, docs.now_ms()):
            return None
        return _decoded(docs.group_of, doc, group_id, "group")

    def claim_chord(self, group_id: str, claimant: str) -> bool:
        from bson import DatetimeMS

        live = {"$or": [{"delete_at": None}, {"delete_at": {"$gt": DatetimeMS(docs.now_ms())}}]}
        covered = {"$regex": f"^{re.escape(claimant)}/"}  # a bare task id: its runs (claim_covers)
        claimable = {
            "$or": [
                {"chord_triggered": {"$ne": True}},
                {"chord_claimant": claimant},
                {"chord_claimant": covered},
            ]
        }
        with self._translated(group_id):
            claimed = self._collection(GROUPS).find_one_and_update(
                {"_id": group_id, "$and": [live, claimable]},
                {"$set": {"chord_triggered": True, "chord_claimant": claimant}},
                projection={"_id": 1},
            )
            if claimed is not None:
                return True
            if self.get_group(group_id) is None:
                raise BackendError(self.driver, "group metadata is missing or expired", group_id)
            return False

    def chord_fired(self, group_id: str) -> None:
        with self._translated(group_id):
            spent = {"$set": {"chord_claimant": SPENT_CLAIM}}
            self._collection(GROUPS).update_one({"_id": group_id}, spent)

    def count_chord_member(self, group_id: str, task_id: str) -> int | None:
        """None for a group without ``chord_counted`` (a machinery producer's)."""
        counts = {"_id": group_id, "chord_counted": {"$exists": True}}
        with self._translated(group_id):
            found = self._collection(GROUPS).find_one_and_update(
                counts, {"$inc": {"chord_counted": 1}}, {"chord_counted": 1}, return_document=True
            )
        return None if found is None else int(found["chord_counted"])

    # -- boards -----------------------------------------------------------------------------

    def post(self, board: str, entries: Mapping[str, Entry | None], ttl_s: float) -> None:
        with self._translated(f"board {board}"):
            boards.post(self._writable(boards.BOARDS), board, entries, ttl_s, docs.now_ms())

    def read_board(self, board: str) -> dict[str, Entry]:
        with self._translated(f"board {board}"):
            return boards.read(self._collection(boards.BOARDS), board, docs.now_ms())

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _decoded(decode: Any, doc: dict[str, Any], about: str, what: str) -> Any:
    try:
        return decode(doc)
    except (DecodeError, ArgumentError, ValueError, TypeError) as exc:
        raise BackendError(DRIVER, f"stored {what} is not valid: {exc}", about) from exc
