"""The Redis broker's operations for taskctl: sizes, a look at the next messages, purging,
and the messages set aside. Kept apart from the fetch path, which never calls them."""

from __future__ import annotations

import base64
from contextlib import AbstractContextManager
from typing import Any

import orjson

from taskd.brokers.base import DeadLetter
from taskd.brokers.redis.keys import RedisKeys
from taskd.wire import GoTime
from taskd.wire.signature import peek_routing_key


def dead_letter_entry(queue: str, body: bytes, reason: str) -> bytes:
    """How ``reject`` keeps a message: JSON with its reason (base64 if it is not UTF-8)."""
    entry: dict[str, Any] = {"queue": queue, "reason": reason, "rejected_at": GoTime.now().format()}
    try:
        entry["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        entry["body_base64"] = base64.b64encode(body).decode()
    return orjson.dumps(entry)


def _dead_letter(raw: bytes) -> DeadLetter:
    entry = orjson.loads(raw)
    body = (
        base64.b64decode(entry["body_base64"]) if "body_base64" in entry else entry["body"].encode()
    )
    return DeadLetter(entry["queue"], body, entry["reason"], GoTime.parse(entry["rejected_at"]))


class RedisQueueAdmin:
    """The optional Broker operations, for RedisBroker (which provides these attributes)."""

    _redis: Any
    _keys: RedisKeys

    def _translated(self, queue: str | None = None) -> AbstractContextManager[None]:
        raise NotImplementedError

    def size(self, queue: str) -> int:
        with self._translated(queue):
            return int(self._redis.llen(queue))

    def _delayed_members(self, queue: str) -> list[bytes]:
        with self._translated(queue):
            return [
                member
                for member, _score in self._redis.zscan_iter(self._keys.delayed, count=1000)
                if (peek_routing_key(member) or self._keys.default_queue) == queue
            ]

    def delayed(self, queue: str) -> int:
        return len(self._delayed_members(queue))

    def peek(self, queue: str, limit: int) -> list[bytes]:
        with self._translated(queue):
            return [bytes(body) for body in self._redis.lrange(queue, 0, limit - 1)]

    def purge(self, queue: str) -> int:
        delayed = self._delayed_members(queue)
        with self._translated(queue):
            pipe = self._redis.pipeline(transaction=True)
            pipe.llen(queue)
            pipe.delete(queue)
            if delayed:
                pipe.zrem(self._keys.delayed, *delayed)
            ready = pipe.execute()[0]
        return int(ready) + len(delayed)

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        with self._translated(queue):
            entries = self._redis.lrange(self._keys.dead(queue), -limit, -1)
        return [_dead_letter(raw) for raw in reversed(entries)]
