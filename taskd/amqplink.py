"""AMQP plumbing shared by the AMQP broker and result backend: one connection to RabbitMQ,
driven by a thread of its own.

pika's BlockingConnection is not thread-safe, and it answers heartbeats only while something
calls into it. So each driver gives its connection a thread that does nothing but drive it;
every operation is handed to that thread (``add_callback_threadsafe``, pika's one thread-safe
method) and waited for. A task that runs for an hour does not silence the connection, so
RabbitMQ neither drops it nor redelivers the task's message.

URL forms are machinery's and pika's: ``amqp://user:password@host:5672/vhost`` (``%2F`` for
the default vhost ``/``; an empty path is ``/`` too), ``amqps://`` for TLS.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import structlog

from taskd.config import Config, redact_url
from taskd.errors import ConfigError, DriverError

log = structlog.get_logger("taskd.amqp")

T = TypeVar("T")
DRIVE_SLICE_S = 0.2  # the driving thread checks for a close this often
CALL_TIMEOUT_S = 30.0  # longest an operation may wait for RabbitMQ's answer


def connection_parameters(url: str, config: Config, key: str) -> Any:
    """pika's parameters for ``url``: heartbeats so that a dead peer is noticed within the
    lease's consumer_timeout (RabbitMQ gives up after two missed heartbeats)."""
    pika = _pika(config, key)
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(key, f"{redact_url(url)!r} names no host", config.source)
    try:
        _ = parts.port
        parameters = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            key, f"{redact_url(url)!r} is not a valid AMQP URL: {exc}", config.source
        ) from None
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
            key, f"the AMQP driver needs pika: pip install 'taskd[amqp]' ({exc})", config.source
        ) from None
    return pika


def transient_errors() -> tuple[type[Exception], ...]:
    """pika errors after which a new connection may succeed."""
    import pika.exceptions as errors

    return (
        errors.AMQPConnectionError,  # includes ConnectionClosed, StreamLostError, timeouts
        errors.ConnectionWrongStateError,
        ConnectionError,
        OSError,
        concurrent.futures.TimeoutError,
    )


class _Connector:
    """What both kinds of link share: how to open a connection and its session, and the
    driver's error for a connection that cannot be had."""

    heartbeats = True  # whether the connection is driven between calls, and can answer them

    def __init__(
        self,
        parameters: Any,
        open_session: Callable[[Any, int], Any],
        unavailable: type[DriverError],
        driver: str,
    ) -> None:
        if not self.heartbeats:
            parameters.heartbeat = 0  # else RabbitMQ would drop an idle sender's connection
        self._parameters, self._open_session = parameters, open_session
        self._unavailable, self._driver = unavailable, driver
        self._lock = threading.Lock()
        self._connection: Any = None
        self._session: Any = None
        self.generation = 0

    def _connect(self) -> tuple[Any, Any]:
        """A new connection and its session (the next generation)."""
        import pika

        try:
            connection = pika.BlockingConnection(self._parameters)
            self.generation += 1
            return connection, self._open_session(connection, self.generation)
        except transient_errors() as exc:
            raise self._unavailable(
                self._driver, f"cannot connect: {type(exc).__name__}: {exc}"
            ) from exc


class Link(_Connector):
    """A connection, its driving thread, and a ``session`` built on it by ``open_session``.

    ``call(fn)`` runs ``fn(session)`` on the driving thread and returns its result. When the
    connection is lost, pending and later calls raise the driver's Unavailable error and the
    next call connects again, with a new ``generation`` (deliveries of an older one are
    void: RabbitMQ has already put them back).
    """

    def __init__(
        self,
        parameters: Any,
        open_session: Callable[[Any, int], Any],
        unavailable: type[DriverError],
        driver: str,
    ) -> None:
        super().__init__(parameters, open_session, unavailable, driver)
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def call(self, fn: Callable[[Any], T], timeout_s: float = CALL_TIMEOUT_S) -> T:
        connection, session = self._ensure()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if future.done():  # given up on: the connection was lost meanwhile
                return
            try:
                result = fn(session)
            except BaseException as exc:
                _settle(future, exc)
            else:
                _settle(future, result=result)

        with self._lock:
            self._pending.add(future)
        try:
            connection.add_callback_threadsafe(run)
            return future.result(timeout_s)
        except transient_errors() as exc:
            self._lost(connection, exc)
            raise self._unavailable(self._driver, f"{type(exc).__name__}: {exc}") from exc
        finally:
            with self._lock:
                self._pending.discard(future)

    def post(self, fn: Callable[[Any], None]) -> None:
        """Run ``fn(session)`` on the driving thread without waiting: for acks, which RabbitMQ
        does not answer anyway. If the connection is gone, so are its deliveries: RabbitMQ
        delivers them again, and there is nothing left to ack."""
        connection, session = self._connection, self._session
        if connection is None or not connection.is_open:
            return

        def run() -> None:
            try:
                fn(session)
            except Exception as exc:  # a closed channel: its deliveries come back anyway
                log.debug("amqp_post_failed", driver=self._driver, error=str(exc))

        with contextlib.suppress(*transient_errors()):
            connection.add_callback_threadsafe(run)

    def close(self) -> None:
        """Stop the driving thread and close the connection: RabbitMQ puts back every
        delivery not acked."""
        if self._connection is not None and not self._closing.is_set():
            # Callbacks run in order: once this one has, every ack posted before it went out.
            with contextlib.suppress(DriverError):
                self.call(lambda _session: None, timeout_s=5)
        self._closing.set()
        with self._lock:
            self._connection = self._session = None
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)  # it closes the connection on its way out

    def _ensure(self) -> tuple[Any, Any]:
        with self._lock:
            if self._closing.is_set():
                raise self._unavailable(self._driver, "the connection is closed")
            if self._connection is not None and self._connection.is_open:
                return self._connection, self._session
            connection, session = self._connect()
            self._connection, self._session = connection, session
            self._thread = threading.Thread(
                target=self._drive, args=(connection,), name=f"taskd-{self._driver}", daemon=True
            )
            self._thread.start()
            return connection, session

    def _drive(self, connection: Any) -> None:
        """Drive the connection while it is the current one; close it when it is not."""
        try:
            while self._connection is connection and connection.is_open:
                connection.process_data_events(time_limit=DRIVE_SLICE_S)
        except Exception as exc:  # lost: the next call connects again
            self._lost(connection, exc)
        finally:
            self._quietly(connection.close)

    def _lost(self, connection: Any, exc: BaseException) -> None:
        with self._lock:
            if self._connection is not connection:
                return
            self._connection = self._session = None
            pending = list(self._pending)
        log.warning("amqp_connection_lost", driver=self._driver, error=str(exc))
        for future in pending:
            _settle(future, ConnectionError(f"connection lost: {exc}"))

    @staticmethod
    def _quietly(close: Callable[[], None]) -> None:
        with contextlib.suppress(Exception):  # already gone: RabbitMQ took back its deliveries
            close()


def _settle(
    future: concurrent.futures.Future[Any], error: BaseException | None = None, result: Any = None
) -> None:
    """Complete a future once; whoever comes second (the call or the loss) is ignored."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass


class DirectLink(_Connector):
    """A connection used by the calling thread itself (one at a time), for publishing.

    A sender waits for each publisher confirm anyway, so handing the publish to a driving
    thread would only add two thread switches to every send. Heartbeats are off (nothing
    drives the connection between sends); a connection found dead on use is replaced and
    the call tried once more on the new one, so an idle sender does not see an error for
    a connection RabbitMQ dropped in the meantime.
    """

    heartbeats = False

    def call(self, fn: Callable[[Any], T]) -> T:
        with self._lock:
            for attempt in (1, 2):
                reused = self._connection is not None and self._connection.is_open
                session = self._ensure()
                try:
                    return fn(session)
                except transient_errors() as exc:
                    self._drop()
                    if attempt == 2 or not reused:
                        raise self._unavailable(
                            self._driver, f"{type(exc).__name__}: {exc}"
                        ) from exc
                    log.info("amqp_reconnecting", driver=self._driver, error=str(exc))
            raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _ensure(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._connection, self._session = self._connect()
        return self._session

    def _drop(self) -> None:
        connection, self._connection, self._session = self._connection, None, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()
