"""The broker contract runs against every broker driver: add a kind here (and its config in
``harness.config_data``) and the whole suite runs against it."""

from __future__ import annotations

import pytest

from tests.conftest import kind_with_server


@pytest.fixture(params=["sqlite", "redis", "amqp", "amqp_quorum", "sqs"])
def driver_kind(request: pytest.FixtureRequest) -> str:
    return kind_with_server(request)
