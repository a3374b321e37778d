"""Finding a driver class for a URL, through entry points, the same way for built-ins and plugins.

Brokers register in the ``taskd.brokers`` group and result backends in ``taskd.backends``, each
under the URL scheme it serves (``redis``, ``sqlite``...).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from taskd.errors import ConfigError

BROKERS_GROUP = "taskd.brokers"
BACKENDS_GROUP = "taskd.backends"


def scheme_of(url: str) -> str:
    return urlsplit(url).scheme.lower() if "://" in url else ""


def installed(group: str) -> dict[str, Any]:
    return {point.name: point for point in entry_points(group=group)}


def driver_class(group: str, url: str, key: str, source: str | None = None) -> Any:
    """The class registered for ``url``'s scheme; ConfigError naming ``key`` if there is none."""
    scheme = scheme_of(url)
    points = installed(group)
    point = points.get(scheme)
    if point is None:
        known = ", ".join(sorted(points)) or "none"
        raise ConfigError(
            key,
            f"no driver for {scheme or 'a URL without a scheme'!r} (installed: {known})",
            source,
        )
    try:
        return point.load()
    except ImportError as exc:
        raise ConfigError(
            key, f"the {scheme} driver cannot load: {exc} (install taskd[{scheme}]?)", source
        ) from None


def check_drivers(config: Any) -> None:
    """Build the configured broker and backend and close them again: a URL that names a
    driver but cannot be used (bad host or port, a file that cannot be created) fails here,
    naming its key, before anything depends on it. Unreachable servers are not an error:
    drivers connect lazily, and the daemon rides out an outage."""
    from taskd.backends import open_backend
    from taskd.brokers import open_broker
    from taskd.errors import BackendUnavailable, BrokerUnavailable, DriverError

    for key, open_driver in (("broker", open_broker), ("result_backend", open_backend)):
        try:
            open_driver(config).close()
        except (BrokerUnavailable, BackendUnavailable):
            continue
        except DriverError as exc:
            raise ConfigError(key, str(exc), config.source) from None
