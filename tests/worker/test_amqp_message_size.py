"""A message larger than RabbitMQ takes (its ``max_message_size``, 128 MiB by default on
3.x): RabbitMQ closes the channel over it. That refusal is for good, for that message: a
worker sets aside what sends it instead of retrying it for ever, and the tasks it would have
sent are FAILURE, saying why. The limit is server-wide and lowered here: pytest runs these
tests alone."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskd import chain
from taskd.client import signature
from taskd.errors import SendError, TaskFailed
from tests.support.harness import Daemon, wait_until
from tests.support.tasks import runs
from tests.worker.test_amqp import amqp_client, rabbitmqctl

pytestmark = pytest.mark.alone

LIMIT = 65_536  # bytes; RabbitMQ's channels opened while it is lowered keep it


@contextlib.contextmanager
def max_message_size(limit: int) -> Iterator[None]:
    was = rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).").strip()
    found = re.fullmatch(r"\{ok,(\d+)\}", was)
    rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {limit}).")
    try:
        yield
    finally:
        if found:
            rabbitmqctl("eval", f"application:set_env(rabbit, max_message_size, {found[1]}).")
        else:
            rabbitmqctl("eval", "application:unset_env(rabbit, max_message_size).")


def test_a_callback_too_large_for_rabbitmq_fails_instead_of_holding_the_worker(
    amqp_namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """A task's result passed to its callback makes a message RabbitMQ refuses: the child
    waited on it as an outage for ever (broker_still_unavailable, no other task ran, the
    chain PENDING). Now its message is set aside with the reason, the callback is FAILURE
    saying why, and the worker goes on."""
    config, client = amqp_client(amqp_namespace, tmp_path, worker={"prefetch": 1})
    trace = tmp_path / "trace"
    with max_message_size(LIMIT):
        process = daemon(config, "--concurrency", "1")
        process.wait_ready(1)
        sent = client.send_chain(
            chain(signature("sized_record", str(trace), 2 * LIMIT), signature("count"))
        )
        with pytest.raises(TaskFailed) as failed:
            sent.get(timeout=30)
        assert "larger than configured max size" in failed.value.error
        assert "not sent" in failed.value.error
        assert runs(trace) == ["sized"]
        refused = process.events("followups_refused")
        assert len(refused) == 1 and "RabbitMQ refused the message" in refused[0]["error"]
        assert not process.events("broker_unavailable")
        (letter,) = wait_until(lambda: client.broker.dead_letters(amqp_namespace, 5), 20)
        assert letter.reason.startswith("what it sets off was refused: ")
        # The worker goes on, on a channel of its own again.
        assert client.send("record", str(trace), "next").get(timeout=20) == "next"
        # A client's send of such a message fails at once, saying why.
        with pytest.raises(SendError, match="RabbitMQ refused the message"):
            client.send("record", str(trace), "x" * 2 * LIMIT)
            client.flush()
    assert process.process.poll() is None
    client.close()
