"""Shared fixtures: namespaces, real servers on loopback, real taskd processes.

Every test works in its own namespace (``taskd-t-`` + 8 hex digits): queue names, Redis key
prefixes and SQLite files (in ``tmp_path``). Teardown deletes exactly that namespace. Task
state keys follow machinery's layout (``task_<uuid>``, no prefix); tests write them with a
short ``results_expire_in`` so whatever a test leaves behind expires on its own.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import (
    AMQP_URL,
    REDIS_URL,
    Daemon,
    PrivateRedis,
    config_data,
    delete_amqp_namespace,
    delete_amqp_records,
    delete_namespace,
    delete_sqs_namespace,
    process_env,
    server_on_free_port,
    write_config,
)


@pytest.fixture
def namespace() -> str:
    return f"taskd-t-{secrets.token_hex(4)}"


@pytest.fixture(scope="session")
def redis_server() -> Any:
    """A client of the real Redis on loopback; the run fails if it is not there."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis must run on {REDIS_URL} for the tests (.ci/run starts it): {exc}")
    yield client
    client.close()


@pytest.fixture
def redis_namespace(redis_server: Any, namespace: str) -> Iterator[str]:
    yield namespace
    delete_namespace(redis_server, namespace)


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[list[str]]:
    """The real RabbitMQ on loopback; the run fails if it is not there. Yields the list of
    namespaces this session's tests used, whose records are deleted at its end."""
    import pika

    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except pika.exceptions.AMQPError as exc:
        pytest.fail(f"RabbitMQ must run on {AMQP_URL} for the tests (.ci/run starts it): {exc}")
    used: list[str] = []
    yield used
    delete_amqp_records(used)


@pytest.fixture(scope="session")
def memcached(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A memcached of the test run's own on a free loopback port (Debian's ``memcached``,
    which .ci/run installs); the run fails if it cannot start."""
    import shutil

    from tests.support import harness

    binary = shutil.which("memcached")
    if binary is None:
        pytest.fail("memcached must be installed for the tests (.ci/run installs it)")
    command = [binary, "-l", "127.0.0.1", "-U", "0", "-m", "64", "-u", "root", "-p"]
    with server_on_free_port(lambda port: [*command, str(port)], "memcached", 10) as port:
        harness.MEMCACHE_URL = f"memcache://127.0.0.1:{port}"
        yield harness.MEMCACHE_URL


@pytest.fixture(scope="session")
def sqs_server() -> Iterator[str]:
    """moto's SQS server on a free loopback port, for the whole run, its receives made atomic
    (``tests/support/sqs_server.py``); the URL of its account.
    The AWS credentials are dummies (moto accepts any), set for the daemons under test too."""
    import os
    import sys

    from tests.support import harness

    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing")
    os.environ.pop("AWS_PROFILE", None)
    moto = [sys.executable, "-m", "tests.support.sqs_server", "-H", "127.0.0.1", "-p"]
    with server_on_free_port(
        lambda port: [*moto, str(port)], "the moto SQS server", cwd=harness.REPO
    ) as port:
        harness.SQS_URL = f"sqs://127.0.0.1:{port}/{harness.SQS_ACCOUNT}"
        yield harness.SQS_URL


@pytest.fixture
def raw(sqs_server: str) -> Iterator[Any]:
    """A plain boto3 client of the moto server: what a Go producer or consumer sees."""
    from taskd.brokers.sqs.queues import endpoint_of, new_client
    from taskd.config import Config

    client = new_client(endpoint_of(sqs_server, Config()), 10.0)
    yield client
    client.close()


@pytest.fixture
def sqs_namespace(sqs_server: str, namespace: str, request: pytest.FixtureRequest) -> Iterator[str]:
    yield namespace
    stop_daemons(request)
    delete_sqs_namespace(sqs_server, namespace)


@pytest.fixture(scope="session")
def mongodb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A pymongo client of the test run's MongoDB, whose URL goes in ``harness.MONGODB_URL``:
    a real mongod at $TASKD_TEST_MONGODB_URL if set, else the wire server of
    ``tests/support/mongo_server.py`` (mockupdb + mongomock) on a free loopback port."""
    import os
    import sys

    import pymongo

    from tests.support import harness

    url = os.environ.get("TASKD_TEST_MONGODB_URL", "")
    with contextlib.ExitStack() as stack:
        if not url:
            log = tmp_path_factory.mktemp("mongodb") / "server.log"
            server = [sys.executable, "-m", "tests.support.mongo_server", "--port"]
            port = stack.enter_context(
                server_on_free_port(
                    lambda port: [*server, str(port)],
                    f"the MongoDB test server (its log: {log})",
                    cwd=harness.REPO,
                    stderr=stack.enter_context(log.open("wb")),
                )
            )
            url = f"mongodb://127.0.0.1:{port}"
        client: Any = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
        stack.callback(client.close)
        try:
            client.admin.command("ping")
        except pymongo.errors.PyMongoError as exc:
            pytest.fail(f"MongoDB does not answer at {url}: {exc}")
        harness.MONGODB_URL = url
        yield client


@pytest.fixture
def mongodb_namespace(mongodb: Any, namespace: str) -> Iterator[str]:
    """This test's own database (named after its namespace), dropped afterwards."""
    yield namespace
    mongodb.drop_database(namespace)


@pytest.fixture
def amqp_namespace(
    rabbitmq: list[str], namespace: str, request: pytest.FixtureRequest
) -> Iterator[str]:
    rabbitmq.append(namespace)
    yield namespace
    stop_daemons(request)
    delete_amqp_namespace(namespace)


# The test's daemons (``daemon``), for the namespace fixtures to stop before they delete.
DAEMONS = pytest.StashKey[list[Daemon]]()


def stop_daemons(request: pytest.FixtureRequest) -> None:
    """Stop the test's daemons, whatever order its fixtures were set up in: one still
    running declares (RabbitMQ) or creates (SQS) its queue again once it is deleted, as it
    does in production, and would leave it behind."""
    for process in request.node.stash.get(DAEMONS, []):
        process.kill()


def kind_with_server(request: pytest.FixtureRequest) -> str:
    """A driver kind, with its server's namespace cleaned up after the test."""
    if request.param == "redis":
        request.getfixturevalue("redis_namespace")
    elif request.param in ("amqp", "amqp_quorum"):
        request.getfixturevalue("amqp_namespace")
    elif request.param == "memcache":
        request.getfixturevalue("memcached")
    elif request.param == "mongodb":
        request.getfixturevalue("mongodb_namespace")
    elif request.param in ("sqs", "sqs_fifo"):
        request.getfixturevalue("sqs_namespace")
    return str(request.param)


@pytest.fixture(params=["sqlite", "redis"])
def driver_kind(request: pytest.FixtureRequest) -> str:
    """Runs a test once per broker/backend pair."""
    return kind_with_server(request)


@pytest.fixture
def make_config(namespace: str, tmp_path: Path) -> Callable[..., Any]:
    """``make_config(kind, **overrides)`` -> a loaded Config for this test's namespace."""
    from taskd.config import load_config

    def make(kind: str, **overrides: Any) -> Any:
        path = write_config(tmp_path, config_data(kind, namespace, tmp_path, **overrides))
        return load_config(path, env={"TASKD_STATE_DIR": str(tmp_path / "state")})

    return make


@pytest.fixture
def driver_opener(make_config: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """``driver_opener(open_broker, kind, **overrides)``: a driver of that kind for this test's
    namespace, closed at teardown."""
    opened: list[Any] = []

    def open_one(opener: Callable[[Any], Any], kind: str, **overrides: Any) -> Any:
        driver = opener(make_config(kind, **overrides))
        opened.append(driver)
        return driver

    yield open_one
    for driver in opened:
        driver.close()


@pytest.fixture
def drivers(driver_kind: str, driver_opener: Callable[..., Any]) -> Callable[..., Any]:
    """``drivers(open_broker, **overrides)``: a driver of this test's kind, closed at teardown."""
    return lambda opener, **overrides: driver_opener(opener, driver_kind, **overrides)


@pytest.fixture
def daemon(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Daemon]]:
    """``daemon(config_path, "--concurrency", "2")`` starts taskd; teardown kills its group."""
    started = request.node.stash.setdefault(DAEMONS, [])

    def start(config: Path | None, *args: str, wrapper: Sequence[str] = (), **env: str) -> Daemon:
        process = Daemon(config, tmp_path, list(args), process_env(tmp_path, **env), wrapper)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A redis-server of this test's own, which the test may stop and start again."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = PrivateRedis(directory)
    server.start()
    yield server
    server.stop()
