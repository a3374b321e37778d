"""The AMQP (RabbitMQ) broker: machinery's layout, with publisher confirms and late acks.

machinery's layout: a durable exchange (``amqp.exchange``, direct by default); the worker
queue, durable, bound with ``amqp.binding_key``; messages persistent JSON with the
signature's Priority and Headers. On a direct exchange a message without a RoutingKey is
routed by the binding key, as machinery's AdjustRoutingKey does, so Go producers and taskd
reach the same queue. taskd also binds every queue by its own name (a retry, or a task sent
with ``--queue``, names its queue), and declares what it publishes to first, so nothing sent
before a worker started is lost. It does not declare machinery's extra queue named after the
binding key, which nobody reads.

``broker.py`` is the fetch path, ``delays.py`` the ETA scheme, ``admin.py`` the operations
for taskctl; ``taskd/amqplink.py`` holds the connections (the consuming one driven by the
child while it waits, and by a keeper thread while a task runs).
"""

from taskd.brokers.amqp.broker import AMQPBroker

__all__ = ["AMQPBroker"]
