"""The Redis broker's fetch path: publish, take, settle. See the package docstring."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Self

from taskd import drivers, redis_checks, redisdb
from taskd.brokers.base import Broker, DeadLetterCap, Delivery, Message
from taskd.brokers.redis import checks
from taskd.brokers.redis.admin import RedisQueueAdmin
from taskd.brokers.redis.consumers import RedisConsumers
from taskd.brokers.redis.dead import RedisDeadLetters, dead_letter_entry
from taskd.brokers.redis.keys import RedisKeys
from taskd.config import Config
from taskd.errors import BrokerError, BrokerUnavailable
from taskd.redis_scripts import Script

# Taking a message moves it to a processing list in one step (Redis 6.2+), and scripts.
BROKER_COMMANDS = ("BLMOVE", "LMOVE", *redis_checks.SCRIPTING)
FETCH = Script.packaged("lists.lua", "fetch.lua")
ACK = Script.packaged("ack.lua", call="return ack(KEYS[1], KEYS[2], ARGV, 1)")
RELEASE = Script.packaged("lists.lua", "release.lua")
REJECT = Script.packaged("lists.lua", "reject.lua")
PROMOTE = Script.packaged("promote.lua")

MOVE_BATCH = 1000  # due ETA messages moved per script call
MOVE_BUDGET_S = 0.5  # longest a fetch spends moving due messages before taking its own


class RedisBroker(RedisQueueAdmin, RedisDeadLetters, Broker):
    driver = "redis"
    counts_releases = False  # a release leaves the count of failed deliveries alone

    def __init__(self, url: str, config: Config) -> None:
        self._redis = redisdb.connect(
            url, config, "broker", longest_block_s=config.worker.poll_interval
        )
        self._keys = RedisKeys.of(config)
        self._source = config.source
        self._lease = config.lease
        self._dead_cap = DeadLetterCap.of(config)
        self._consumers = RedisConsumers(self._redis, self._keys, config.lease)
        self._poll_period_s = config.redis.delayed_tasks_poll_period / 1000
        self._in_flight: dict[str, int] = {}  # queue -> deliveries handed out, not settled
        self._backlog: dict[str, int] = {}  # queue -> messages known to wait (0: block next time)
        self._stray_risk: dict[str, bool] = {}  # queue -> a fetch reply may have been lost
        self._next_promote = 0.0  # monotonic time of the next look at the delayed set

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    @property
    def redis(self) -> Any:
        """The redis-py client (``taskd.pairs`` packs other writes with a publish)."""
        return self._redis

    def translated(self, queue: str | None = None) -> AbstractContextManager[None]:
        return self._translated(queue)

    def _translated(self, queue: str | None = None) -> AbstractContextManager[None]:
        return redisdb.translated(BrokerUnavailable, BrokerError, self.driver, queue=queue)

    def check(self, queues: Sequence[str], *, writes: bool = True, serves: bool = False) -> None:
        """Names that collide (a queue named like the delayed set or one of taskd's own
        keys), then a Redis Cluster, one without the commands taskd needs (older than 6.2),
        or keys already in Redis of another type: ConfigError naming the setting; a warning
        if Redis may evict taskd's keys, or (to a daemon) keeps nothing on disk."""
        checks.check_names(self._keys, queues, self._source)
        with self._translated():
            redis_checks.refuse_unusable(
                self._redis, "broker", self._source, BROKER_COMMANDS, writes=writes
            )
            checks.check_types(self._redis, self._keys, queues, self._source)
            redis_checks.warn_of_eviction(self._redis, "broker")
            if serves:
                redis_checks.warn_of_no_persistence(self._redis, "broker")

    # -- producing ------------------------------------------------------------------------

    def publish_many(self, messages: Sequence[Message]) -> None:
        """One variadic RPUSH per queue and one ZADD for the delayed ones, in one round trip.

        A delayed message goes back to the queue its RoutingKey names when it falls due, as
        machinery's workers expect; taskd's senders always set RoutingKey to the queue.
        """
        if not messages:
            return
        commands = self.publish_commands(messages)
        with self._translated(messages[0].queue):
            replies = redisdb.send_packed(self._redis, commands)()
        self.raise_first(replies, messages[0].queue)

    def publish_commands(self, messages: Sequence[Message]) -> list[tuple]:
        """The commands that publish ``messages`` (for a sender that packs others with them,
        ``taskd.pairs``); BrokerError for a priority this broker cannot honour."""
        self.check_priorities(messages)
        now_ns = time.time_ns()
        ready: dict[str, list[bytes]] = {}
        delayed: list[Any] = []
        for message in messages:
            if message.eta is not None and message.eta.unix_ns > now_ns:
                delayed.extend((message.eta.unix_ns, message.body))
            else:
                ready.setdefault(message.queue, []).append(message.body)
        commands: list[tuple] = [("RPUSH", queue, *bodies) for queue, bodies in ready.items()]
        if delayed:
            commands.append(("ZADD", self._keys.delayed, *delayed))
        return commands

    def raise_first(self, replies: Sequence[Any], queue: str) -> None:
        """The first error among publish replies, as the driver's: BrokerUnavailable for a
        Redis that cannot take writes for now (full, or a replica; ``unsent`` where it
        refused every publish, so no message was queued), else BrokerError."""
        for reply in replies:
            if isinstance(reply, Exception):
                with self._translated(queue):
                    if all(map(redisdb.refused, replies)):
                        raise drivers.Unsent from reply
                    raise reply

    # -- consuming ------------------------------------------------------------------------

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        """Take a batch with one script; on an empty queue, block in BLMOVE instead.

        Usually one round trip: a batch while a backlog is known, else one blocking move that
        also reports the backlog behind it (so batching resumes as soon as one builds up).
        """
        processing = self._keys.processing(self._consumers.of(queue))
        self._in_flight.setdefault(queue, 0)
        try:
            with self._translated(queue):
                self._promote_due()
                taken = self._take(queue, processing, max_messages, wait_s)
        except BrokerUnavailable:
            # The reply may be lost after Redis moved messages to our processing list.
            self._stray_risk[queue] = True
            raise
        self._in_flight[queue] += len(taken)
        return [Delivery(queue, bytes(body), 1 + failed, processing) for body, failed in taken]

    def more_ready(self, queue: str) -> bool:
        return self._backlog.get(queue, 0) > 0

    def _take(
        self, queue: str, processing: str, max_messages: int, wait_s: float
    ) -> list[tuple[bytes, int]]:
        """(message, failed deliveries before) pairs."""
        recover = self._stray_risk.get(queue, False) and self._in_flight[queue] == 0
        if self._backlog.get(queue, 1) > 0 or recover or wait_s <= 0:
            bodies, failed = FETCH(
                self._redis,
                keys=[queue, processing, self._keys.deliveries],
                args=[max_messages, "1" if recover else "0"],
            )
            if recover:
                self._stray_risk[queue] = False
            self._backlog[queue] = 1 if len(bodies) == max_messages else 0
            if bodies or wait_s <= 0:
                return [
                    (body, failed[i] if i < len(failed) else 0) for i, body in enumerate(bodies)
                ]
        block_s = min(wait_s, max(self._next_promote - time.monotonic(), 0.01))
        body, backlog, counted = redisdb.execute(  # not a redis-py pipeline: far less CPU
            self._redis,
            [
                ("BLMOVE", queue, processing, "LEFT", "RIGHT", block_s),
                ("LLEN", queue),
                ("HLEN", self._keys.deliveries),
            ],
        )
        self._backlog[queue] = int(backlog)
        if body is None:
            return []
        failed = 0
        if counted:  # some message somewhere came back from a dead consumer: is it this one?
            digest = hashlib.sha1(body).hexdigest()
            failed = _count(redisdb.command(self._redis, ("HGET", self._keys.deliveries, digest)))
        return [(body, failed)]

    def _promote_due(self) -> None:
        """Move due ETA messages to their queues, in batches, at most every poll period.

        Every consumer may do this; the script is atomic, so a message moves exactly once.
        """
        now = time.monotonic()
        if now < self._next_promote:
            return
        deadline = now + MOVE_BUDGET_S
        while True:
            moved, first_score = PROMOTE(
                self._redis,
                keys=[self._keys.delayed],
                args=[time.time_ns(), MOVE_BATCH, self._keys.default_queue],
            )
            if moved < MOVE_BATCH or time.monotonic() >= deadline:
                break
        next_check = time.monotonic() + self._poll_period_s
        if first_score is not None:
            due_in_s = (float(first_score) - time.time_ns()) / 1e9
            next_check = min(next_check, time.monotonic() + max(due_in_s, 0.0))
        self._next_promote = 0.0 if moved >= MOVE_BATCH else next_check

    # -- settling -------------------------------------------------------------------------

    def settled(self, deliveries: Sequence[Delivery]) -> None:
        """These deliveries are acked, released or rejected (by this driver, or by a script
        of ``taskd.pairs`` made with ``ack_arguments``): no longer in flight."""
        for delivery in deliveries:
            left = self._in_flight.get(delivery.queue, 0) - 1
            self._in_flight[delivery.queue] = max(left, 0)

    def ack_arguments(self, deliveries: Sequence[Delivery]) -> list[tuple[list[str], list[bytes]]]:
        """The keys and arguments of ``ack(keys[1], keys[2], args, 1)`` (ack.lua) for these
        deliveries, one pair per processing list they came from."""
        by_list: dict[str, list[bytes]] = {}
        for delivery in deliveries:
            by_list.setdefault(delivery.handle, []).append(delivery.body)
        return [
            ([processing, self._keys.deliveries], bodies) for processing, bodies in by_list.items()
        ]

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        with self._translated(deliveries[0].queue if deliveries else None):
            for keys, bodies in self.ack_arguments(deliveries):
                ACK(self._redis, keys, bodies)
        self.settled(deliveries)

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        groups: dict[tuple[str, str], list[bytes]] = {}
        for delivery in deliveries:
            groups.setdefault((delivery.handle, delivery.queue), []).append(delivery.body)
        with self._translated(deliveries[0].queue if deliveries else None):
            for (processing, queue), bodies in groups.items():
                RELEASE(self._redis, keys=[processing, queue], args=bodies)
        self.settled(deliveries)

    def reject(self, delivery: Delivery, reason: str) -> None:
        entry = dead_letter_entry(delivery.queue, delivery.body, reason)
        cap = self._dead_cap
        oldest_ms = (time.time_ns() // 1_000_000 - cap.max_age_s * 1000) if cap.max_age_s else 0
        with self._translated(delivery.queue):
            _held, dropped = REJECT(
                self._redis,
                keys=[delivery.handle, self._keys.dead(delivery.queue), self._keys.deliveries],
                args=[delivery.body, entry, cap.max_count, oldest_ms],
            )
        self.settled([delivery])
        self._dead_cap.dropped(delivery.queue, dropped)

    def close(self) -> None:
        self._consumers.leave()
        self._redis.close()


def _count(reply: bytes | None) -> int:
    """A count of failed deliveries as stored; one that is no whole number (another
    program's value) counts none, as in fetch.lua."""
    try:
        count = int(reply or 0)
    except ValueError:
        return 0
    return count if 0 <= count < 10**9 else 0
