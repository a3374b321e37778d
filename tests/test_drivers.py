"""``drivers.translated``: a client library's errors as taskd's, at a driver's boundary."""

from __future__ import annotations

import pytest

from taskd.drivers import translated
from taskd.errors import BrokerError, BrokerUnavailable


class Busy(Exception):
    pass


class LibraryError(Exception):
    pass


class Busier(Busy):
    pass


def boundary() -> object:
    return translated(Busy, LibraryError, BrokerUnavailable, BrokerError, "lib", queue="q")


def test_transient_errors_become_unavailable_with_their_context_and_cause() -> None:
    with pytest.raises(BrokerUnavailable) as caught, boundary():
        raise Busier("try later")
    assert str(caught.value) == "lib: queue 'q': Busier: try later"
    assert caught.value.queue == "q"
    assert isinstance(caught.value.__cause__, Busier)


def test_other_library_errors_become_the_drivers_failure() -> None:
    with pytest.raises(BrokerError) as caught, boundary():
        raise LibraryError("no such thing")
    assert not isinstance(caught.value, BrokerUnavailable)
    assert str(caught.value) == "lib: queue 'q': LibraryError: no such thing"
    assert caught.value.queue == "q"


def test_anything_else_passes_untouched_and_a_quiet_block_raises_nothing() -> None:
    with pytest.raises(KeyError), boundary():
        raise KeyError("ours")
    with boundary():
        pass
