"""The Redis broker's operations for taskctl: sizes, a look at the next messages, purging,
and what consumers hold (the messages set aside are ``dead``'s). Kept apart from the fetch
path, which never calls them."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from taskd.brokers.base import Holding
from taskd.brokers.lease import seems_dead
from taskd.brokers.redis.keys import RedisKeys
from taskd.config import Lease
from taskd.wire.signature import peek_routing_key


class RedisQueueAdmin:
    """The optional Broker operations, for RedisBroker (which provides these attributes)."""

    _redis: Any
    _keys: RedisKeys
    _lease: Lease

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

    def holding(self, queue: str) -> Holding:
        keys = self._keys
        with self._translated(queue):
            seconds, micros = self._redis.time()  # beats are on Redis's clock
            now_ms = seconds * 1000 + micros // 1000
            beats = dict(self._redis.zrange(keys.consumers, 0, -1, withscores=True))
            holders = [
                consumer.decode()
                for consumer, of in self._redis.hgetall(keys.consumer_queues).items()
                if of.decode() == queue
            ]
            pipe = self._redis.pipeline(transaction=False)
            for consumer in holders:
                pipe.llen(keys.processing(consumer))
            counts = pipe.execute()
        timeout_s, in_flight, orphaned = self._lease.consumer_timeout_s, 0, 0
        for consumer, count in zip(holders, counts, strict=True):
            beat = beats.get(consumer.encode())
            silent_s = None if beat is None else (now_ms - beat) / 1000
            if seems_dead(consumer, silent_s, timeout_s):
                orphaned += count
            else:
                in_flight += count
        return Holding(in_flight, orphaned)
