"""The Redis broker: machinery's key layout, with acknowledgements machinery never had.

Layout shared with machinery: the ready queue is a list named by the routing key (producers
``RPUSH``); ETA messages wait in one sorted set (``delayed_tasks``) scored by ETA in Unix
nanoseconds. taskd adds, under ``redis.key_prefix``:

- ``processing:<consumer>``: a taken message moves atomically from the queue into the
  processing list of the consumer that took it, and leaves it on ack;
- ``consumers`` (sorted set, score = last beat in ms, Redis clock) and ``consumer_queues``
  (hash): each consumer beats from a thread; when one falls silent for ``consumer_timeout``,
  any other consumer moves its processing list back to the head of its queue;
- ``dead:<queue>``: messages set aside by ``reject``, as JSON with the reason;
- ``deliveries``: for a message whose consumer died holding it, how many times that happened
  (so one that kills every worker that takes it can be set aside).

A long task never looks dead (the thread beats while it runs); a dead consumer's messages
come back within seconds; a message is never in no list at all.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Sequence
from typing import Any, Self

import orjson

from taskd import redisdb
from taskd.brokers.base import Broker, DeadLetter, Delivery, Message
from taskd.brokers.lease import Heartbeat, SilenceJudge, gone_here, new_consumer_id
from taskd.config import Config
from taskd.errors import BrokerError, BrokerUnavailable
from taskd.wire import GoTime
from taskd.wire.signature import peek_routing_key

MOVE_BATCH = 1000  # due ETA messages moved per script call
MOVE_BUDGET_S = 0.5  # longest a fetch spends moving due messages before taking its own
RECLAIM_BATCH = 100  # dead consumers handled per reclaim call

# Take up to ARGV[1] messages. With ARGV[2] == "1" the consumer holds nothing, so anything left
# in its processing list is a stray from a fetch whose reply was lost: put it back first.
# Returns the messages and, where consumers died holding them before, how many times.
_FETCH = """
if ARGV[2] == '1' then
  while redis.call('LMOVE', KEYS[2], KEYS[1], 'RIGHT', 'LEFT') do end
end
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
local failed = {}
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
  if redis.call('HLEN', KEYS[3]) > 0 then
    for i, item in ipairs(items) do
      failed[i] = tonumber(redis.call('HGET', KEYS[3], redis.sha1hex(item)) or '0')
    end
  end
end
return {items, failed}
"""

# Remove settled messages from a processing list (and their count of failed deliveries).
_ACK = """
local counted = redis.call('HLEN', KEYS[2]) > 0
for i = 1, #ARGV do
  redis.call('LREM', KEYS[1], 1, ARGV[i])
  if counted then redis.call('HDEL', KEYS[2], redis.sha1hex(ARGV[i])) end
end
return #ARGV
"""

# Hand a message back: to the head of its queue, or to the delayed set (ARGV[2] = score).
_RELEASE = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  if ARGV[2] == '' then
    redis.call('LPUSH', KEYS[2], ARGV[1])
  else
    redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
  end
  return 1
end
return 0
"""

# Hand messages back to the head of their queue (KEYS[2]), last first so the order holds.
_RELEASE_ALL = """
for i = #ARGV, 1, -1 do
  if redis.call('LREM', KEYS[1], 1, ARGV[i]) == 1 then redis.call('LPUSH', KEYS[2], ARGV[i]) end
end
return #ARGV
"""

# Set a message aside with its reason.
_REJECT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('HDEL', KEYS[3], redis.sha1hex(ARGV[1]))
  return 1
end
return 0
"""

# Move due ETA messages to their queues. The queue is the message's RoutingKey (machinery's
# layout keeps one delayed set for every queue), read with cjson; a member that is not a
# machinery message, or names a key that is not a list, goes to the default queue, whose
# worker sets it aside with a reason.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, body in ipairs(due) do
  local queue = nil
  local ok, msg = pcall(cjson.decode, body)
  if ok and type(msg) == 'table' then
    queue = msg['RoutingKey']
    if type(queue) ~= 'string' then
      for key, value in pairs(msg) do
        if type(key) == 'string' and string.lower(key) == 'routingkey' then queue = value end
      end
    end
  end
  if type(queue) ~= 'string' or queue == '' then queue = ARGV[3] end
  -- Push first, remove after: a push that fails (the key is not a list) must not lose it.
  local pushed = pcall(redis.call, 'RPUSH', queue, body)
  if not pushed and queue ~= ARGV[3] then pushed = pcall(redis.call, 'RPUSH', ARGV[3], body) end
  if pushed then redis.call('ZREM', KEYS[1], body) end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, first[2] or false}
"""

# Beat for each consumer id in ARGV (queue in the following ARGV), on Redis's clock.
_BEAT = """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('ZADD', KEYS[1], ms, ARGV[i])
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return ms
"""

# A dead consumer's messages go back to the head of their queue, each counted as a failed
# delivery (KEYS[3], by SHA-1 of the message) so a message that kills every worker that
# takes it can be set aside instead of looping forever.
_REQUEUE = """
local function requeue(id, fallback)
  local queue = redis.call('HGET', KEYS[2], id) or fallback
  local proc = ARGV[1] .. id
  local moved = 0
  while true do
    local body = redis.call('LMOVE', proc, queue, 'RIGHT', 'LEFT')
    if not body then break end
    redis.call('HINCRBY', KEYS[3], redis.sha1hex(body), 1)
    moved = moved + 1
  end
  if moved > 0 then redis.call('EXPIRE', KEYS[3], 604800) end
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  return moved
end
"""

# Give the messages of consumers silent for ARGV[2] ms back to the head of their queues.
_RECLAIM = (
    _REQUEUE
    + """
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms - tonumber(ARGV[2]),
                        'LIMIT', 0, tonumber(ARGV[3]))
local moved = 0
for _, id in ipairs(dead) do moved = moved + requeue(id, ARGV[4]) end
return {#dead, moved}
"""
)

# A consumer leaving: its own messages go back, now.
_LEAVE = (
    _REQUEUE
    + """
local moved = 0
for i = 3, #ARGV do moved = moved + requeue(ARGV[i], ARGV[2]) end
return moved
"""
)


_SCRIPTS = {
    name: redisdb.Script(source)
    for name, source in {
        "fetch": _FETCH,
        "ack": _ACK,
        "release": _RELEASE,
        "release_all": _RELEASE_ALL,
        "reject": _REJECT,
        "promote": _PROMOTE,
        "beat": _BEAT,
        "reclaim": _RECLAIM,
        "leave": _LEAVE,
    }.items()
}


def _dead_letter_entry(queue: str, body: bytes, reason: str) -> bytes:
    entry: dict[str, Any] = {"queue": queue, "reason": reason, "rejected_at": GoTime.now().format()}
    try:
        entry["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        entry["body_base64"] = base64.b64encode(body).decode()
    return orjson.dumps(entry)


class RedisBroker(Broker):
    driver = "redis"

    def __init__(self, url: str, config: Config) -> None:
        settings = config.redis
        self._redis = redisdb.connect(
            url, config, "broker", longest_block_s=config.worker.poll_interval
        )
        self._prefix = settings.key_prefix
        self._delayed_key = settings.delayed_tasks_key
        self._default_queue = config.default_queue
        self._poll_period_s = settings.delayed_tasks_poll_period / 1000
        self._heartbeat_s = config.worker.heartbeat_interval
        self._timeout_ms = int(config.worker.consumer_timeout * 1000)
        self._judge = SilenceJudge(config.worker.consumer_timeout, self._heartbeat_s)
        self._consumers_key = f"{self._prefix}consumers"
        self._queues_key = f"{self._prefix}consumer_queues"
        self._deliveries_key = (
            f"{self._prefix}deliveries"  # SHA-1 of a message -> failed deliveries
        )
        self._consumers: dict[str, str] = {}  # queue -> this instance's consumer id there
        self._in_flight: dict[str, int] = {}  # queue -> deliveries handed out, not settled
        self._backlog: dict[str, int] = {}  # queue -> messages known to wait (0: block next time)
        self._stray_risk: dict[str, bool] = {}  # queue -> a fetch reply may have been lost
        self._heartbeat: Heartbeat | None = None
        self._next_promote = 0.0  # monotonic time of the next look at the delayed set

    @classmethod
    def from_config(cls, url: str, config: Config) -> Self:
        return cls(url, config)

    def _translated(self, queue: str | None = None) -> Any:
        return redisdb.translated(BrokerUnavailable, BrokerError, self.driver, queue=queue)

    def _processing_key(self, consumer_id: str) -> str:
        return f"{self._prefix}processing:{consumer_id}"

    def _dead_key(self, queue: str) -> str:
        return f"{self._prefix}dead:{queue}"

    # -- producing ------------------------------------------------------------------------

    def publish(
        self, queue: str, body: bytes, *, eta: GoTime | None = None, priority: int = 0
    ) -> None:
        """RPUSH to the queue, or ZADD to the delayed set (machinery's layout).

        A delayed message goes back to the queue its RoutingKey names when it falls due, as
        machinery's workers expect; taskd's senders always set RoutingKey to ``queue``.
        """
        self.publish_many([Message(queue, body, eta, priority)])

    def publish_many(self, messages: Sequence[Message]) -> None:
        """One variadic RPUSH per queue and one ZADD for the delayed ones, in one round trip."""
        if not messages:
            return
        now_ns = time.time_ns()
        ready: dict[str, list[bytes]] = {}
        delayed: list[Any] = []
        for message in messages:
            if message.eta is not None and message.eta.unix_ns > now_ns:
                delayed.extend((message.eta.unix_ns, message.body))
            else:
                ready.setdefault(message.queue, []).append(message.body)
        with self._translated(messages[0].queue):
            if len(ready) == 1 and not delayed:
                ((queue, bodies),) = ready.items()
                self._redis.execute_command("RPUSH", queue, *bodies)
                return
            pipe = self._redis.pipeline(transaction=False)
            for queue, bodies in ready.items():
                pipe.execute_command("RPUSH", queue, *bodies)
            if delayed:
                pipe.execute_command("ZADD", self._delayed_key, *delayed)
            pipe.execute()

    # -- consuming ------------------------------------------------------------------------

    def _consumer(self, queue: str) -> str:
        consumer_id = self._consumers.get(queue)
        if consumer_id is None:
            consumer_id = new_consumer_id()
            self._consumers[queue] = consumer_id
            try:
                self._beat()  # registered before its first message can be taken
            except Exception:
                del self._consumers[queue]
                raise
            self._in_flight[queue] = 0
            self._beat_and_reclaim()  # what a dead consumer here held comes back now
            if self._heartbeat is None:
                self._heartbeat = Heartbeat(self._beat_and_reclaim, self._heartbeat_s, self.driver)
                self._heartbeat.start()
        return consumer_id

    def fetch(self, queue: str, *, max_messages: int, wait_s: float) -> list[Delivery]:
        """Take a batch with one script; on an empty queue, block in BLMOVE instead.

        Usually one round trip: a batch while a backlog is known, else one blocking move that
        also reports the backlog behind it (so batching resumes as soon as one builds up).
        """
        try:
            with self._translated(queue):
                taken = self._take(queue, max_messages, wait_s)
        except BrokerUnavailable:
            # The reply may be lost after Redis moved messages to our processing list.
            self._stray_risk[queue] = True
            raise
        self._in_flight[queue] += len(taken)
        processing = self._processing_key(self._consumers[queue])
        return [Delivery(queue, bytes(body), 1 + failed, processing) for body, failed in taken]

    def _take(self, queue: str, max_messages: int, wait_s: float) -> list[tuple[bytes, int]]:
        """(message, failed deliveries before) pairs."""
        processing = self._processing_key(self._consumer(queue))
        self._promote_due()
        recover = self._stray_risk.get(queue, False) and self._in_flight[queue] == 0
        if self._backlog.get(queue, 1) > 0 or recover or wait_s <= 0:
            bodies, failed = _SCRIPTS["fetch"](
                self._redis,
                keys=[queue, processing, self._deliveries_key],
                args=[max_messages, "1" if recover else "0"],
            )
            if recover:
                self._stray_risk[queue] = False
            self._backlog[queue] = 1 if len(bodies) == max_messages else 0
            if bodies or wait_s <= 0:
                return [
                    (body, int(failed[i]) if i < len(failed) else 0)
                    for i, body in enumerate(bodies)
                ]
        block_s = min(wait_s, max(self._next_promote - time.monotonic(), 0.01))
        pipe = self._redis.pipeline(transaction=False)
        pipe.blmove(queue, processing, block_s, "LEFT", "RIGHT")
        pipe.llen(queue)
        pipe.hlen(self._deliveries_key)
        body, backlog, counted = pipe.execute()
        self._backlog[queue] = int(backlog)
        if body is None:
            return []
        failed = 0
        if counted:  # some message somewhere came back from a dead consumer: is it this one?
            count = self._redis.hget(self._deliveries_key, hashlib.sha1(body).hexdigest())
            failed = int(count or 0)
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
            moved, first_score = _SCRIPTS["promote"](
                self._redis,
                keys=[self._delayed_key],
                args=[time.time_ns(), MOVE_BATCH, self._default_queue],
            )
            if moved < MOVE_BATCH or time.monotonic() >= deadline:
                break
        next_check = time.monotonic() + self._poll_period_s
        if first_score is not None:
            due_in_s = (float(first_score) - time.time_ns()) / 1e9
            next_check = min(next_check, time.monotonic() + max(due_in_s, 0.0))
        self._next_promote = 0.0 if moved >= MOVE_BATCH else next_check

    def _settled(self, delivery: Delivery) -> None:
        self._in_flight[delivery.queue] = max(self._in_flight.get(delivery.queue, 0) - 1, 0)

    def ack(self, delivery: Delivery) -> None:
        self.ack_many([delivery])

    def ack_many(self, deliveries: Sequence[Delivery]) -> None:
        by_list: dict[str, list[bytes]] = {}
        for delivery in deliveries:
            by_list.setdefault(delivery.handle, []).append(delivery.body)
        with self._translated(deliveries[0].queue if deliveries else None):
            for processing, bodies in by_list.items():
                _SCRIPTS["ack"](self._redis, keys=[processing, self._deliveries_key], args=bodies)
        for delivery in deliveries:
            self._settled(delivery)

    def release(self, delivery: Delivery, *, delay_s: float = 0.0) -> None:
        score = "" if delay_s <= 0 else str(time.time_ns() + math.ceil(delay_s * 1e9))
        with self._translated(delivery.queue):
            _SCRIPTS["release"](
                self._redis,
                keys=[delivery.handle, delivery.queue, self._delayed_key],
                args=[delivery.body, score],
            )
        self._settled(delivery)

    def release_many(self, deliveries: Sequence[Delivery]) -> None:
        groups: dict[tuple[str, str], list[bytes]] = {}
        for delivery in deliveries:
            groups.setdefault((delivery.handle, delivery.queue), []).append(delivery.body)
        with self._translated(deliveries[0].queue if deliveries else None):
            for (processing, queue), bodies in groups.items():
                _SCRIPTS["release_all"](self._redis, keys=[processing, queue], args=bodies)
        for delivery in deliveries:
            self._settled(delivery)

    def reject(self, delivery: Delivery, reason: str) -> None:
        entry = _dead_letter_entry(delivery.queue, delivery.body, reason)
        with self._translated(delivery.queue):
            _SCRIPTS["reject"](
                self._redis,
                keys=[delivery.handle, self._dead_key(delivery.queue), self._deliveries_key],
                args=[delivery.body, entry],
            )
        self._settled(delivery)

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self._consumers:
            try:
                with self._translated():
                    self._requeue(list(self._consumers.values()))
            except BrokerError:
                pass  # unreachable: the others reclaim these once this consumer falls silent
        self._redis.close()

    # -- liveness -------------------------------------------------------------------------

    def _requeue(self, consumer_ids: Sequence[str]) -> None:
        """Put these consumers' messages back at the head of their queues and forget them."""
        _SCRIPTS["leave"](
            self._redis,
            keys=[self._consumers_key, self._queues_key, self._deliveries_key],
            args=[self._processing_key(""), self._default_queue, *consumer_ids],
        )

    def _beat(self) -> None:
        args = [item for queue, cid in self._consumers.items() for item in (cid, queue)]
        _SCRIPTS["beat"](self._redis, keys=[self._consumers_key, self._queues_key], args=args)

    def _beat_and_reclaim(self) -> None:
        with self._translated():
            self._beat()
            self._judge.beat_succeeded()
            known = self._redis.zrange(self._consumers_key, 0, -1)
            gone = [cid for cid in (c.decode() for c in known) if gone_here(cid)]
            if gone:  # died on this machine: no need to wait for them to fall silent
                self._requeue(gone)
            if not self._judge.may_judge():
                return  # not in touch long enough to tell a silent consumer from a cut-off one
            _SCRIPTS["reclaim"](
                self._redis,
                keys=[self._consumers_key, self._queues_key, self._deliveries_key],
                args=[
                    self._processing_key(""),
                    self._timeout_ms,
                    RECLAIM_BATCH,
                    self._default_queue,
                ],
            )

    # -- taskctl --------------------------------------------------------------------------

    def size(self, queue: str) -> int:
        with self._translated(queue):
            return int(self._redis.llen(queue))

    def _delayed_members(self, queue: str) -> list[bytes]:
        with self._translated(queue):
            return [
                member
                for member, _score in self._redis.zscan_iter(self._delayed_key, count=1000)
                if (peek_routing_key(member) or self._default_queue) == queue
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
                pipe.zrem(self._delayed_key, *delayed)
            ready = pipe.execute()[0]
        return int(ready) + len(delayed)

    def dead_letters(self, queue: str, limit: int) -> list[DeadLetter]:
        with self._translated(queue):
            entries = self._redis.lrange(self._dead_key(queue), -limit, -1)
        letters = []
        for raw in reversed(entries):
            entry = orjson.loads(raw)
            body = (
                base64.b64decode(entry["body_base64"])
                if "body_base64" in entry
                else entry["body"].encode()
            )
            letters.append(
                DeadLetter(
                    entry["queue"], body, entry["reason"], GoTime.parse(entry["rejected_at"])
                )
            )
        return letters
