"""The Go programs, built once per test run (``goprograms``)."""

from __future__ import annotations

import pytest

from tests.interop.goprograms import AMQP_LIBRARY, DEBIAN_GOPATH, GoProgram, build_go


@pytest.fixture(scope="session")
def go_machinery(tmp_path_factory: pytest.TempPathFactory) -> GoProgram:
    """``go_machinery("send", ...)``: machinery's Redis side, standard library only."""
    folder = tmp_path_factory.mktemp("go_redis")
    return build_go(folder, "redis", folder / "path")


@pytest.fixture(scope="session")
def go_machinery_amqp(tmp_path_factory: pytest.TempPathFactory) -> GoProgram:
    """``go_machinery_amqp("send", ...)``: machinery's AMQP side, on Debian's amqp091-go."""
    if not AMQP_LIBRARY.is_dir():
        pytest.skip(f"{AMQP_LIBRARY} is missing (.ci/run installs it)")
    return build_go(tmp_path_factory.mktemp("go_amqp"), "amqp", DEBIAN_GOPATH)
