"""The Redis broker: machinery's key layout, with acknowledgements machinery never had.

Layout shared with machinery: the ready queue is a list named by the routing key (producers
``RPUSH``); ETA messages wait in one sorted set (``delayed_tasks``) scored by ETA in Unix
nanoseconds. taskd adds, under ``redis.key_prefix`` (``keys.py``):

- ``processing:<consumer>``: a taken message moves atomically from the queue into the
  processing list of the consumer that took it, and leaves it on ack (``broker.py``);
- ``consumers`` and ``consumer_queues``: each consumer beats from a thread; when one falls
  silent for ``consumer_timeout``, any other consumer moves its processing list back to the
  head of its queue (``consumers.py``);
- ``dead:<queue>``: messages set aside by ``reject``, as JSON with the reason and an id,
  capped by count and age; listed, requeued and dropped by taskctl (``dead.py``);
- ``deliveries``: for a message whose consumer died holding it, how many times that happened
  (so one that kills every worker that takes it can be set aside).

The scripts are ``taskd/lua/*.lua``.
"""

from taskd.brokers.redis.broker import RedisBroker

__all__ = ["RedisBroker"]
