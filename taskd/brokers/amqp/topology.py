"""What the AMQP broker declares, per connection: the exchange, queues and their bindings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskd import logs
from taskd.amqplink import PRECONDITION_FAILED, open_channel, refused_at_check
from taskd.brokers.amqp import delays
from taskd.config import Config
from taskd.errors import BrokerError, BrokerUnavailable, ConfigError

log = logs.get_logger("taskd.amqp")
DEAD_PREFIX = "taskd.dead."  # + queue: messages set aside by reject
# Where they are published (direct, bound to each by its name): not the default exchange,
# whose publishes RabbitMQ checks as writes to amq.default, which users kept to names of
# their own lack; and a declaration, unlike a publish, is checked at start even under a
# resource alarm. The one set of names (^taskd\.dead) covers both.
DEAD_EXCHANGE = "taskd.dead"
SETTING_ASIDE = (
    f"let undeliverable messages be set aside (declare {DEAD_EXCHANGE} and {DEAD_PREFIX}<queue>,"
    " bind them)"
)
MAX_NAME_BYTES = 255  # AMQP's short strings: exchange, queue and routing key names
_warned_dead_queues: set[str] = set()  # dead queues whose other arguments were logged


@dataclass
class Session:
    """One connection's channels and what was declared on it (all gone with it)."""

    connection: Any
    publisher: Any = None  # in confirm mode: every publish waits for RabbitMQ's ack
    pipeline: Any = None  # a Pipeline: publishes whose confirms are awaited later
    consumer: Any = None
    prefetch: int = 0
    consuming: dict[str, str] = field(default_factory=dict)  # queue -> consumer tag
    declared: set[str] = field(default_factory=set)

    def publishing(self) -> Any:
        self.publisher = open_channel(self.connection, self.publisher, confirms=True)
        return self.publisher

    def consuming_channel(self) -> Any:
        channel = open_channel(self.connection, self.consumer)
        if channel is not self.consumer:  # what the old one consumed is gone with it
            self.consumer, self.prefetch = channel, 0
            self.consuming.clear()
            channel._impl.add_on_close_callback(_consumer_closed)  # pika's channel under it
        return channel


def _consumer_closed(_channel: Any, reason: BaseException) -> None:
    """RabbitMQ closed the consuming channel (a lost connection, or taskd's own close, is
    logged elsewhere): what it delivered there goes to other consumers again; say why."""
    import pika.exceptions

    if not isinstance(reason, pika.exceptions.ChannelClosedByBroker):
        return
    if reason.reply_code == PRECONDITION_FAILED and "acknowledgement" in reason.reply_text:
        log.error(
            "amqp_delivery_timed_out",
            reason=reason.reply_text,
            then="RabbitMQ delivers the running task's message again; a worker that takes it"
            " while this one runs the task sends it again for later (task_left_to_peer)",
            fix="raise RabbitMQ's consumer_timeout above the longest task",
        )
    else:
        log.warning("amqp_consumer_closed", code=reason.reply_code, reason=reason.reply_text)


@dataclass(frozen=True)
class Topology:
    exchange: str
    exchange_type: str
    binding_key: str
    queue_arguments: dict[str, Any]
    binding_arguments: dict[str, Any]
    default_queue: str
    dead_arguments: dict[str, Any] = field(default_factory=dict)  # of taskd.dead.<queue>

    @classmethod
    def of(cls, config: Config) -> Topology:
        amqp, worker = config.amqp, config.worker
        dead: dict[str, Any] = {}
        if worker.dead_letters_max:  # drop-head, RabbitMQ's default overflow: oldest first
            dead["x-max-length"] = worker.dead_letters_max
        if worker.dead_letters_max_age:
            dead["x-message-ttl"] = worker.dead_letters_max_age * 1000
        topology = cls(
            amqp.exchange,
            amqp.exchange_type,
            amqp.binding_key,
            dict(amqp.queue_declare_args),
            dict(amqp.queue_binding_args),
            config.default_queue,
            dead,
        )
        if _bytes(topology.ladder.deliver) > MAX_NAME_BYTES:
            raise ConfigError(
                "amqp.exchange",
                f"is {_bytes(amqp.exchange)} bytes; RabbitMQ takes names of at most"
                f" {MAX_NAME_BYTES}, and taskd's delay exchanges add {len('.delay.deliver')}",
                config.source,
            )
        for key, name in (
            ("amqp.binding_key", amqp.binding_key),
            ("default_queue", config.default_queue),
        ):
            topology.check_names([name], key, config.source)
        return topology

    def check_names(self, names: Sequence[str], key: str, source: str | None = None) -> None:
        """ConfigError naming ``key`` for a queue or routing key too long for RabbitMQ."""
        for name in names:
            if (reason := self.name_error(name)) is not None:
                raise ConfigError(key, reason, source)

    def name_error(self, name: str) -> str | None:
        """Why ``name`` cannot be a queue or routing key here, or None: AMQP's names stop at
        255 bytes, and taskd derives longer ones from it (its delayed routing key, the last
        queue of its delays, its dead letters' queue)."""
        derived = (delays.routing_key(0, name), self.ladder.final(name), DEAD_PREFIX + name)
        if max(map(_bytes, derived)) <= MAX_NAME_BYTES:
            return None
        most = MAX_NAME_BYTES - max(_bytes(d) - _bytes(name) for d in derived)
        return (
            f"{name[:40]!r}{'...' if len(name) > 40 else ''} is {_bytes(name)} bytes; on RabbitMQ"
            f" with exchange {self.exchange!r} a queue or routing key may have at most {most}"
            f" (AMQP's names stop at {MAX_NAME_BYTES} bytes, and taskd derives longer ones from"
            " it for delays and dead letters)"
        )

    def check_declarable(
        self,
        call: Callable[[Callable[[Session], None]], None],
        queues: Sequence[str],
        source: str | None,
        *,
        writes: bool = True,
    ) -> None:
        """Declare the exchange, ``queues`` and their bindings through ``call`` (the broker's
        own), then, for a caller that ``writes``, what setting a message aside takes (the
        dead-letter exchange and queues, bound). What RabbitMQ refuses there (a user without
        the permission to declare, or kept to names that leave out taskd's own; an exchange
        or queue declared before with other arguments) is a ConfigError naming the setting,
        at start, instead of a failure of every fetch of every child for good, or a crash of
        every child given a message to set aside. An unreachable RabbitMQ passes
        (BrokerUnavailable: the daemon rides it out)."""
        doing = ["declare"]  # what the refusal was of

        def declare(session: Session) -> None:
            channel = session.publishing()
            for queue in queues:
                self.declare_queue(session, channel, queue)
            if not writes:
                return
            doing[0] = SETTING_ASIDE
            for queue in queues:
                self.declare_dead(session, queue)

        try:
            call(declare)
        except BrokerError as exc:
            if isinstance(exc, BrokerUnavailable):
                raise
            if getattr(exc.__cause__, "reply_code", 0) != PRECONDITION_FAILED:
                key = "broker"  # the URL's user may not: ACCESS_REFUSED
            elif doing[0] == SETTING_ASIDE:  # taskd.dead declared otherwise: no setting names it
                key = "broker"
            elif "for exchange" in str(exc.__cause__):
                key = "amqp.exchange_type"
            else:
                key = "amqp.queue_declare_args"
            raise refused_at_check(exc, "broker", key, source, doing[0]) from None

    def warn_of_bounds(self) -> None:
        """A queue bounded in ``amqp.queue_declare_args`` loses tasks where RabbitMQ keeps it
        at its bound without telling anyone: say how, once per check (start, check-config,
        reload)."""
        if not {"x-max-length", "x-max-length-bytes"} & self.queue_arguments.keys():
            return
        if self.queue_arguments.get("x-overflow", "drop-head") == "drop-head":
            risk = (
                "x-overflow is drop-head (RabbitMQ's default): a full queue drops its oldest"
                " tasks without a word; reject-publish refuses new ones instead"
            )
        else:
            risk = (
                "a delayed task (ETA, countdown, retry) that leaves its delay queue while the"
                " queue is full is dropped by RabbitMQ (dead-lettering has no confirms)"
            )
        log.warning("amqp_queue_bounded", key="amqp.queue_declare_args", risk=risk)

    @property
    def quorum(self) -> bool:
        return self.queue_arguments.get("x-queue-type") == "quorum"

    @property
    def routes_by_binding_key(self) -> bool:
        return self.exchange_type == "direct"

    def queue_for(self, routing_key: str) -> str:
        """The queue a routing key addresses: the default queue for the binding key, else
        the queue of that name."""
        if routing_key == self.binding_key:
            return self.default_queue
        return routing_key

    def declare_queue(self, session: Session, channel: Any, queue: str) -> None:
        """The exchange, ``queue`` and its bindings: by the binding key for the default queue
        (machinery's layout), by its own name for every queue."""
        if queue in session.declared:
            return
        if (reason := self.name_error(queue)) is not None:  # as a message's RoutingKey
            raise BrokerError("amqp", reason, queue)
        if "exchange" not in session.declared:
            channel.exchange_declare(self.exchange, exchange_type=self.exchange_type, durable=True)
            session.declared.add("exchange")
        channel.queue_declare(queue, durable=True, arguments=self.queue_arguments or None)
        keys = {queue}
        if queue == self.default_queue:
            keys.add(self.binding_key)
        for key in sorted(keys):
            channel.queue_bind(
                queue, self.exchange, routing_key=key, arguments=self.binding_arguments or None
            )
        session.declared.add(queue)

    @property
    def ladder(self) -> delays.Ladder:
        return delays.Ladder(self.exchange)

    def declare_delayed(self, session: Session, channel: Any, routing_key: str) -> None:
        """The delay ladder, its way out for ``routing_key``, and the queue that routing key
        addresses (so the message is kept even before any worker started)."""
        if "ladder" not in session.declared:
            self.ladder.declare(channel)
            session.declared.add("ladder")
        marker = f"delayed:{routing_key}"
        if marker not in session.declared:
            queue = self.queue_for(routing_key)
            self.declare_queue(session, channel, queue)
            self.ladder.declare_destination(channel, routing_key)
            session.declared.add(marker)

    def declare_dead(self, session: Session, queue: str) -> str:
        """``taskd.dead.<queue>``, capped by ``dead_arguments`` and bound by its name to
        DEAD_EXCHANGE, on the publishing channel (taken again from the session afterwards: a
        refusal closes it). RabbitMQ refuses to redeclare a queue with other arguments than
        it has (one declared by an older taskd, or under another cap): that is logged once
        and the queue used as it is."""
        import pika.exceptions

        name = DEAD_PREFIX + queue
        if name not in session.declared:
            session.publishing().exchange_declare(DEAD_EXCHANGE, "direct", durable=True)
            try:
                session.publishing().queue_declare(
                    name, durable=True, arguments=self.dead_arguments or None
                )
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != PRECONDITION_FAILED:
                    raise
                if name not in _warned_dead_queues:
                    _warned_dead_queues.add(name)
                    log.warning(
                        "dead_letter_queue_not_capped",
                        queue=name,
                        wanted=self.dead_arguments,
                        error=exc.reply_text,
                        fix="delete the queue once empty, or cap it with a RabbitMQ policy"
                        " (max-length, message-ttl)",
                    )
            session.publishing().queue_bind(name, DEAD_EXCHANGE, routing_key=name)
            session.declared.add(name)
        return name


def _bytes(name: str) -> int:
    return len(name.encode())
