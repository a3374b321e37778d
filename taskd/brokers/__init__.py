"""Brokers: where task messages wait. ``open_broker`` picks the driver from the URL scheme."""

from __future__ import annotations

from taskd.brokers.base import Broker, DeadLetter, Delivery, Message
from taskd.config import Config
from taskd.drivers import BROKERS_GROUP, driver_class


def open_broker(config: Config) -> Broker:
    """The configured broker driver (connecting lazily); ConfigError for an unusable URL."""
    cls = driver_class(BROKERS_GROUP, config.broker, "broker", config.source)
    broker: Broker = cls.from_config(config.broker, config)
    return broker


__all__ = ["Broker", "DeadLetter", "Delivery", "Message", "open_broker"]
