"""What taskd verifies of a configuration before anything depends on it: at start, on
``taskd check-config`` and on a reload."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from taskd.backends import open_backend
from taskd.brokers import open_broker
from taskd.config import Config
from taskd.errors import BackendUnavailable, BrokerUnavailable, ConfigError, DriverError


def check_drivers(
    config: Config, queues: Sequence[str] = (), *, writes: bool = True, serves: bool = False
) -> None:
    """Build the configured broker and backend and close them again: a URL that names a
    driver but cannot be used (bad host or port, a file that cannot be created) fails here,
    naming its key, before anything depends on it; so does what the broker's ``check``
    refuses for the default queue and ``queues`` (a Redis queue named like the delayed set,
    a key of the wrong type), and what the backend's refuses (a Redis Cluster). Unreachable
    servers are not an error: drivers connect lazily, and the daemon rides out an outage.
    ``writes``: the caller writes (a daemon, a sender); without, what only writes need (a
    user's permission to write) is not asked. ``serves``: the daemon's check (``Broker.check``,
    ``ResultBackend.check``)."""
    with _named("broker", config):
        broker = open_broker(config)
        try:
            served = list(dict.fromkeys([config.default_queue, *queues]))
            broker.check(served, writes=writes, serves=serves)
        finally:
            broker.close()
    with _named("result_backend", config):
        backend = open_backend(config)
        try:
            backend.check(writes=writes, serves=serves)
        finally:
            backend.close()


@contextmanager
def _named(key: str, config: Config) -> Iterator[None]:
    """A driver's permanent error as a ConfigError naming ``key``; unavailability passes."""
    try:
        yield
    except (BrokerUnavailable, BackendUnavailable):
        return
    except DriverError as exc:
        raise ConfigError(key, str(exc), config.source) from None
