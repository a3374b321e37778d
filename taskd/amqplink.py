"""AMQP plumbing shared by the AMQP broker and result backend: connections to RabbitMQ.

pika's BlockingConnection is not thread-safe, and it answers heartbeats only while something
calls into it. A ``Link`` is used under a lock by whichever thread needs it, and a keeper
thread drives it whenever nobody else does, so a long task does not silence the connection
and RabbitMQ does not drop it (RabbitMQ's own consumer_timeout, 30 minutes by default, still
bounds how long a delivery may stay unacked). A ``DirectLink`` (for publishing) is used by
its caller alone. (``taskd.amqp_frames`` writes and reads a connection without pika's ioloop.)

URL forms are machinery's and pika's: ``amqp://user:password@host:5672/vhost`` (``%2F`` for
the default vhost ``/``; an empty path is ``/`` too), ``amqps://`` for TLS, with the options
of ``taskd.tls`` in the query (or pika's own ``ssl_options``); pika's other query options too.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from taskd import amqp_alarms, forking, logs
from taskd.config import Config, redact_url
from taskd.drivers import IDLE_CHECK_S
from taskd.errors import ConfigError, DriverError
from taskd.tls import TLSOptions, split_query

log = logs.get_logger("taskd.amqp")

T = TypeVar("T")
# AMQP reply codes RabbitMQ closes a channel with, that taskd tells apart.
NOT_FOUND = 404  # no such queue or exchange
RESOURCE_LOCKED = 405  # an exclusive queue another connection declared
PRECONDITION_FAILED = 406  # a queue or exchange declared before with other arguments
# pika's URL options that connection_parameters sets itself, whatever the URL says.
SET_BY_TASKD = (
    "heartbeat", "connection_attempts", "socket_timeout", "blocked_connection_timeout",
    "client_properties",
)  # fmt: skip
KEEP_MAX_S = 1.0  # an idle connection is driven at least this often (a quarter heartbeat if less)


def connection_parameters(url: str, config: Config, key: str) -> Any:
    """pika's parameters for ``url``: heartbeats so that a dead peer is noticed within the
    lease's consumer_timeout (RabbitMQ gives up after two missed heartbeats)."""
    pika = _pika(config, key)
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(key, f"{redact_url(url)!r} names no host", config.source)
    tls, rest = split_query(url, parts.query, parts.scheme == "amqps", key, config.source)
    own_tls = tls is not None and tls != TLSOptions()
    given = dict(parse_qsl(rest))
    if own_tls and "ssl_options" in given:
        raise ConfigError(
            key, f"{redact_url(url)!r}: ssl_options (pika's form) or ssl_*, not both", config.source
        )
    if ours := [name for name in given if name in SET_BY_TASKD]:
        raise ConfigError(
            key,
            f"{redact_url(url)!r}: {', '.join(ours)}: set by taskd (the heartbeat from"
            " worker.consumer_timeout), not in the URL",
            config.source,
        )
    try:
        _ = parts.port
        parameters = pika.URLParameters(urlunsplit(parts._replace(query=rest)))
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            key, f"{redact_url(url)!r} is not a valid AMQP URL: {exc}", config.source
        ) from None
    if own_tls:  # else pika's: the system's CAs for amqps://, or its ssl_options
        assert tls is not None
        parameters.ssl_options = pika.SSLOptions(tls.context(), parts.hostname)
    parameters.heartbeat = max(1, math.ceil(config.lease.consumer_timeout_s / 2))
    parameters.connection_attempts = 1
    parameters.socket_timeout = 10
    parameters.blocked_connection_timeout = 60
    parameters.client_properties = {"connection_name": "taskd"}
    return parameters


def _pika(config: Config, key: str) -> Any:
    try:
        import pika
    except ImportError as exc:
        raise ConfigError(
            key,
            f"the AMQP driver needs pika (a dependency of taskd): {exc}",
            config.source,
        ) from None
    return pika


def refusals() -> tuple[type[Exception], ...]:
    """pika errors of a connection RabbitMQ refuses for good: credentials, vhost, protocol."""
    import pika.exceptions as errors

    return (
        errors.ProbableAuthenticationError,
        errors.ProbableAccessDeniedError,
        errors.AuthenticationError,
        errors.IncompatibleProtocolError,
        errors.ProtocolVersionMismatch,
    )


def refused_at_check(
    exc: DriverError, url_key: str, key: str, source: str | None, doing: str = "declare"
) -> ConfigError:
    """What RabbitMQ refused a driver's check at start, as a ConfigError: the connection
    itself (credentials, an unknown vhost) naming ``url_key``, what the check was ``doing``
    (a declaration...) naming ``key``."""
    if isinstance(exc.__cause__, refusals()):
        return ConfigError(url_key, exc.reason, source)
    return ConfigError(key, f"RabbitMQ refused to {doing}: {exc.reason}", source)


def transient_errors() -> tuple[type[Exception], ...]:
    """pika errors after which a new connection may succeed."""
    import pika.exceptions as errors

    return (
        errors.AMQPConnectionError,  # includes ConnectionClosed, StreamLostError, timeouts
        errors.ConnectionWrongStateError,
        ConnectionError,
        OSError,
    )


class _Connector:
    """What both kinds of link share: how to open a connection and its session, and the
    driver's error for a connection that cannot be had."""

    def __init__(
        self,
        parameters: Any,
        open_session: Callable[[Any], Any],
        unavailable: type[DriverError],
        driver: str,
    ) -> None:
        self._parameters, self._open_session = parameters, open_session
        self._unavailable, self._driver = unavailable, driver
        # Unavailable errors derive from the driver's permanent error (BrokerError...).
        self._failed: type[DriverError] = unavailable.__bases__[0]
        self._lock = threading.Lock()
        self._connection: Any = None
        self._session: Any = None
        self._closing = threading.Event()  # closed for good
        forking.forget_in_children(self)

    def forget_parents(self) -> None:
        """In a forked child: the parent's connection is left to the parent (closing it
        would close it for the parent too); the child's first call connects its own."""
        self._lock = threading.Lock()
        self._connection = self._session = None

    def _drop(self, exc: BaseException | None) -> None:
        raise NotImplementedError

    def _spoiled(self, exc: Exception) -> DriverError:
        """A call that failed neither on its connection nor on a channel (pika's own errors, such
        as a name longer than AMQP's 255 bytes, which leaves a half-made request that spoils
        the channel's next ones): the connection is started afresh, and the call failed for
        good, as the driver's error."""
        self._drop(None)  # not lost: the caller reports the error
        return self._failed(self._driver, f"{type(exc).__name__}: {exc}")

    def _connect(self) -> tuple[Any, Any]:
        """A new connection and its session."""
        import pika

        try:
            connection = pika.BlockingConnection(self._parameters)
            amqp_alarms.watch(connection, self._driver)
            return connection, self._open_session(connection)
        except refusals() as exc:  # waiting will not help: the URL or the server must change
            raise self._failed(self._driver, f"refused: {type(exc).__name__}: {exc}") from exc
        except transient_errors() as exc:
            raise self._unavailable(
                self._driver, f"cannot connect: {type(exc).__name__}: {exc}", unsent=True
            ) from exc


class Link(_Connector):
    """A connection shared by the calling threads and a keeper thread, one at a time.

    ``call(fn)`` runs ``fn(session)`` in the calling thread, holding the connection's lock:
    a consumer waiting for deliveries drives the connection itself (``wait``), so a delivery
    reaches it without a thread switch. While nobody holds the lock (a task is running), the
    keeper thread drives it now and then, answering heartbeats: a long task does not silence
    the connection, and RabbitMQ does not redeliver its message for that. When the connection
    is lost, calls raise the driver's Unavailable error and the next one connects again (a
    new connection: deliveries of the old one are void, RabbitMQ has put them back).
    """

    _keeper: threading.Thread | None = None  # started with the first connection

    def forget_parents(self) -> None:
        super().forget_parents()
        self._keeper = None  # the parent's thread is not in the child

    def call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            session = self._ensure()
            try:
                return fn(session)
            except transient_errors() as exc:
                why = _why(exc, self._connection)
                self._drop(exc)
                raise self._unavailable(self._driver, why) from exc
            except _callers_errors():
                raise
            except Exception as exc:
                raise self._spoiled(exc) from exc

    def post(self, fn: Callable[[Any], None]) -> None:
        """``fn(session)`` where losing the connection does not matter (acks: if the
        connection is gone, RabbitMQ delivers its messages again and there is nothing to
        ack, so no new connection is made for it)."""
        if self._connection is None or not self._connection.is_open:
            return
        with contextlib.suppress(DriverError):
            self.call(fn)

    def wait(self, seconds: float) -> None:
        """Drive the connection for up to ``seconds``: deliveries and other events reach their
        callbacks in this thread. Returns early once any did."""
        self.call(lambda session: session.connection.process_data_events(time_limit=seconds))

    def close(self) -> None:
        """Stop the keeper and close the connection: RabbitMQ puts back every delivery not
        acked."""
        self._closing.set()
        with self._lock:
            self._drop(None)

    def _ensure(self) -> Any:
        if self._closing.is_set():
            raise self._unavailable(self._driver, "the connection is closed")
        if self._connection is None or not self._connection.is_open:
            self._connection, self._session = self._connect()
            if self._keeper is None:
                self._keeper = threading.Thread(
                    target=self._keep, name=f"taskd-{self._driver}", daemon=True
                )
                self._keeper.start()
        return self._session

    def _keep(self) -> None:
        """While nobody uses the connection, drive it now and then (heartbeats, deliveries)."""
        heartbeat_s = getattr(self._parameters, "heartbeat", None) or 60
        keep_s = min(max(heartbeat_s / 4, 0.05), KEEP_MAX_S)
        while not self._closing.wait(keep_s):
            if not self._lock.acquire(blocking=False):
                continue  # in use, so being driven
            try:
                if self._connection is not None and self._connection.is_open:
                    self._connection.process_data_events(time_limit=0)
            except Exception as exc:  # lost: the next call connects again
                self._drop(exc)
            finally:
                self._lock.release()

    def _drop(self, exc: BaseException | None) -> None:
        """Forget the connection (the lock is held); ``exc`` says why it was lost."""
        connection, self._connection, self._session = self._connection, None, None
        if connection is None:
            return
        if exc is not None:
            log.warning("amqp_connection_lost", driver=self._driver, error=str(exc))
        with contextlib.suppress(Exception):
            connection.close()


class DirectLink(_Connector):
    """A connection used by the calling thread itself (one at a time), for publishing.

    A sender drives the connection itself, publishing and then waiting for confirms (each
    one's, or a window's: ``brokers.amqp.pipeline``), so handing the publish to another
    thread would only add thread switches to every send. pika checks heartbeats while it
    waits for a confirm, so a dead peer is an error, not a hang; between sends nothing drives
    the connection, and RabbitMQ may drop it for silence. A connection found dead on use is
    replaced and ``fn`` called once more on the new one (so it must resume, not repeat: the
    broker's publish skips what was already confirmed), and an idle sender does not see an
    error for a connection RabbitMQ dropped in the meantime (found before it publishes, as
    ``_drop_if_closed_while_idle`` says).
    """

    _used_at = 0.0  # when a call last ended

    def call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                self._drop_if_closed_while_idle()
                for attempt in (1, 2):
                    reused = self._connection is not None and self._connection.is_open
                    try:
                        session = self._ensure()
                    except DriverError as exc:  # unsent, unless the first attempt wrote some
                        if attempt == 1 or not exc.unsent:
                            raise
                        raise self._unavailable(self._driver, exc.reason) from exc
                    try:
                        return fn(session)
                    except _callers_errors():
                        raise
                    except transient_errors() as exc:
                        why = _why(exc, self._connection)
                        self._drop()
                        if attempt == 2 or not reused:
                            raise self._unavailable(self._driver, why) from exc
                        log.info("amqp_reconnecting", driver=self._driver, error=str(exc))
                    except Exception as exc:
                        raise self._spoiled(exc) from exc
                raise AssertionError("unreachable")
            finally:
                self._used_at = time.monotonic()

    def _drop_if_closed_while_idle(self) -> None:
        """A publish on a connection RabbitMQ closed meanwhile (a restart, missed heartbeats,
        a proxy's idle limit) is written without an error, and found lost only when its
        confirm never comes: a SendError for a send that never left. So a connection idle
        for IDLE_CHECK_S is driven once first: a close waiting on it is raised now, and the
        connection replaced before anything is written."""
        if self._connection is None or time.monotonic() - self._used_at < IDLE_CHECK_S:
            return
        try:
            self._connection.process_data_events(time_limit=0)
        except transient_errors() as exc:
            self._drop()
            log.info("amqp_reconnecting", driver=self._driver, error=str(exc))

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _ensure(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection, self._session = self._connect()
        return self._session

    def _drop(self, _exc: BaseException | None = None) -> None:
        connection, self._connection, self._session = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()


def _callers_errors() -> tuple[type[Exception], ...]:
    """What a call raises for its caller to handle: RabbitMQ's refusals on a channel (which
    closes the channel alone: it is opened again), and the driver's own errors."""
    import pika.exceptions as errors

    return (errors.AMQPChannelError, DriverError)


def _why(exc: BaseException, connection: Any) -> str:
    """The error of a call that failed on ``connection``, with RabbitMQ's block if any."""
    return f"{type(exc).__name__}: {exc}{amqp_alarms.note(connection)}"


def open_channel(connection: Any, channel: Any, *, confirms: bool = False) -> Any:
    """``channel`` if it is still open, else a new one on ``connection`` (an AMQP error
    closes the channel it happened on), in publisher-confirm mode if ``confirms``."""
    if channel is not None and channel.is_open:
        return channel
    channel = connection.channel()
    if confirms:
        channel.confirm_delivery()
    return channel
