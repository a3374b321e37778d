"""Writing and reading a pika connection at once, without a turn of its ioloop: the hot path
of publishes, acks and confirms (``taskd.brokers.amqp``). pika's own flush takes a turn of its
ioloop (a timer, an epoll round) for each; these go to the transport directly where it is
plain TCP, and through pika's ioloop otherwise (TLS).
"""

from __future__ import annotations

import functools
from typing import Any


def send_now(connection: Any) -> None:
    """Write the frames pika has buffered for ``connection`` (a BlockingConnection) at once,
    joined into one system call. pika's own flush takes a turn of its ioloop (a timer, an
    epoll round) and then sends each frame on its own (a publish is three): on a loopback
    connection each send costs as much as the rest of a publish. Nothing is read: what
    RabbitMQ sends is taken in by the next call that waits (or ``take_in``)."""
    transport = _plain_transport(connection)
    if transport is None:
        connection.process_data_events(time_limit=0)
        return
    buffers = transport._tx_buffers
    if not buffers:
        return
    if len(buffers) > 1:
        joined = b"".join(buffers)
        buffers.clear()
        buffers.append(joined)
    # What the ioloop calls once the socket is writable: a short write keeps the rest
    # buffered, and a failed one aborts the connection, as it would there.
    transport._on_socket_writable()


def take_in(connection: Any) -> None:
    """Handle what RabbitMQ has sent on ``connection`` so far, without waiting: callbacks of
    asynchronous channels (publisher confirms) run now, in this thread, without the timer
    and epoll round of a turn of pika's ioloop. A lost connection is noticed here and raised
    by the next call into pika."""
    transport = _plain_transport(connection)
    if transport is None:
        connection.process_data_events(time_limit=0)
    else:  # what the ioloop calls once the socket is readable; it stops at EAGAIN
        transport._on_socket_readable()


def _plain_transport(connection: Any) -> Any:
    """The plain TCP transport under a BlockingConnection, whose buffers and handlers
    ``send_now`` and ``take_in`` use directly; None for any other (TLS, or none: closed)."""
    transport = getattr(connection._impl, "_transport", None)
    return transport if transport is not None and type(transport) is _plain_class() else None


@functools.cache  # looked up once
def _plain_class() -> type | None:
    """pika's plain TCP transport class (None if a pika release renames it)."""
    from pika.adapters.utils import io_services_utils

    return getattr(io_services_utils, "_AsyncPlaintextTransport", None)
