"""Fixtures of the taskctl tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import TEST_TASKS, config_data, write_config


@pytest.fixture
def served(driver_kind: str, tmp_path: Path, namespace: str, daemon: Callable[..., Any]) -> Path:
    """A config file and a daemon with two children serving it, on each driver pair."""
    data = config_data(driver_kind, namespace, tmp_path, imports=[TEST_TASKS])
    config = write_config(tmp_path, data)
    daemon(config, "--concurrency", "2").wait_ready(2)
    return config
