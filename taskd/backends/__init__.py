"""Result backends: where task states live. ``open_backend`` picks the driver by URL scheme."""

from __future__ import annotations

from taskd.backends.base import ResultBackend
from taskd.config import Config
from taskd.drivers import BACKENDS_GROUP, driver_class


def open_backend(config: Config) -> ResultBackend:
    """The configured result backend (connecting lazily); ConfigError for an unusable URL."""
    cls = driver_class(BACKENDS_GROUP, config.result_backend, "result_backend", config.source)
    backend: ResultBackend = cls.from_config(config.result_backend, config)
    return backend


__all__ = ["ResultBackend", "open_backend"]
