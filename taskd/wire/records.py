"""Records made from every one of their fields at once, without the cost of their ``__init__``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, TypeVar

Record = TypeVar("Record")


def builder(cls: type[Record]) -> Callable[..., Record]:
    """A function that makes a ``cls`` (a frozen dataclass with slots) from every one of its
    fields, in order: for decoders and sends, which make one for each message (each call
    site has a test that fails if it gives the fields out of order). A frozen dataclass's
    own ``__init__`` stores each field through ``object.__setattr__``, half the cost of
    reading a message's fields; this stores through the slots themselves, as a copy would."""
    setters = tuple(getattr(cls, field.name).__set__ for field in fields(cls))
    new = object.__new__

    def build(*values: Any) -> Record:
        record = new(cls)
        for store, value in zip(setters, values, strict=True):
            store(record, value)
        return record

    return build
