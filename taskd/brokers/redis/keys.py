"""The names of the Redis broker's keys: machinery's, and taskd's own under a prefix."""

from __future__ import annotations

from dataclasses import dataclass

from taskd.config import Config


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str  # redis.key_prefix
    delayed: str  # machinery's sorted set of ETA messages (redis.delayed_tasks_key)
    default_queue: str  # where a message goes whose own queue is unknown

    @classmethod
    def of(cls, config: Config) -> RedisKeys:
        return cls(config.redis.key_prefix, config.redis.delayed_tasks_key, config.default_queue)

    @property
    def consumers(self) -> str:
        """Sorted set: consumer id -> last beat, ms on Redis's clock."""
        return f"{self.prefix}consumers"

    @property
    def consumer_queues(self) -> str:
        """Hash: consumer id -> the queue it takes from."""
        return f"{self.prefix}consumer_queues"

    @property
    def deliveries(self) -> str:
        """Hash: SHA-1 of a message -> deliveries whose consumer died holding it."""
        return f"{self.prefix}deliveries"

    def processing(self, consumer_id: str) -> str:
        """List: the messages a consumer holds."""
        return f"{self.prefix}processing:{consumer_id}"

    def dead(self, queue: str) -> str:
        """List: messages of ``queue`` set aside, as JSON with the reason."""
        return f"{self.prefix}dead:{queue}"

    def owned(self, key: str) -> bool:
        """Whether ``key`` is one of taskd's own (no queue or delayed set may be named so):
        the keys above, and the result backend's chord claims (``<prefix>chord:<group>``)."""
        families = tuple(f"{self.prefix}{family}:" for family in ("processing", "dead", "chord"))
        return key in (self.consumers, self.consumer_queues, self.deliveries) or key.startswith(
            families
        )
