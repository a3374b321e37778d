"""What only the SQS broker does, on the test run's moto server: its URLs, delays past one
hop, FIFO queues, redrive policies, machinery's plain bodies, an unreachable endpoint."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.brokers import Broker, Message, open_broker
from taskd.brokers.sqs.bodies import BATCH_BYTES, payload_bytes, send_batches
from taskd.brokers.sqs.queues import endpoint_of
from taskd.config import Config, SQSConfig
from taskd.errors import BrokerError, BrokerUnavailable, ConfigError
from taskd.wire import GoTime
from tests.support.harness import (
    BIN,
    REPO,
    SQS_ACCOUNT,
    config_data,
    create_queue_with_redrive,
    process_env,
    server_on_free_port,
    wait_until,
    write_config,
)


@pytest.fixture
def open_sqs(sqs_namespace: str, driver_opener: Callable[..., Any]) -> Callable[..., Broker]:
    return lambda kind="sqs", **overrides: driver_opener(open_broker, kind, **overrides)


def take(broker: Broker, queue: str, timeout_s: float = 10) -> Any:
    (delivery,) = wait_until(lambda: broker.fetch(queue, max_messages=1, wait_s=0.2), timeout_s)
    return delivery


# -- URLs -------------------------------------------------------------------------------------


def test_machinery_urls_and_custom_endpoints() -> None:
    aws = endpoint_of("https://sqs.eu-west-1.amazonaws.com/123456789012", Config())
    assert aws.base == "https://sqs.eu-west-1.amazonaws.com/123456789012"
    assert (aws.region, aws.endpoint_url) == ("eu-west-1", None)
    local = endpoint_of("sqs://127.0.0.1:9324/000000000000", Config())
    assert local.base == "http://127.0.0.1:9324/000000000000"
    assert local.endpoint_url == "http://127.0.0.1:9324"
    tls = endpoint_of("sqs+https://sqs.internal:8443/42", Config(sqs=SQSConfig(region="x-1")))
    assert (tls.endpoint_url, tls.region) == ("https://sqs.internal:8443", "x-1")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://example.com/123", "SQS queue URL"),
        ("sqs://127.0.0.1:9324", "account id"),
        ("sqs://127.0.0.1:99999/1", "port"),
        ("sqs:///1", "no host"),
        ("sqs://key:secret@127.0.0.1:9324/1", "credentials do not go in the URL"),
    ],
)
def test_a_bad_url_is_a_config_error_naming_the_key(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why) as caught:
        endpoint_of(url, Config())
    assert caught.value.key == "broker"
    assert "secret" not in str(caught.value)


def test_an_unreachable_endpoint_is_an_outage_not_a_crash(
    make_config: Callable[..., Any],
    sqs_server: str,  # (for its dummy credentials)
) -> None:
    broker = open_broker(make_config("sqs", broker="sqs://127.0.0.1:1/123456789012"))
    try:
        with pytest.raises(BrokerUnavailable):
            broker.publish("q", b"{}")
        with pytest.raises(BrokerUnavailable):
            broker.fetch("q", max_messages=1, wait_s=5)
    finally:
        broker.close()


@pytest.mark.parametrize("credentials", ["unknown", "none"])
def test_credentials_sqs_refuses_are_a_config_error_naming_the_broker(
    credentials: str, sqs_namespace: str, tmp_path: Path
) -> None:
    """No AWS credentials, or ones SQS does not know, passed check-config; the daemon then
    started, never got ready, and its children logged fetch_failed for good. moto checks
    credentials here as AWS does (INITIAL_NO_AUTH_ACTION_COUNT=0)."""
    import os
    import sys

    moto = [sys.executable, "-m", "tests.support.sqs_server", "-H", "127.0.0.1", "-p"]
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    with server_on_free_port(
        lambda port: [*moto, str(port)], "moto checking credentials", cwd=REPO, env=env
    ) as port:
        url = f"sqs://127.0.0.1:{port}/{SQS_ACCOUNT}"
        data = config_data("sqs", sqs_namespace, tmp_path, broker=url)
        config = str(write_config(tmp_path, data))
        if credentials == "unknown":
            aws = {"AWS_ACCESS_KEY_ID": "AKIAUNKNOWN", "AWS_SECRET_ACCESS_KEY": "not-known"}
        else:  # nowhere in boto3's chain
            aws = {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "HOME": str(tmp_path),
                   "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                   "AWS_CONFIG_FILE": str(tmp_path / "none"),
                   "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
        for args in (("check-config",), ("start", "--concurrency", "1")):
            done = subprocess.run(
                [str(BIN / "taskd"), *args, "-c", config],
                capture_output=True, text=True, timeout=60, check=False,
                env=process_env(tmp_path, **aws),
            )  # fmt: skip
            assert done.returncode == 2, (args, done.stderr)
            queue_url = f"http://127.0.0.1:{port}/{SQS_ACCOUNT}/{sqs_namespace}"
            assert f"{config}: broker: SQS refused to read the queue {queue_url}:" in done.stderr
            assert "Check the AWS credentials" in done.stderr
            assert "not-known" not in done.stderr


def test_a_missing_queue_is_created_or_named(
    open_sqs: Callable[..., Broker], namespace: str
) -> None:
    strict = open_sqs(sqs={"create_queues": False})
    with pytest.raises(BrokerError, match=f"no such queue: .*/{namespace}"):
        strict.publish(namespace, b"{}")
    open_sqs().publish(namespace, b"{}")  # creates it
    strict.publish(namespace, b"{}")
    assert wait_until(lambda: strict.size(namespace) == 2, 5)


def test_a_queue_deleted_while_in_use_is_created_again(
    open_sqs: Callable[..., Broker], namespace: str, raw: Any
) -> None:
    """A queue deleted after the broker read its URL (an operator's delete) failed every
    later send and receive with NonExistentQueue, for as long as the process lived. Such a
    call is an outage in which nothing was sent (a client's send rides it out), and the next
    call reads, here creates, the queue again."""
    broker = open_sqs()
    broker.publish(namespace, b'{"n":1}')
    broker.ack(take(broker, namespace))
    raw.delete_queue(QueueUrl=raw.get_queue_url(QueueName=namespace)["QueueUrl"])
    with pytest.raises(BrokerUnavailable, match="NonExistentQueue") as caught:
        broker.publish(namespace, b'{"n":2}')
    assert caught.value.unsent
    broker.publish(namespace, b'{"n":2}')
    assert take(broker, namespace).body == b'{"n":2}'
    raw.delete_queue(QueueUrl=raw.get_queue_url(QueueName=namespace)["QueueUrl"])
    with pytest.raises(BrokerUnavailable, match="NonExistentQueue"):
        broker.fetch(namespace, max_messages=1, wait_s=2)
    broker.publish(namespace, b'{"n":3}')
    assert take(broker, namespace).body == b'{"n":3}'


def test_large_messages_are_sent_in_batches_sqs_takes(
    open_sqs: Callable[..., Broker], namespace: str
) -> None:
    """Ten messages of 120 kB each are well within SQS's limit one by one, but not in one
    SendMessageBatch (moto refuses a batch past 1 MiB, as AWS does)."""
    broker = open_sqs()
    bodies = [json.dumps({"UUID": f"task_{i}", "Pad": "x" * 120_000}).encode() for i in range(10)]
    broker.publish_many([Message(namespace, body) for body in bodies])
    got: list[bytes] = []

    def all_taken() -> bool:
        for delivery in broker.fetch(namespace, max_messages=10, wait_s=0.2):
            got.append(delivery.body)
            broker.ack(delivery)
        return len(got) == len(bodies)

    wait_until(all_taken, 20, what="the 10 large messages")
    assert sorted(got) == sorted(bodies)


def test_send_batches_keep_within_sqs_limits() -> None:
    def entry(size: int, attribute: str = "") -> dict[str, Any]:
        made: dict[str, Any] = {"MessageBody": "x" * size}
        if attribute:
            made["MessageAttributes"] = {attribute: {"DataType": "String", "StringValue": "1"}}
        return made

    sizes = [[len(e["MessageBody"]) for e in batch] for batch in send_batches(
        [entry(100_000), entry(100_000), entry(100_000), entry(300_000), entry(10)]
    )]  # fmt: skip
    assert sizes == [[100_000, 100_000], [100_000], [300_000], [10]]  # a large one goes alone
    assert [len(b) for b in send_batches([entry(10)] * 25)] == [10, 10, 5]
    # an attribute counts its name, type and value: 9 + 6 + 1 bytes
    assert payload_bytes(entry(100, "taskd-eta")) == 116
    assert len(list(send_batches([entry(BATCH_BYTES - 116), entry(100, "taskd-eta")]))) == 1
    assert len(list(send_batches([entry(BATCH_BYTES - 115), entry(100, "taskd-eta")]))) == 2
    assert len(list(send_batches([entry(BATCH_BYTES - 1), entry(1)]))) == 1
    assert len(list(send_batches([entry(BATCH_BYTES - 1), entry(2)]))) == 2


# -- machinery's messages -------------------------------------------------------------------


def test_bodies_are_machinerys_plain_json_and_short_delays_are_delay_seconds(
    open_sqs: Callable[..., Broker], namespace: str, raw: Any, sqs_server: str
) -> None:
    broker = open_sqs()
    body = b'{"UUID":"task_1","Name":"add"}'
    broker.publish(namespace, body, eta=GoTime(time.time_ns() + 2 * 10**9))
    url = f"{endpoint_of(sqs_server, Config()).base}/{namespace}"
    counts = raw.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessagesDelayed"] == "1"  # DelaySeconds, as Go sends
    (message,) = wait_until(
        lambda: raw.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages"), 10
    )
    assert message["Body"] == body.decode()
    assert "MessageAttributes" not in message  # nothing a Go consumer would need


# -- delays past one hop ----------------------------------------------------------------------


def test_an_eta_past_the_longest_delay_hops_until_due(
    open_sqs: Callable[..., Broker], namespace: str
) -> None:
    """With one-second hops (SQS allows 15 minutes), a 4-second ETA is sent on 3 times."""
    broker = open_sqs(sqs={"max_delay_seconds": 1})
    eta = GoTime(time.time_ns() + 4 * 10**9)
    broker.publish(namespace, b"later", eta=eta)
    hops = 0
    delivered: list[Any] = []
    while not delivered:
        if broker.delayed(namespace):
            hops += 1  # (each read sees the message in some hop's delay, or not yet)
        delivered = broker.fetch(namespace, max_messages=1, wait_s=0.3)
        assert time.time_ns() < eta.unix_ns + 10 * 10**9, "never delivered"
    assert time.time_ns() >= eta.unix_ns - 50_000_000
    assert delivered[0].body == b"later" and delivered[0].deliveries == 1
    assert hops >= 2  # it waited in SQS, not in this consumer
    broker.ack(delivered[0])
    assert broker.fetch(namespace, max_messages=1, wait_s=1.5) == []  # one copy only


# -- FIFO queues ------------------------------------------------------------------------------


def test_fifo_groups_and_deduplication_per_attempt(
    open_sqs: Callable[..., Broker], namespace: str, raw: Any, sqs_server: str
) -> None:
    queue = f"{namespace}.fifo"
    broker = open_sqs("sqs_fifo")
    first = json.dumps({"UUID": "task_1", "RetryCount": 2}).encode()
    retry = json.dumps({"UUID": "task_1", "RetryCount": 1}).encode()  # same task, next attempt
    broker.publish_many([Message(queue, first, group="orders"), Message(queue, first)])
    broker.publish_many([Message(queue, retry, group="orders")])
    url = f"{endpoint_of(sqs_server, Config()).base}/{queue}"
    got = []
    deadline = time.monotonic() + 10
    while len(got) < 2 and time.monotonic() < deadline:
        reply = raw.receive_message(
            QueueUrl=url,
            MaxNumberOfMessages=10,
            WaitTimeSeconds=1,
            MessageSystemAttributeNames=["MessageGroupId"],
        )
        for message in reply.get("Messages", []):
            got.append((message["Body"], message["Attributes"]["MessageGroupId"]))
            raw.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    # The same bytes twice are one message; the retry, the same UUID, is not swallowed.
    assert got == [(first.decode(), "orders"), (retry.decode(), "orders")]
    assert raw.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages") is None


def test_a_fifo_message_waits_hidden_for_its_eta(
    open_sqs: Callable[..., Broker], namespace: str
) -> None:
    queue = f"{namespace}.fifo"
    broker = open_sqs("sqs_fifo")
    eta = GoTime(time.time_ns() + 2 * 10**9)
    broker.publish(queue, b"later", eta=eta)
    delivered = take(broker, queue)
    assert time.time_ns() >= eta.unix_ns - 50_000_000
    assert delivered.deliveries == 1  # its receive before the ETA is not counted


# -- rejects ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["my queue!", "q" * 81, "dots.in.name", ".fifo"])
def test_a_queue_name_sqs_refuses_is_a_config_error_and_never_sent_to(
    open_sqs: Callable[..., Broker], name: str
) -> None:
    broker = open_sqs()
    with pytest.raises(ConfigError) as caught:
        broker.check([name])
    assert caught.value.key == "--queue"
    assert "letters, digits, hyphens and underscores" in str(caught.value)
    with pytest.raises(BrokerError, match="letters, digits, hyphens and underscores"):
        broker.publish(name, b"x")  # a RoutingKey as a producer gave it


def test_a_queue_too_long_for_taskds_dead_letters_needs_a_redrive_policy(
    open_sqs: Callable[..., Broker], sqs_namespace: str, raw: Any
) -> None:
    """taskd sets rejected messages aside in taskd-dead-<queue>: past 69 characters SQS
    would refuse that name, and every reject would fail, unless the queue's own redrive
    policy takes them."""
    longest = (sqs_namespace + "-" + "q" * 80)[:69]
    too_long = longest + "q"
    redriven = longest + "r"
    create_queue_with_redrive(raw, redriven, 2)
    broker = open_sqs()
    broker.check([longest, redriven])
    with pytest.raises(ConfigError) as caught:
        broker.check([too_long])
    assert caught.value.key == "--queue"
    assert "use at most 69, or give the queue a redrive policy" in str(caught.value)
    broker.publish(longest, b"doomed")
    broker.reject(take(broker, longest), "set aside")  # into taskd-dead-<its 69 characters>
    (letter,) = wait_until(lambda: broker.dead_letters(longest, 5), 10)
    assert (letter.body, letter.reason) == (b"doomed", "set aside")


def test_a_queue_with_a_redrive_policy_hands_rejects_to_it(
    open_sqs: Callable[..., Broker], namespace: str, raw: Any
) -> None:
    """machinery's StopTaskDeletionOnError: the message is not deleted, and after
    maxReceiveCount receives SQS moves it to the queue's own dead-letter queue."""
    create_queue_with_redrive(raw, namespace, 2)
    broker = open_sqs(sqs={"receive_visibility_timeout": 1})
    broker.publish(namespace, b"doomed")
    for receive in (1, 2):
        delivery = take(broker, namespace)
        assert delivery.deliveries == receive
        broker.reject(delivery, "task failed, StopTaskDeletionOnError")
    letters = wait_until(
        lambda: (
            (broker.fetch(namespace, max_messages=1, wait_s=1.2) == [])
            and broker.dead_letters(namespace, 5)
        ),
        15,
    )
    assert [letter.body for letter in letters] == [b"doomed"]
    assert letters[0].reason == "moved by the queue's redrive policy"
