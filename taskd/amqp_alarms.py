"""RabbitMQ's resource alarms as a connection meets them.

When RabbitMQ runs low on memory or disk it stops reading every connection that publishes,
until the alarm clears; consumers go on. It tells the connection (``connection.blocked``,
with the reason) only once that connection publishes, and RabbitMQ logs nothing a taskd
operator would look at. Without this, a worker whose callback waits on such a connection,
or a ``taskctl send``, sat silent for ``blocked_connection_timeout`` and then failed with
"no publisher confirm". ``watch`` logs the block as it comes (``amqp_blocked``, with the
reason) and as it ends (``amqp_unblocked``); ``note`` says it in the error of a publish
whose confirm never came.
"""

from __future__ import annotations

import functools
import time
import weakref
from typing import Any

from taskd import logs

log = logs.get_logger("taskd.amqp")

# connection -> (RabbitMQ's reason, when it blocked the connection); gone when unblocked
_blocked: weakref.WeakKeyDictionary[Any, tuple[str, float]] = weakref.WeakKeyDictionary()


def watch(connection: Any, driver: str) -> None:
    """Log when RabbitMQ blocks and unblocks ``connection`` (a pika BlockingConnection),
    and keep why for ``note``. On the connection under it: the BlockingConnection's own
    callbacks wait for a call to process_data_events, which a blocked publish never makes."""
    impl = connection._impl
    impl.add_on_connection_blocked_callback(functools.partial(_on_blocked, driver))
    impl.add_on_connection_unblocked_callback(functools.partial(_on_unblocked, driver))


def note(connection: Any) -> str:
    """Why nothing sent on ``connection`` is being confirmed, if RabbitMQ blocked it: to add
    to an error; '' if it did not."""
    impl = getattr(connection, "_impl", None)
    blocked = _blocked.get(impl) if impl is not None else None
    if blocked is None:
        return ""
    reason, since = blocked
    return (
        f"; RabbitMQ has blocked this connection for {time.monotonic() - since:.0f} s"
        f" ({reason}): a resource alarm, publishes resume once it clears"
    )


def _on_blocked(driver: str, connection: Any, frame: Any) -> None:
    reason = str(getattr(frame.method, "reason", "") or "a resource alarm")
    _blocked[connection] = (reason, time.monotonic())
    log.warning("amqp_blocked", driver=driver, reason=reason)


def _on_unblocked(driver: str, connection: Any, _frame: Any) -> None:
    _reason, since = _blocked.pop(connection, ("", time.monotonic()))
    log.info("amqp_unblocked", driver=driver, blocked_s=round(time.monotonic() - since, 3))
