"""The Redis broker's dead letters: the list ``<prefix>dead:<queue>``, oldest first, of JSON
entries with the message and why it was set aside.

An entry starts with ``rejected_unix_ms`` (so ``reject.lua`` finds its age without decoding
it) and carries an ``id``. Entries written before ids existed are named by the first 16 hex
digits of the SHA-1 of the entry, which is as stable as the entry itself.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import orjson

from taskd.brokers.base import DeadLetter
from taskd.brokers.redis.keys import RedisKeys
from taskd.errors import BrokerError, UnknownDeadLetters
from taskd.wire import GoTime

WATCH_ATTEMPTS = 20  # optimistic tries of a requeue or drop while rejects change the list


def dead_letter_entry(queue: str, body: bytes, reason: str) -> bytes:
    """How ``reject`` keeps a message: JSON with its reason (base64 if it is not UTF-8)."""
    now = GoTime.now()
    entry: dict[str, Any] = {
        "rejected_unix_ms": now.unix_ns // 1_000_000,  # first: reject.lua reads it in place
        "id": secrets.token_hex(8),
        "queue": queue,
        "reason": reason,
        "rejected_at": now.format(),
    }
    try:
        entry["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        entry["body_base64"] = base64.b64encode(body).decode()
    return orjson.dumps(entry)


def letter_of(raw: bytes) -> DeadLetter:
    entry = orjson.loads(raw)
    body = (
        base64.b64decode(entry["body_base64"]) if "body_base64" in entry else entry["body"].encode()
    )
    letter_id = entry.get("id") or hashlib.sha1(raw).hexdigest()[:16]
    return DeadLetter(
        entry["queue"], body, entry["reason"], GoTime.parse(entry["rejected_at"]), letter_id
    )


class RedisDeadLetters:
    """The dead-letter operations, for RedisBroker (which provides these attributes)."""

    driver: str
    _redis: Any
    _keys: RedisKeys

    def _translated(self, queue: str | None = None) -> AbstractContextManager[None]:
        raise NotImplementedError

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        with self._translated(queue):
            entries = self._redis.lrange(self._keys.dead(queue), -limit, -1)
        return [letter_of(raw) for raw in reversed(entries)]

    def requeue_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        """In one MULTI: out of the dead letters, RPUSHed to the queue, and their count of
        failed deliveries (``<prefix>deliveries``) cleared."""
        return self._take_dead(queue, ids, requeue=True)

    def drop_dead(self, queue: str, ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, ids, requeue=False)

    def _take_dead(self, queue: str, ids: Sequence[str] | None, *, requeue: bool) -> int:
        """Read the list under WATCH, then change it in MULTI/EXEC, again if a reject came
        in between (so nothing set aside meanwhile is lost, and nothing is moved twice)."""
        import redis

        key = self._keys.dead(queue)
        with self._translated(queue), self._redis.pipeline(transaction=True) as pipe:
            for _ in range(WATCH_ATTEMPTS):
                try:
                    pipe.watch(key)  # not the queue: busy, it would never settle
                    chosen = self._chosen(queue, pipe.lrange(key, 0, -1), ids)
                    if requeue and chosen and pipe.type(queue) not in (b"none", b"list"):
                        # EXEC would drop them from the dead letters and fail the RPUSH
                        raise BrokerError(self.driver, "the key is not a list", queue)
                    pipe.multi()
                    if ids is None:
                        pipe.delete(key)
                    else:
                        for raw in chosen:
                            pipe.lrem(key, 1, raw)
                    bodies = [letter_of(raw).body for raw in chosen]
                    if requeue and bodies:
                        pipe.rpush(queue, *bodies)
                        sums = {hashlib.sha1(body).hexdigest() for body in bodies}
                        pipe.hdel(self._keys.deliveries, *sums)
                    pipe.execute()
                    return len(chosen)
                except redis.WatchError:
                    continue
        raise BrokerError(self.driver, "dead letters kept changing meanwhile: try again", queue)

    def _chosen(self, queue: str, raws: list[bytes], ids: Sequence[str] | None) -> list[bytes]:
        """The entries ``ids`` names, oldest first (every one for None)."""
        if ids is None:
            return list(raws)
        wanted = set(ids)
        named = [(letter_of(raw).id, raw) for raw in raws]
        chosen = [raw for letter_id, raw in named if letter_id in wanted]
        missing = wanted - {letter_id for letter_id, _ in named}
        if missing:
            raise UnknownDeadLetters(
                self.driver, queue, [i for i in dict.fromkeys(ids) if i in missing]
            )
        return chosen
