"""What taskd verifies of a configuration before anything depends on it: at start, on
``taskd check-config`` and on a reload."""

from __future__ import annotations

from taskd.backends import open_backend
from taskd.brokers import open_broker
from taskd.config import Config
from taskd.errors import BackendUnavailable, BrokerUnavailable, ConfigError, DriverError


def check_drivers(config: Config) -> None:
    """Build the configured broker and backend and close them again: a URL that names a
    driver but cannot be used (bad host or port, a file that cannot be created) fails here,
    naming its key, before anything depends on it. Unreachable servers are not an error:
    drivers connect lazily, and the daemon rides out an outage."""
    for key, open_driver in (("broker", open_broker), ("result_backend", open_backend)):
        try:
            open_driver(config).close()
        except (BrokerUnavailable, BackendUnavailable):
            continue
        except DriverError as exc:
            raise ConfigError(key, str(exc), config.source) from None
