"""A MongoDB wire-protocol server for the tests: mockupdb speaks the protocol, mongomock runs
the commands.

mockupdb decodes each OP_MSG (and the OP_QUERY handshake) from a real socket and sends the
reply back; ``MongoServer`` answers the handshake as a standalone MongoDB 6.0 would and
executes the commands taskd's backend and the tests send (insert, update with upserts and
pipelines, delete, find, findAndModify, createIndexes, aggregate, drop...) against one
in-memory mongomock client, under a lock, so several client processes see one database.
Replies have the shape pymongo reads: cursors with ``firstBatch``, write results with ``n``,
``nModified`` and ``upserted``, findAndModify's ``value``; a failing command is ``ok: 0``
with MongoDB's error code.

Run on its own: ``python -m tests.support.mongo_server --port 27018`` prints the URL and
serves until killed. Loopback only.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import mongomock
from mockupdb import OP_MSG_FLAGS, MockupDB, OpMsg
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure, PyMongoError

MAX_WIRE_VERSION = 17  # MongoDB 6.0; pymongo 4.20 needs at least 9 (4.4)
COMMAND_NOT_FOUND, UNKNOWN_ERROR, DUPLICATE_KEY = 59, 8, 11000
UNAUTHORIZED, AUTHENTICATION_FAILED = 13, 18
WRITES = frozenset({"createindexes", "insert", "update", "delete", "findandmodify", "drop"})

Reply = dict[str, Any]


class MongoServer:
    """One mongomock database behind a mockupdb listener on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, deny: str = "") -> None:
        """``deny``: "auth" fails every authentication (wrong credentials), "writes" refuses
        writes as to a user whose role only reads."""
        self._deny = deny
        self._mock = MockupDB(port=port, request_timeout=int(1e6))
        self._data: Any = mongomock.MongoClient()
        self._lock = threading.Lock()
        self._connection_ids = itertools.count(1)
        self._mock.autoresponds(self._respond)
        self._commands: dict[str, Callable[[str, dict[str, Any]], Reply]] = {
            "hello": self._hello,
            "ismaster": self._hello,
            "ping": lambda db, cmd: {},
            "buildinfo": lambda db, cmd: {"version": "6.0.0", "versionArray": [6, 0, 0, 0]},
            "endsessions": lambda db, cmd: {},
            "killcursors": lambda db, cmd: {"cursorsKilled": cmd["cursors"]},
            "listdatabases": self._list_databases,
            "dropdatabase": self._drop_database,
            "listcollections": self._list_collections,
            "drop": self._drop,
            "createindexes": self._create_indexes,
            "listindexes": self._list_indexes,
            "insert": self._insert,
            "update": self._update,
            "delete": self._delete,
            "find": self._find,
            "findandmodify": self._find_and_modify,
            "aggregate": self._aggregate,
            "count": self._count,
        }

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self._mock.port}"

    def start(self) -> str:
        self._mock.run()
        return self.url

    def stop(self) -> None:
        self._mock.stop()

    # -- dispatch ---------------------------------------------------------------------------

    def _respond(self, request: Any) -> bool:
        """Run one command; mockupdb calls this on the connection's own thread."""
        command = dict(request.doc)
        name = str(request.command_name or "")
        database = str(command.get("$db") or request.namespace.partition(".")[0] or "admin")
        handler = self._commands.get(name.lower())
        if self._deny == "auth" and name.lower() in ("saslstart", "saslcontinue", "authenticate"):
            reply: Reply = _error(AUTHENTICATION_FAILED, "Authentication failed.")
        elif self._deny == "writes" and name.lower() in WRITES:
            reply = _error(UNAUTHORIZED, f"not authorized on {database} to execute command")
        elif handler is None:
            reply = _error(COMMAND_NOT_FOUND, f"no such command: '{name}'")
            print(f"mongo_server: {reply['errmsg']}", file=sys.stderr, flush=True)
        else:
            try:
                with self._lock:
                    reply = {**handler(database, command), "ok": 1}
            except DuplicateKeyError as exc:
                reply = _error(DUPLICATE_KEY, str(exc))
            except OperationFailure as exc:
                reply = _error(exc.code or UNKNOWN_ERROR, str(exc))
            except (PyMongoError, NotImplementedError, KeyError, TypeError, ValueError) as exc:
                reply = _error(UNKNOWN_ERROR, f"{type(exc).__name__}: {exc}")
                print(f"mongo_server: {name}: {reply['errmsg']}", file=sys.stderr, flush=True)
        if isinstance(request, OpMsg) and request.flags & OP_MSG_FLAGS["moreToCome"]:
            return True  # an unacknowledged write: the client waits for no reply
        request.reply(reply)
        return True

    def _collection(self, database: str, command: dict[str, Any], name: str) -> Any:
        return self._data[database][command[name]]

    # -- handshake and admin ----------------------------------------------------------------

    def _hello(self, database: str, command: dict[str, Any]) -> Reply:
        return {
            "helloOk": True,
            "isWritablePrimary": True,
            "ismaster": True,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": datetime.now(UTC),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": next(self._connection_ids),
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "readOnly": False,
        }

    def _list_databases(self, database: str, command: dict[str, Any]) -> Reply:
        names = self._data.list_database_names()
        listed = [{"name": name, "sizeOnDisk": 0, "empty": False} for name in names]
        return {"databases": listed, "totalSize": 0}

    def _drop_database(self, database: str, command: dict[str, Any]) -> Reply:
        self._data.drop_database(database)
        return {"dropped": database}

    def _list_collections(self, database: str, command: dict[str, Any]) -> Reply:
        names = self._data[database].list_collection_names()
        listed = [{"name": name, "type": "collection", "options": {}} for name in names]
        return _cursor(f"{database}.$cmd.listCollections", listed)

    def _drop(self, database: str, command: dict[str, Any]) -> Reply:
        self._data[database].drop_collection(command["drop"])
        return {"ns": f"{database}.{command['drop']}"}

    def _create_indexes(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "createIndexes")
        before = len(collection.index_information())
        for spec in command["indexes"]:
            options = {k: v for k, v in spec.items() if k not in ("key", "v", "ns")}
            collection.create_index(list(spec["key"].items()), **options)
        after = len(collection.index_information())
        return {"numIndexesBefore": before, "numIndexesAfter": after}

    def _list_indexes(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "listIndexes")
        indexes = [
            {**info, "key": dict(info["key"]), "name": name}
            for name, info in collection.index_information().items()
        ]
        return _cursor(f"{database}.{command['listIndexes']}", indexes)

    # -- writes -----------------------------------------------------------------------------

    def _insert(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "insert")
        inserted, errors = 0, []
        for index, document in enumerate(command.get("documents", [])):
            try:
                collection.insert_one(document)
                inserted += 1
            except PyMongoError as exc:
                errors.append(_write_error(index, exc))
                if command.get("ordered", True):
                    break
        return _written({"n": inserted}, errors)

    def _update(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "update")
        matched = modified = 0
        upserted: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for index, spec in enumerate(command.get("updates", [])):
            try:
                result = _update_one_spec(collection, spec)
            except PyMongoError as exc:
                errors.append(_write_error(index, exc))
                if command.get("ordered", True):
                    break
                continue
            matched += result.matched_count
            modified += result.modified_count
            if result.upserted_id is not None:
                upserted.append({"index": index, "_id": result.upserted_id})
        reply: Reply = {"n": matched + len(upserted), "nModified": modified}
        if upserted:
            reply["upserted"] = upserted
        return _written(reply, errors)

    def _delete(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "delete")
        deleted = 0
        for spec in command.get("deletes", []):
            remove = collection.delete_one if spec.get("limit") == 1 else collection.delete_many
            deleted += remove(spec.get("q", {})).deleted_count
        return {"n": deleted}

    def _find_and_modify(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "findAndModify")
        query, update = command.get("query") or {}, command.get("update")
        options = {"projection": command.get("fields"), "sort": _sort(command.get("sort"))}
        existed = collection.find_one(query) is not None
        if command.get("remove"):
            value = collection.find_one_and_delete(query, **options)
            return {"lastErrorObject": {"n": int(value is not None)}, "value": value}
        returned = ReturnDocument.AFTER if command.get("new") else ReturnDocument.BEFORE
        options.update(upsert=bool(command.get("upsert")), return_document=returned)
        if isinstance(update, list) or any(str(key).startswith("$") for key in update or {}):
            value = collection.find_one_and_update(query, update, **options)
        else:
            value = collection.find_one_and_replace(query, update, **options)
        upserting = not existed and bool(command.get("upsert"))
        last = {"n": int(existed or upserting), "updatedExisting": existed}
        return {"lastErrorObject": last, "value": value}

    # -- reads ------------------------------------------------------------------------------

    def _find(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "find")
        cursor = collection.find(command.get("filter") or {}, command.get("projection"))
        if command.get("sort"):
            cursor = cursor.sort(_sort(command["sort"]))
        if command.get("skip"):
            cursor = cursor.skip(int(command["skip"]))
        if command.get("limit"):
            cursor = cursor.limit(abs(int(command["limit"])))
        return _cursor(f"{database}.{command['find']}", list(cursor))

    def _aggregate(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "aggregate")
        documents = list(collection.aggregate(command.get("pipeline", [])))
        return _cursor(f"{database}.{command['aggregate']}", documents)

    def _count(self, database: str, command: dict[str, Any]) -> Reply:
        collection = self._collection(database, command, "count")
        return {"n": collection.count_documents(command.get("query") or {})}


# -- replies ------------------------------------------------------------------------------------


def _update_one_spec(collection: Any, spec: dict[str, Any]) -> Any:
    """One statement of an ``update`` command: operators, a pipeline, or a replacement."""
    query, update, upsert = spec.get("q") or {}, spec["u"], bool(spec.get("upsert"))
    if isinstance(update, list) or any(str(key).startswith("$") for key in update):
        apply = collection.update_many if spec.get("multi") else collection.update_one
        return apply(query, update, upsert=upsert, array_filters=spec.get("arrayFilters"))
    return collection.replace_one(query, update, upsert=upsert)


def _sort(spec: Any) -> list[tuple[str, Any]] | None:
    return list(spec.items()) if spec else None


def _cursor(namespace: str, documents: list[Any]) -> Reply:
    """Everything in the first batch, and cursor id 0: there is never a getMore."""
    return {"cursor": {"id": 0, "ns": namespace, "firstBatch": documents}}


def _error(code: int, message: str) -> Reply:
    return {"ok": 0, "errmsg": message, "code": code}


def _write_error(index: int, exc: PyMongoError) -> dict[str, Any]:
    code = DUPLICATE_KEY if isinstance(exc, DuplicateKeyError) else UNKNOWN_ERROR
    if isinstance(exc, OperationFailure) and exc.code:
        code = exc.code
    return {"index": index, "code": code, "errmsg": str(exc)}


def _written(reply: Reply, errors: list[dict[str, Any]]) -> Reply:
    return {**reply, "writeErrors": errors} if errors else reply


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0, help="loopback port; 0 picks a free one")
    parser.add_argument("--deny", choices=["auth", "writes"], default="", help="refuse these")
    options = parser.parse_args(argv)
    server = MongoServer(options.port or None, options.deny)
    print(server.start(), flush=True)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    server.stop()
    sys.exit(0)


if __name__ == "__main__":
    main()
