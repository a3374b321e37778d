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
        ("result_backend", "memcache://127.0.0.1?ssl_ca_certs=/etc/passwd", "need memcaches://"),
        ("result_backend", "memcaches://127.0.0.1?ssl_ca_certs=/no/ca.pem", "cannot be read"),
        ("result_backend", "memcaches://127.0.0.1:11211?timeout=5", "unknown option timeout"),
        ("broker", "sqs://127.0.0.1:99999/123456789012", "port is not a number"),
        ("broker", "sqs://127.0.0.1:9324", "account id"),
        ("broker", "sqs://key:hunter2@127.0.0.1:9324/1", "credentials do not go in the URL"),
        ("broker", "https://example.com/123456789012", "SQS queue URL"),
        # TLS options (taskd.tls), and the rest of a Redis or AMQP URL's query
        ("broker", "redis://:hunter2@127.0.0.1/0?ssl_ca_certs=/etc/passwd", "need rediss://"),
        ("broker", "rediss://:hunter2@127.0.0.1/0?ssl_ca_certs=/no/ca.pem", "cannot be read"),
        ("result_backend", "rediss://127.0.0.1/0?ssl_cert_reqs=sometimes", "must be one of"),
        ("broker", "redis://:hunter2@127.0.0.1/0?db=3", "unknown option db"),
        ("broker", "amqp://u:hunter2@127.0.0.1/?ssl_cert_reqs=none", "need amqps://"),
        ("broker", "amqps://u:hunter2@127.0.0.1/?ssl_check_hostname=maybe", "true or false"),
        ("result_backend", "amqps://127.0.0.1/?ssl_keyfile=/etc/passwd", "needs ssl_certfile"),
        ("broker", "amqp://u:hunter2@127.0.0.1/?heartbeat=5", "heartbeat: set by taskd"),
        ("broker", "amqp://u:hunter2@127.0.0.1/?bogus=1", "Unknown URL parameter"),
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
