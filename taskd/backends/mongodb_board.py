"""The MongoDB backend's boards: collection ``taskd_boards``, one document per entry.

``{board, key, entry: <JSON text>, delete_at}``, unique on ``(board, key)`` (which also serves
a board's reads), with the TTL index on ``delete_at`` the other collections have. The entry is
kept as JSON text, not a BSON document, so it reads back exactly as posted (keys with dots or
dollars, integers past int64). Each entry is written on its own, so no post loses another's;
a reader may see one post's entries land one by one. Expiry is by the writer's clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from taskd.backends import board_json
from taskd.backends.base import Entry

BOARDS = "taskd_boards"  # taskd's own collection, next to machinery's


def create_index(collection: Any) -> None:
    """The unique ``(board, key)`` index: upserts of one entry cannot make two documents."""
    collection.create_index([("board", 1), ("key", 1)], unique=True)


def post(
    collection: Any, board: str, entries: Mapping[str, Entry | None], ttl_s: float, now_ms: int
) -> None:
    """Upsert, take down and prune in one ordered batch (one round trip)."""
    from bson import DatetimeMS
    from pymongo import DeleteMany, DeleteOne, ReplaceOne

    delete_at = DatetimeMS(now_ms + round(ttl_s * 1000))
    writes: list[Any] = []
    for key, entry in entries.items():
        one = {"board": board, "key": key}
        if entry is None:
            writes.append(DeleteOne(one))
        else:
            document = {**one, "entry": orjson.dumps(entry).decode(), "delete_at": delete_at}
            writes.append(ReplaceOne(one, document, upsert=True))
    # MongoDB's TTL monitor runs once a minute: prune here too, so the board stays small.
    writes.append(DeleteMany({"board": board, "delete_at": {"$lte": DatetimeMS(now_ms)}}))
    collection.bulk_write(writes, ordered=True)


def read(collection: Any, board: str, now_ms: int) -> dict[str, Entry]:
    """The board's entries live at ``now_ms`` (the TTL monitor removes them only later)."""
    from bson import DatetimeMS

    found = collection.find(
        {"board": board, "delete_at": {"$gt": DatetimeMS(now_ms)}}, {"key": 1, "entry": 1}
    )
    pairs = ((str(doc.get("key")), doc.get("entry")) for doc in found)
    return board_json.entries(pairs, driver="mongodb", board=board)
