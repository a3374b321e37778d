"""Retries, ETA, callbacks, chain, group and chord, on every broker/backend pair."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd import chain, chord, group
from taskd.client import Client, signature
from taskd.errors import TaskFailed
from taskd.wire import Arg, State, new_id
from tests.conftest import kind_with_server
from tests.support.harness import client_for, wait_until
from tests.support.tasks import lines, runs


@pytest.fixture(params=["sqlite", "redis", "amqp", "memcache", "mongodb", "sqs", "sqs_fifo"])
def driver_kind(request: pytest.FixtureRequest) -> str:
    """Workflows on every broker, each with its own result backend (memcache, mongodb: SQLite
    messages, Memcache or MongoDB results)."""
    return kind_with_server(request)


@pytest.fixture
def client(driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]) -> Any:
    """A client, and a daemon with two children serving it."""
    path, client = client_for(driver_kind, namespace, tmp_path)
    daemon(path, "--concurrency", "2").wait_ready(2)
    with client:
        yield client


def test_chains_pass_results_along(client: Client) -> None:
    assert client.send_chain(chain(signature("add", 1, 2), signature("multiply", 3))).get(30) == 9
    three = chain(signature("add", 1, 2), signature("add", 10), signature("add", 100))
    sent = client.send_chain(three)
    assert sent.get(30) == 113
    assert [client.result(i).get(5) for i in sent.link_ids] == [3, 13, 113]


def test_a_failing_link_stops_the_chain_and_runs_its_on_error(
    client: Client, tmp_path: Path
) -> None:
    errors, after = tmp_path / "errors", tmp_path / "after"
    broken = signature("fail", "link broke", on_error=[signature("collect_error", str(errors))])
    sent = client.send_chain(chain(broken, signature("collect", str(after))))
    with pytest.raises(TaskFailed, match="link broke"):
        sent.get(30)
    wait_until(lambda: lines(errors), 15, what="the OnError callback")
    assert lines(errors) == ["link broke"]
    # Never sent; recorded PENDING with the chain, then FAILURE with the reason once it broke.
    last = client.result(sent.link_ids[-1]).wait(15)
    assert (last.state, last.task_name) == (State.FAILURE, "collect")
    assert last.error == f"chain stopped: {sent.link_ids[0]} failed: link broke"
    assert lines(after) == []


def test_a_group_returns_its_results_in_member_order(client: Client) -> None:
    members = [signature("sum", list(range(i + 1))) for i in range(10)]
    sent = client.send_group(group(*members), send_concurrency=3)
    assert sent.get(30) == [sum(range(i + 1)) for i in range(10)]
    meta = client.backend.get_group(sent.group_id)
    assert meta is not None and meta.task_uuids == sent.member_ids


def test_a_chord_runs_its_callback_once_with_every_result(client: Client, tmp_path: Path) -> None:
    trace = tmp_path / "callback"
    members = [signature("sum", [i, i]) for i in range(10)]
    sent = client.send_chord(chord(members, signature("total_once", str(trace))))
    assert sent.task_id.startswith("chord_")
    assert sent.get(30) == sum(2 * i for i in range(10))
    assert runs(trace) == ["90"]  # exactly once, though members finish together on two children


def test_an_immutable_chord_callback_gets_no_results(client: Client, tmp_path: Path) -> None:
    trace = tmp_path / "callback"
    callback = signature("collect", str(trace), "done", immutable=True)
    client.send_chord(chord([signature("sum", [1]), signature("sum", [2])], callback)).get(30)
    assert lines(trace) == [["done"]]


def test_a_failed_member_fails_the_chord_once_and_never_runs_the_callback(
    client: Client, tmp_path: Path
) -> None:
    callback_trace, errors = tmp_path / "callback", tmp_path / "errors"
    members = [
        signature("sum", [1]),
        signature("fail", "member broke", retry_count=1),
        signature("sum", [2]),
    ]
    workflow = chord(members, signature("total_once", str(callback_trace)),
                     error_callback=signature("collect_error", str(errors)))  # fmt: skip
    sent = client.send_chord(workflow)
    with pytest.raises(TaskFailed, match="member broke"):
        sent.get(30)
    wait_until(lambda: lines(errors), 15, what="the chord's error callback")
    assert all(s and s.is_completed for s in sent.group.states())
    assert lines(errors) == ["member broke"]  # once, with the member's error first
    assert runs(callback_trace) == []


LAG_S = 4.0  # how late a due retry may start on a loaded machine


def test_retries_follow_fibonacci_and_end_in_success(client: Client, tmp_path: Path) -> None:
    trace = tmp_path / "attempts"
    sent = client.send(signature("flaky_traced", str(trace), 2, retry_count=3))
    seen = set()

    def finished() -> bool:
        state = sent.state()
        if state is not None:
            seen.add(state.state)
        return state is not None and state.is_completed

    wait_until(finished, 30, 0.01, "the flaky task to finish")
    assert sent.get(1) == 3
    assert State.RETRY in seen
    first, second, third = (float(stamp) for stamp in runs(trace))
    # The first retry after 1 s, the second after 2 s: never sooner; later only by as much
    # as a loaded 2-core machine may lag (exact delays: test_execute.py).
    assert 1.0 <= second - first < 1.0 + LAG_S
    assert 2.0 <= third - second < 2.0 + LAG_S


def test_a_task_asking_to_retry_forever_stops_at_retry_count(
    client: Client, tmp_path: Path
) -> None:
    trace = tmp_path / "attempts"
    sent = client.send(signature("always_retry", str(trace), retry_count=2))
    state = sent.wait(30)
    assert state.state is State.FAILURE
    assert state.error == "not yet"
    assert len(runs(trace)) == 3


def test_the_attempt_number_reaches_the_task(client: Client) -> None:
    assert client.send("attempt").get(30) == 1


def test_a_countdown_holds_the_task_back(client: Client, tmp_path: Path) -> None:
    trace = tmp_path / "ran"
    sent_at = time.time()
    client.send(signature("stamp", str(trace), countdown=3)).wait(30)
    (ran_at,) = (float(stamp) for stamp in runs(trace))
    assert ran_at >= sent_at + 3


def test_callbacks_get_results_or_the_error(client: Client, tmp_path: Path) -> None:
    got, immutable, errors = tmp_path / "got", tmp_path / "immutable", tmp_path / "errors"
    client.send(signature("add", 2, 3, on_success=[signature("collect", str(got), "x")])).get(30)
    keep = [signature("collect", str(immutable), "x")]
    client.send(signature("add", 2, 3, immutable=True, on_success=keep)).get(30)
    failed = client.send(
        signature("fail", "boom", on_error=[signature("collect_error", str(errors))])
    )
    with pytest.raises(TaskFailed):
        failed.get(30)
    wait_until(lambda: lines(got) and lines(immutable) and lines(errors), 15, what="callbacks")
    assert lines(got) == [["x", 5]]  # results appended
    assert lines(immutable) == [["x"]]  # Immutable: nothing appended
    assert lines(errors) == ["boom"]  # the error prepended


def test_callbacks_are_recorded_pending_before_they_are_sent(
    client: Client, tmp_path: Path
) -> None:
    callback = signature("collect", str(tmp_path / "cb"), task_id=new_id())
    client.send(signature("add", 1, on_success=[callback])).get(30)
    state = client.result(callback.uuid).wait(15)
    assert state.task_name == "collect"
    assert not state.created_at.is_zero


def test_typed_args_keep_their_types_through_callbacks(client: Client, tmp_path: Path) -> None:
    got = tmp_path / "got"
    callback = signature("collect", str(got))
    client.send(signature("split", Arg.of("string", "ab"), on_success=[callback])).get(30)
    wait_until(lambda: lines(got), 15, what="the callback")
    assert lines(got) == [[["a", "b"]]]


def test_the_example_plugins_retry_demos(client: Client) -> None:
    assert client.send(signature("flaky", 2, retry_count=3)).get(30) == 3
    with pytest.raises(TaskFailed, match="attempt 2 of 3 fails on purpose"):  # out of retries
        client.send(signature("flaky", 2, retry_count=1)).get(30)
    state = client.send(signature("retry_forever", 0.1, retry_count=2)).wait(30)
    assert (state.state, state.error) == (State.FAILURE, "asked to run again")
