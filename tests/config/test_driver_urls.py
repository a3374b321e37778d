"""A bad broker or backend URL stops ``taskd check-config`` (exit 2) naming its key, for
every driver that takes one, without printing a password or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import run_cli, write_config


@pytest.mark.parametrize(
    ("key", "url", "reason"),
    [
        ("result_backend", "mongodb://", "Must provide at least one hostname"),
        ("result_backend", "mongodb://127.0.0.1:99999", "Port must be an integer"),
        ("result_backend", "mongodb+srv://user:hunter2@a.example:27017", "one host name"),
        ("result_backend", "memcache://127.0.0.1:notaport", "is not host:port"),
        ("result_backend", "memcache://", "names no server"),
        ("broker", "sqs://127.0.0.1:99999/123456789012", "port is not a number"),
        ("broker", "sqs://127.0.0.1:9324", "account id"),
        ("broker", "sqs://key:hunter2@127.0.0.1:9324/1", "credentials do not go in the URL"),
        ("broker", "https://example.com/123456789012", "SQS queue URL"),
    ],
)
def test_check_config_names_the_key_of_a_bad_url(
    tmp_path: Path, key: str, url: str, reason: str
) -> None:
    config = write_config(tmp_path, {key: url})
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert f"{config}: {key}: " in done.stderr
    assert reason in done.stderr
    assert "hunter2" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr
