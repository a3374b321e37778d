"""TLS end to end: ``rediss://`` and ``memcaches://`` against a redis-server and a memcached of
the test's own serving TLS, and ``amqps://`` against the real RabbitMQ behind a TLS proxy, with
a CA of the run's own passed in the URL's query (``taskd.tls``); and the options' mistakes,
named before anything connects."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from taskd.client import Client
from taskd.config import load_config
from taskd.errors import BackendUnavailable, BrokerUnavailable, ConfigError
from taskd.tls import TLSOptions, split_query
from tests.support.harness import (
    RABBITMQ,
    TEST_TASKS,
    config_data,
    server_on_free_port,
    taskctl,
    write_config,
)
from tests.support.tls import TLSFiles, make_tls_files, tls_proxy


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_redis(tls_files: TLSFiles) -> Iterator[Callable[[bool], int]]:
    """``tls_redis(client_certificates)``: the port of a redis-server serving TLS alone on
    127.0.0.1 and 127.0.0.2, asking clients for a certificate of the CA or not."""
    with contextlib.ExitStack() as servers:

        def start(client_certificates: bool) -> int:
            def command(port: int) -> list[str]:
                return [
                    "redis-server", "--bind", "127.0.0.1", "127.0.0.2", "--port", "0",
                    "--tls-port", str(port), "--tls-cert-file", str(tls_files.server_cert),
                    "--tls-key-file", str(tls_files.server_key),
                    "--tls-ca-cert-file", str(tls_files.ca),
                    "--tls-auth-clients", "yes" if client_certificates else "no",
                    "--save", "", "--appendonly", "no",
                ]  # fmt: skip

            return servers.enter_context(server_on_free_port(command, "redis-server with TLS"))

        yield start


@pytest.fixture
def tls_memcached(tls_files: TLSFiles) -> Iterator[Callable[[bool], int]]:
    """``tls_memcached(client_certificates)``: the port of a memcached serving TLS alone on
    127.0.0.1, asking clients for a certificate of the CA or not."""
    with contextlib.ExitStack() as servers:

        def start(client_certificates: bool) -> int:
            options = f"ssl_chain_cert={tls_files.server_cert},ssl_key={tls_files.server_key}"
            if client_certificates:
                options += f",ssl_ca_cert={tls_files.ca},ssl_verify_mode=2"

            def command(port: int) -> list[str]:
                return [
                    "memcached", "-Z", "-o", options, "-l", "127.0.0.1", "-p", str(port),
                    "-U", "0", "-m", "16", "-u", "root",
                ]  # fmt: skip

            return servers.enter_context(server_on_free_port(command, "memcached with TLS"))

        yield start


def run_sums(config: Path, tmp_path: Path, daemon: Callable[..., Any]) -> None:
    """taskd started on ``config`` runs sums sent by a Client; taskctl reads one back."""
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    with Client(load_config(config, env={"TASKD_STATE_DIR": str(tmp_path / "state")})) as client:
        sent = [client.send("sum", list(range(n))) for n in range(1, 11)]
        assert [result.get(timeout=30) for result in sent] == [sum(range(n)) for n in range(1, 11)]
    read = taskctl(tmp_path, config, "result", sent[3].task_id)
    assert (read.returncode, read.stdout) == (0, "6\n"), read.stderr


@pytest.mark.parametrize("client_certificates", [False, True], ids=["server-cert", "mutual"])
def test_tasks_run_over_rediss(
    client_certificates: bool,
    tls_redis: Callable[[bool], int],
    tls_files: TLSFiles,
    namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Any],
) -> None:
    port = tls_redis(client_certificates)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tls_files.ca}"
    if client_certificates:
        url += f"&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key}"
    data = config_data("redis", namespace, tmp_path, imports=[TEST_TASKS])
    data.update(broker=url, result_backend=url)
    run_sums(write_config(tmp_path, data), tmp_path, daemon)


@pytest.mark.parametrize(
    ("client_certificates", "host", "query", "refusal"),
    [
        (False, "127.0.0.1", "", "certificate verify failed"),  # a CA the system does not know
        (False, "127.0.0.2", "?ssl_ca_certs={ca}", "mismatch"),  # a name the certificate lacks
        (False, "127.0.0.2", "?ssl_ca_certs={ca}&ssl_check_hostname=false", ""),
        # The server wants a client certificate: refused at the handshake's end or just after.
        (True, "127.0.0.1", "?ssl_ca_certs={ca}", "certificate required|EOF occurred"),
        (False, "127.0.0.2", "?ssl_cert_reqs=none", ""),  # nothing checked, still encrypted
    ],
    ids=["unknown-ca", "other-name", "no-hostname-check", "no-client-cert", "no-verification"],
)
def test_a_rediss_client_trusts_what_its_url_says(
    client_certificates: bool,
    host: str,
    query: str,
    refusal: str,
    tls_redis: Callable[[bool], int],
    tls_files: TLSFiles,
    namespace: str,
    tmp_path: Path,
) -> None:
    url = f"rediss://{host}:{tls_redis(client_certificates)}/0" + query.format(ca=tls_files.ca)
    data = config_data("redis", namespace, tmp_path, broker=url, result_backend=url)
    client = Client(load_config(write_config(tmp_path, data)), pipeline=0)
    try:
        if refusal:
            with pytest.raises(BrokerUnavailable, match=refusal):
                client.send("sum", [1, 2])
        else:
            sent = client.send("sum", [1, 2])
            assert client.backend.get_states([sent.task_id])[0] is not None  # PENDING, over TLS
    finally:
        client.close()


@pytest.mark.parametrize("client_certificates", [False, True], ids=["server-cert", "mutual"])
def test_results_kept_in_memcached_over_tls(
    client_certificates: bool,
    tls_memcached: Callable[[bool], int],
    tls_files: TLSFiles,
    namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Any],
) -> None:
    url = f"memcaches://127.0.0.1:{tls_memcached(client_certificates)}?ssl_ca_certs={tls_files.ca}"
    if client_certificates:
        url += f"&ssl_certfile={tls_files.client_cert}&ssl_keyfile={tls_files.client_key}"
    data = config_data("sqlite", namespace, tmp_path, imports=[TEST_TASKS], result_backend=url)
    run_sums(write_config(tmp_path, data), tmp_path, daemon)


@pytest.mark.parametrize(
    ("client_certificates", "query", "refusal"),
    [
        (False, "", "certificate verify failed"),  # a CA the system does not know
        (True, "?ssl_ca_certs={ca}", "certificate required|EOF occurred|reset by peer"),
    ],
    ids=["unknown-ca", "no-client-cert"],
)
def test_a_memcaches_client_trusts_what_its_url_says(
    client_certificates: bool,
    query: str,
    refusal: str,
    tls_memcached: Callable[[bool], int],
    tls_files: TLSFiles,
    namespace: str,
    tmp_path: Path,
) -> None:
    url = f"memcaches://127.0.0.1:{tls_memcached(client_certificates)}"
    url += query.format(ca=tls_files.ca)
    data = config_data("sqlite", namespace, tmp_path, result_backend=url)
    client = Client(load_config(write_config(tmp_path, data)))
    with client, pytest.raises(BackendUnavailable, match=refusal):
        client.backend.get_states(["task_1"])


def test_tasks_run_over_amqps(
    tls_files: TLSFiles,
    amqp_namespace: str,
    tmp_path: Path,
    daemon: Callable[..., Any],
) -> None:
    """Broker and result backend both over TLS, to the real RabbitMQ behind the proxy."""
    with tls_proxy(tls_files, RABBITMQ[1]) as port:
        url = f"amqps://guest:guest@localhost:{port}/?ssl_ca_certs={tls_files.ca}"
        data = config_data("amqp", amqp_namespace, tmp_path, imports=[TEST_TASKS])
        data.update(broker=url, result_backend=url)
        run_sums(write_config(tmp_path, data), tmp_path, daemon)


def test_an_amqps_client_without_the_ca_is_refused(
    tls_files: TLSFiles, amqp_namespace: str, tmp_path: Path
) -> None:
    with tls_proxy(tls_files, RABBITMQ[1]) as port:
        url = f"amqps://guest:guest@127.0.0.1:{port}/"
        data = config_data("amqp", amqp_namespace, tmp_path, broker=url)  # results without TLS
        client = Client(load_config(write_config(tmp_path, data)), pipeline=0)
        with client, pytest.raises(BrokerUnavailable, match="certificate verify failed"):
            client.send("sum", [1, 2])


def test_options_of_the_query() -> None:
    tls, rest = split_query(
        "rediss://h", "ssl_cert_reqs=optional&ssl_check_hostname=No&x=1", True, "broker", None
    )
    assert tls == TLSOptions(ssl_cert_reqs="optional", ssl_check_hostname=False)
    assert rest == "x=1"  # for the driver: Redis refuses it, pika takes its own
    assert split_query("redis://h", "x=1&y=", False, "broker", None) == (None, "x=1&y=")
    none = TLSOptions(ssl_cert_reqs="none")
    assert not none.checks_hostname and not none.context().check_hostname
    assert none.redis_kwargs()["ssl_check_hostname"] is False
    with pytest.raises(ConfigError, match="ssl_ca_path '/etc/passwd' is not a directory"):
        split_query("amqps://h", "ssl_ca_path=/etc/passwd", True, "broker", None)
