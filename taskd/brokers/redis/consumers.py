"""Consumer liveness for the Redis broker: who holds messages, and giving back the messages
of those that are gone.

Each consumer beats from a thread (``lease.BeatThread``) into a sorted set on Redis's clock.
On every beat a consumer gives back at once the messages of consumers that died on this
machine, and, once it has itself been in touch for ``consumer_timeout``, those of consumers
silent that long (``lease.SilenceJudge``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from taskd import logs, redisdb
from taskd.brokers.lease import BeatThread, SilenceJudge, gone_here, new_consumer_id
from taskd.brokers.redis.keys import RedisKeys
from taskd.config import Lease
from taskd.errors import BrokerError, BrokerUnavailable
from taskd.redis_scripts import Script

log = logs.get_logger("taskd.redis")

BEAT = Script.packaged("beat.lua")
RECLAIM = Script.packaged("requeue.lua", "reclaim.lua")
LEAVE = Script.packaged("requeue.lua", "leave.lua")
RECLAIM_BATCH = 100  # silent consumers handled per reclaim call


class RedisConsumers:
    """This process's consumers, one per queue, and the liveness checks of everyone's."""

    driver = "redis"

    def __init__(self, client: Any, keys: RedisKeys, lease: Lease) -> None:
        self._redis, self._keys, self._lease = client, keys, lease
        self._judge = SilenceJudge(lease.consumer_timeout_s, lease.heartbeat_interval_s)
        self._ids: dict[str, str] = {}  # queue -> this process's consumer id there
        self._beats: BeatThread | None = None

    def _translated(self) -> AbstractContextManager[None]:
        return redisdb.translated(BrokerUnavailable, BrokerError, self.driver)

    def of(self, queue: str) -> str:
        """This process's consumer id for ``queue``, registered (and beating) before it can
        take its first message; what a dead consumer here held comes back now."""
        consumer_id = self._ids.get(queue)
        if consumer_id is not None:
            return consumer_id
        consumer_id = new_consumer_id()
        self._ids[queue] = consumer_id
        try:
            with self._translated():
                self._beat()
            self.beat_and_reclaim()
        except BrokerError:
            del self._ids[queue]  # registered on the next fetch instead, beating from then on
            raise
        if self._beats is None:
            self._beats = BeatThread(
                self.beat_and_reclaim, self._lease.heartbeat_interval_s, self.driver
            )
            self._beats.start()
        return consumer_id

    def leave(self) -> None:
        """Stop beating and hand back what this process's consumers hold (if Redis can be
        reached: otherwise the others reclaim it once these fall silent)."""
        if self._beats is not None:
            self._beats.stop()
        if self._ids:
            try:
                with self._translated():
                    self._requeue(list(self._ids.values()))
            except BrokerError:
                pass

    def beat_and_reclaim(self) -> None:
        with self._translated():
            self._beat()
            self._judge.beat_succeeded()
            gone = [cid for cid in self._known() if gone_here(cid)]
            if gone:  # died on this machine: no need to wait for them to fall silent
                _recovered(self._requeue(gone), gone)
            if not self._judge.may_judge():
                return  # not in touch long enough to tell a silent consumer from a cut-off one
            silent, moved = RECLAIM(
                self._redis,
                keys=self._liveness_keys(),
                args=[
                    self._keys.processing(""),
                    int(self._lease.consumer_timeout_s * 1000),
                    RECLAIM_BATCH,
                    self._keys.default_queue,
                ],
            )
            _recovered(int(moved), int(silent))

    def _known(self) -> Iterator[str]:
        for consumer_id in self._redis.zrange(self._keys.consumers, 0, -1):
            yield consumer_id.decode()

    def _liveness_keys(self) -> list[str]:
        return [self._keys.consumers, self._keys.consumer_queues, self._keys.deliveries]

    def _beat(self) -> None:
        args = [item for queue, cid in self._ids.items() for item in (cid, queue)]
        BEAT(self._redis, keys=[self._keys.consumers, self._keys.consumer_queues], args=args)

    def _requeue(self, consumer_ids: Sequence[str]) -> int:
        """Put these consumers' messages back at the head of their queues and forget them;
        how many went back."""
        return LEAVE(
            self._redis,
            keys=self._liveness_keys(),
            args=[self._keys.processing(""), self._keys.default_queue, *consumer_ids],
        )


def _recovered(count: int, consumers: Sequence[str] | int) -> None:
    if count:
        log.warning("messages_recovered", count=count, dead_consumers=consumers)
