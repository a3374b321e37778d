"""Finding a driver class for a URL, through entry points, the same way for built-ins and plugins.

Brokers register in the ``taskd.brokers`` group and result backends in ``taskd.backends``, each
under the URL scheme it serves (``redis``, ``sqlite``...).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from importlib.metadata import entry_points
from typing import Any
from urllib.parse import urlsplit

from taskd.errors import ConfigError, DriverError

BROKERS_GROUP = "taskd.brokers"
BACKENDS_GROUP = "taskd.backends"
# A connection unused this long is checked for a close by its server before it is used again
# (a server's or proxy's idle limit, a restart while it sat idle): then it is replaced before
# anything is written on it, not found closed after a write. Below the shortest idle timeout a
# server can have (Redis's ``timeout 1`` closes a client idle more than 1 s); no cost to a
# connection in steady use.
IDLE_CHECK_S = 0.5


class Unsent(Exception):
    """Nothing of the operation took effect: no connection to the server could be made, or
    the server refused all of it before running any (a replica where the master was):
    raised from the client library's error inside a driver, and translated (``translated``)
    into the driver's Unavailable error with ``unsent``."""


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
            key, f"the {scheme} driver cannot load: {exc} (reinstall taskd?)", source
        ) from None


def translated(
    transient: type[Exception] | tuple[type[Exception], ...],
    permanent: type[Exception] | tuple[type[Exception], ...],
    unavailable: type[DriverError],
    failed: type[DriverError],
    driver: str,
    *,
    passing: Callable[[BaseException], bool] | None = None,
    **context: Any,
) -> AbstractContextManager[None]:
    """A client library's errors as taskd's, at a driver's boundary: ``transient`` ones
    (connection trouble, a busy file), and those ``passing`` says will pass (where the
    library has no class for them), as ``unavailable``, to be retried; other ``permanent``
    ones as ``failed``."""
    return _Translated(transient, permanent, unavailable, failed, driver, passing, context)


class _Translated:
    """``translated``'s context manager: a class, as a generator-based one costs several
    times as much, and the hot path enters one for each call to a server."""

    __slots__ = (
        "_context",
        "_driver",
        "_failed",
        "_passing",
        "_permanent",
        "_transient",
        "_unavailable",
    )

    def __init__(
        self,
        transient: type[Exception] | tuple[type[Exception], ...],
        permanent: type[Exception] | tuple[type[Exception], ...],
        unavailable: type[DriverError],
        failed: type[DriverError],
        driver: str,
        passing: Callable[[BaseException], bool] | None,
        context: dict[str, Any],
    ) -> None:
        self._transient, self._permanent, self._passing = transient, permanent, passing
        self._unavailable, self._failed = unavailable, failed
        self._driver, self._context = driver, context

    def __enter__(self) -> None:
        return None

    def __exit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if exc is None:
            return
        unsent = isinstance(exc, Unsent)
        if unsent:  # the library's error, raised where nothing took effect
            exc = exc.__cause__ or exc
        transient = isinstance(exc, self._transient)
        if unsent or transient or (self._passing is not None and self._passing(exc)):
            raise self._unavailable(
                self._driver, f"{type(exc).__name__}: {exc}", unsent=unsent, **self._context
            ) from exc
        if isinstance(exc, self._permanent):
            raise self._failed(
                self._driver, f"{type(exc).__name__}: {exc}", **self._context
            ) from exc
