"""Delayed messages on RabbitMQ: a fixed ladder of TTL queues, one per power of two.

A message due in N units (UNIT_MS each, rounded up, so never early) is published to the top
level with a routing key spelling N in binary, most significant level first, then its real
routing key: ``0.0.1.0.….1.<routing key>``. Level L is a topic exchange: a message whose bit
L is 1 goes to level L's queue, whose messages all live 2^L units (one TTL per queue, so no
long delay blocks a short one) and then dead-letter to level L-1; a 0 skips straight to level
L-1. After level 0, the ``deliver`` exchange hands it to a queue per routing key,
``<exchange>.delay.to.<routing key>``, whose messages expire at once and dead-letter into the
exchange with that routing key: it arrives as an undelayed message would, in every queue
bound with that key (a Go worker's too). Any delay up to 2^28 units (310 days) takes at most
LEVELS queues. Whatever the delays, taskd creates LEVELS queues and LEVELS + 1 topic
exchanges per exchange, plus one queue per routing key that delayed messages use; a longer
delay goes round again (the ETA header makes the consumer send it back).

The same scheme as NServiceBus's RabbitMQ delayed delivery. Go producers' own delay queues
(machinery's ``delay.<ms>.<exchange>.<routing key>``, TTL and dead-letter to the exchange)
keep working: they deliver into the same exchange and queues.
"""

from __future__ import annotations

import math
import time
from typing import Any

from taskd.wire import GoTime

UNIT_MS = 100  # delays are rounded up to this
LEVELS = 28  # 2^28 units: the longest delay in one trip
MAX_UNITS = 2**LEVELS - 1
ETA_HEADER = "x-taskd-eta-ns"  # when a delayed message is due (Unix ns)
EARLY_TOLERANCE_NS = 50_000_000  # a delayed message this close to its ETA runs, not waits


def waits(eta: GoTime | int | None) -> bool:
    """Whether a message due at ``eta`` (Unix ns as in ETA_HEADER; None: no ETA) is to wait:
    in the ladder, or, come round before it, for another trip (a delay past the ladder's
    longest). One due within EARLY_TOLERANCE_NS runs now."""
    eta_ns = eta.unix_ns if isinstance(eta, GoTime) else eta
    return isinstance(eta_ns, int) and eta_ns - time.time_ns() > EARLY_TOLERANCE_NS


def units_for(delay_ms: float) -> int:
    return min(max(math.ceil(delay_ms / UNIT_MS), 1), MAX_UNITS)


def routing_key(units: int, destination: str) -> str:
    return ".".join(format(units, f"0{LEVELS}b")) + "." + destination


def _bit_pattern(level: int, bit: str) -> str:
    return "*." * (LEVELS - 1 - level) + bit + ".#"


class Ladder:
    """The delay ladder of one exchange: ``<exchange>.delay.NN`` exchanges and queues, and
    ``<exchange>.delay.deliver`` at the end."""

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange
        self.prefix = f"{exchange}.delay"
        self.deliver = f"{self.prefix}.deliver"

    def level(self, level: int) -> str:
        return f"{self.prefix}.{level:02d}"

    @property
    def top(self) -> str:
        return self.level(LEVELS - 1)

    def next_hop(self, level: int) -> str:
        return self.level(level - 1) if level > 0 else self.deliver

    def queues(self) -> list[str]:
        return [self.level(level) for level in range(LEVELS)]

    def exchanges(self) -> list[str]:
        return [*self.queues(), self.deliver]

    def declare(self, channel: Any) -> None:
        """Every level's exchange and queue (idempotent)."""
        for name in self.exchanges():
            channel.exchange_declare(name, exchange_type="topic", durable=True)
        for level in range(LEVELS):
            name = self.level(level)
            channel.queue_declare(
                name,
                durable=True,
                arguments={
                    "x-message-ttl": (2**level) * UNIT_MS,
                    "x-dead-letter-exchange": self.next_hop(level),
                },
            )
            channel.queue_bind(name, name, routing_key=_bit_pattern(level, "1"))
            channel.exchange_bind(self.next_hop(level), name, routing_key=_bit_pattern(level, "0"))

    def final(self, routing_key: str) -> str:
        """The last queue of messages delayed for ``routing_key``."""
        return f"{self.prefix}.to.{routing_key}"

    def declare_destination(self, channel: Any, routing_key: str) -> None:
        """The way out of the ladder for ``routing_key``: a queue whose messages expire at
        once (x-message-ttl 0) into the exchange, with that routing key."""
        final = self.final(routing_key)
        channel.queue_declare(
            final,
            durable=True,
            arguments={
                "x-message-ttl": 0,
                "x-dead-letter-exchange": self.exchange,
                "x-dead-letter-routing-key": routing_key,
            },
        )
        channel.queue_bind(final, self.deliver, routing_key="*." * LEVELS + routing_key)
