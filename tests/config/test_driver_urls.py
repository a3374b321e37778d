"""A bad broker or backend URL stops ``taskd check-config`` (exit 2) naming its key, for
every driver that takes one, without printing a password or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import BIN, process_env, run_cli, write_config


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


def test_a_database_the_user_may_not_write_is_a_config_error(tmp_path: Path) -> None:
    """A database created by one user (root, by a first ``taskctl send`` or ``make run``)
    and served by another (the service's own): check-config passed, taskctl send exited 69
    as for an outage, and the daemon waited for good with no child ready. Now all three
    stop at once (exit 2), naming the key, the file and the user."""
    import os
    import shutil
    import sqlite3
    import subprocess
    import tempfile

    from taskd.sqlitedb import connect

    # A directory the other user can reach (pytest's own is its creator's alone).
    place = Path(tempfile.mkdtemp(prefix="taskd-t-"))
    try:
        place.chmod(0o755)
        url = f"sqlite://{place}/q.db"
        config = write_config(place, {"broker": url, "result_backend": url})
        config.chmod(0o644)
        connect(place / "q.db", "FULL", "CREATE TABLE IF NOT EXISTS t (x)").close()
        if os.geteuid() == 0:  # root writes anything: run as nobody instead
            setpriv = shutil.which("setpriv")
            assert setpriv, "setpriv (util-linux) runs the commands as another user"
            as_other = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        else:
            (place / "q.db").chmod(0o444)
            place.chmod(0o555)
            as_other = []
        for command in (["taskd", "check-config", "-c"], ["taskctl", "send", "noop", "-c"]):
            done = subprocess.run(
                [*as_other, str(BIN / command[0]), *command[1:], str(config)],
                capture_output=True,
                text=True,
                env=process_env(place),  # its state directory there too
                timeout=60,
                check=False,
            )
            assert done.returncode == 2, done.stderr
            assert f"{config}: broker: sqlite: cannot open {place}/q.db" in done.stderr
            assert "must be writable by the user taskd runs as" in done.stderr
        assert sqlite3.connect(place / "q.db").execute("SELECT 1").fetchone() == (1,)
    finally:
        place.chmod(0o755)
        shutil.rmtree(place)
