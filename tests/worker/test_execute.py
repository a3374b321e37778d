"""execute(): one task run -> SUCCEEDED with typed results, FAILED, or RETRY with the message.

Pure: no broker, no backend, no processes. Times are checked against bounds taken around the
call, never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from taskd import Retry, SoftTimeLimitExceeded
from taskd.registry import Task, TaskContext, describe
from taskd.wire import Arg, GoTime, Signature, TaskResult, decode_signature
from taskd.worker.execute import (
    ATTEMPT_HEADER,
    Kind,
    Outcome,
    RetryPolicy,
    attempt_of,
    error_text,
    execute,
)
from taskd.worker.followups import on_error, on_success
from taskd.worker.limits import Limits

NO_JITTER = RetryPolicy()
QUEUE = "machinery_tasks"


def _task(fn: Any, name: str | None = None) -> Task:
    return describe(fn, name or fn.__name__, "tests")


def _sig(name: str, *args: Arg, **fields: Any) -> Signature:
    return Signature(name=name, uuid=f"task_{name}", args=args, **fields)


def _run(fn: Any, sig: Signature, policy: RetryPolicy = NO_JITTER) -> tuple[Outcome, int, int]:
    before = time.time_ns()
    outcome = execute(_task(fn, sig.name), sig, QUEUE, policy)
    after = time.time_ns()
    return outcome, before, after


def _assert_eta(outcome: Outcome, before: int, after: int, delay_s: float) -> None:
    assert outcome.retry is not None
    eta = outcome.retry.eta
    assert eta is not None
    assert eta.offset_s == 0
    delay_ns = round(delay_s * 1_000_000_000)
    assert before + delay_ns <= eta.unix_ns <= after + delay_ns


# -- tasks used below --------------------------------------------------------------------------


def add(*numbers: int) -> int:
    return sum(numbers)


def halve(x: int) -> float:
    return x // 2  # an int, declared float: stored as float64


def stats(numbers: list[int]) -> tuple[int, float]:
    return len(numbers), sum(numbers) / len(numbers)


def nothing() -> None:
    return None


def untyped_result(x):  # type: ignore[no-untyped-def]
    return [x, x]


def returns_dict() -> Any:
    return {"a": 1}


def returns_nan() -> float:
    return float("nan")


def fail(message: str) -> None:
    raise RuntimeError(message)


def fail_silently() -> None:
    raise ValueError


def sum_floats(numbers: list[float]) -> float:
    return sum(numbers)


# -- success ---------------------------------------------------------------------------------


def test_success_with_typed_results() -> None:
    outcome, _, _ = _run(add, _sig("add", Arg("int64", 1), Arg("int64", 2)))
    assert outcome == Outcome(Kind.SUCCEEDED, results=(TaskResult("int64", 3),))


def test_success_with_declared_float_result() -> None:
    outcome, _, _ = _run(halve, _sig("halve", Arg("int64", 4)))
    assert outcome.kind is Kind.SUCCEEDED
    assert outcome.results == (TaskResult("float64", 2.0),)
    assert type(outcome.results[0].value) is float
    assert outcome.results[0].encode() == '{"Type":"float64","Value":2}'


def test_success_with_several_results() -> None:
    outcome, _, _ = _run(stats, _sig("stats", Arg("[]int64", [1, 2])))
    assert outcome.results == (TaskResult("int64", 2), TaskResult("float64", 1.5))


def test_success_without_results() -> None:
    outcome, _, _ = _run(nothing, _sig("nothing"))
    assert outcome == Outcome(Kind.SUCCEEDED, results=())


def test_success_with_inferred_result_type() -> None:
    outcome, _, _ = _run(untyped_result, _sig("untyped_result", Arg("string", "a")))
    assert outcome.results == (TaskResult("[]string", ["a", "a"]),)


def test_args_none_means_no_arguments() -> None:
    outcome, _, _ = _run(add, Signature(name="add", args=None))
    assert outcome.results == (TaskResult("int64", 0),)


@pytest.mark.parametrize(
    ("fn", "message"),
    [(returns_dict, "dict has no machinery type"), (returns_nan, "cannot be stored")],
)
def test_unstorable_result_fails_without_retry(fn: Any, message: str) -> None:
    outcome, _, _ = _run(fn, _sig(fn.__name__, retry_count=3))
    assert outcome.kind is Kind.FAILED
    assert outcome.retry is None
    assert outcome.error.startswith(f"task '{fn.__name__}': return value 1 cannot be stored")
    assert message in outcome.error


# -- failure ---------------------------------------------------------------------------------


def test_failure_with_error_text() -> None:
    outcome, _, _ = _run(fail, _sig("fail", Arg("string", "boom")))
    assert outcome.kind is Kind.FAILED
    assert outcome.error == "boom"
    assert outcome.retry is None
    assert outcome.results == ()
    assert "RuntimeError: boom" in outcome.traceback
    assert "in fail" in outcome.traceback


def test_failure_without_a_message_uses_the_exception_type() -> None:
    outcome, _, _ = _run(fail_silently, _sig("fail_silently"))
    assert outcome.kind is Kind.FAILED
    assert outcome.error == "ValueError"


def test_a_task_that_calls_sys_exit_fails_and_its_worker_goes_on() -> None:
    def quits(code: int) -> None:
        raise SystemExit(code)

    outcome, _, _ = _run(quits, _sig("quits", Arg("int64", 3)))
    assert (outcome.kind, outcome.error) == (Kind.FAILED, "the task called sys.exit(3)")
    assert "SystemExit: 3" in outcome.traceback
    outcome, _, _ = _run(quits, _sig("quits", Arg("int64", 3), retry_count=1))
    assert outcome.kind is Kind.RETRY


def test_any_base_exception_fails_the_task_not_its_worker() -> None:
    class Stop(BaseException):  # as gevent's GreenletExit or trio's Cancelled are
        pass

    def raises(kind: str) -> None:
        raise {
            "cancelled": asyncio.CancelledError(),
            "interrupt": KeyboardInterrupt(),
            "own": Stop("stopped by the library"),
        }[kind]

    for kind, error in (
        ("cancelled", "CancelledError"),
        ("interrupt", "KeyboardInterrupt"),
        ("own", "stopped by the library"),
    ):
        outcome, _, _ = _run(raises, _sig("raises", Arg("string", kind)))
        assert (outcome.kind, outcome.error) == (Kind.FAILED, error)
        assert f"{error}" in outcome.traceback
        outcome, _, _ = _run(raises, _sig("raises", Arg("string", kind), retry_count=1))
        assert (outcome.kind, outcome.error) == (Kind.RETRY, error)


class _UnreadableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("its __str__ is broken")


class _ExitingError(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


def test_an_exception_whose_message_cannot_be_read_fails_its_task_not_its_worker() -> None:
    def raises(kind: str) -> None:
        raise {"unreadable": _UnreadableError, "exiting": _ExitingError}[kind]()

    for kind, name in (("unreadable", "_UnreadableError"), ("exiting", "_ExitingError")):
        for retries, outcome_kind in ((0, Kind.FAILED), (1, Kind.RETRY)):
            sig = _sig("raises", Arg("string", kind), retry_count=retries)
            outcome, _, _ = _run(raises, sig)
            assert outcome.kind is outcome_kind
            assert outcome.error.startswith(f"{name} (its message could not be read: ")
            assert "in raises" in outcome.traceback


class _UnreadableList(list[int]):
    def __iter__(self) -> Any:
        raise RuntimeError("cursor closed")


def test_a_return_value_whose_own_code_raises_fails_its_task_not_its_worker() -> None:
    def returns_unreadable() -> Any:
        return _UnreadableList([1, 2])

    outcome, _, _ = _run(returns_unreadable, _sig("returns_unreadable", retry_count=2))
    assert (outcome.kind, outcome.retry) == (Kind.FAILED, None)
    assert outcome.error == (
        "task 'returns_unreadable': its return value cannot be read: cursor closed"
    )
    assert "RuntimeError: cursor closed" in outcome.traceback


def test_a_returned_task_result_without_a_json_form_fails_its_task() -> None:
    def returns_raw() -> Any:
        return TaskResult("int64", object())

    outcome, _, _ = _run(returns_raw, _sig("returns_raw"))
    assert outcome.kind is Kind.FAILED
    assert outcome.error == (
        "task 'returns_raw': return value 1 cannot be stored: cannot encode object as JSON"
    )


# -- async def tasks ----------------------------------------------------------------------------


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


async def async_fail(message: str) -> None:
    await asyncio.sleep(0)
    raise RuntimeError(message)


async def async_retry() -> None:
    await asyncio.sleep(0)
    raise Retry(countdown_s=7)


def test_an_async_task_runs_to_its_value() -> None:
    outcome, _, _ = _run(async_add, _sig("async_add", Arg("int64", 2), Arg("int64", 3)))
    assert outcome.kind is Kind.SUCCEEDED
    assert outcome.results == (TaskResult("int64", 5),)


def test_an_async_task_fails_and_retries_as_a_plain_one() -> None:
    outcome, _, _ = _run(async_fail, _sig("async_fail", Arg("string", "boom")))
    assert (outcome.kind, outcome.error) == (Kind.FAILED, "boom")
    assert "RuntimeError: boom" in outcome.traceback and "in async_fail" in outcome.traceback
    outcome, before, after = _run(async_retry, _sig("async_retry", retry_count=2))
    assert outcome.kind is Kind.RETRY
    _assert_eta(outcome, before, after, 7)


def test_each_async_call_gets_a_loop_of_its_own_and_leaves_nothing_running() -> None:
    loops: list[asyncio.AbstractEventLoop] = []
    leftovers: list[asyncio.Task[None]] = []

    async def spawns() -> int:
        loops.append(asyncio.get_running_loop())
        leftovers.append(asyncio.create_task(asyncio.sleep(3600)))  # never awaited by the task
        return len(loops)

    for call in (1, 2):
        outcome, _, _ = _run(spawns, _sig("spawns"))
        assert outcome.results == (TaskResult("int64", call),)
    assert loops[0] is not loops[1]
    assert all(loop.is_closed() for loop in loops)
    assert all(task.cancelled() for task in leftovers)


def test_the_soft_time_limit_cuts_an_async_task_short() -> None:
    async def waits() -> str:
        try:
            await asyncio.sleep(30)
        except SoftTimeLimitExceeded:
            return "cut short"
        return "slept"

    started = time.monotonic()
    outcome = execute(_task(waits), _sig("waits"), QUEUE, NO_JITTER, Limits(soft_s=0.2))
    assert outcome.results == (TaskResult("string", "cut short"),)
    assert time.monotonic() - started < 20  # the alarm came, not the end of the sleep
    outcome = execute(
        _task(async_add),
        _sig("async_add", Arg("int64", 1), Arg("int64", 1)),
        QUEUE,
        NO_JITTER,
        Limits(soft_s=5),
    )
    assert outcome.results == (TaskResult("int64", 2),)  # the next call is unaffected


def test_error_text() -> None:
    assert error_text(RuntimeError("x y")) == "x y"
    assert error_text(KeyError("k")) == "'k'"
    assert error_text(RuntimeError()) == "RuntimeError"


# -- automatic retry (RetryCount) --------------------------------------------------------------


def test_retry_count_gives_a_retry() -> None:
    sig = _sig("fail", Arg("string", "boom"), retry_count=3, headers={"trace": "t1"})
    outcome, before, after = _run(fail, sig)
    assert outcome.kind is Kind.RETRY
    assert outcome.error == "boom"
    assert "RuntimeError: boom" in outcome.traceback
    assert outcome.retry_in_s == 1.0
    again = outcome.retry
    assert again is not None
    assert again.retry_count == 2
    assert again.retry_timeout == 1
    assert again.uuid == sig.uuid
    assert again.name == sig.name
    assert again.args == sig.args
    assert again.headers == {"trace": "t1", ATTEMPT_HEADER: 2}
    _assert_eta(outcome, before, after, 1.0)
    assert sig.headers == {"trace": "t1"}  # the original is untouched
    assert sig.retry_count == 3


def test_retry_delays_follow_fibonacci_until_retries_run_out() -> None:
    sig = _sig("fail", Arg("string", "boom"), retry_count=5)
    timeouts, counts, attempts = [], [], []
    for _ in range(5):
        outcome, before, after = _run(fail, sig)
        assert outcome.kind is Kind.RETRY
        assert outcome.retry is not None
        _assert_eta(outcome, before, after, outcome.retry_in_s)
        sig = outcome.retry
        timeouts.append(sig.retry_timeout)
        counts.append(sig.retry_count)
        attempts.append(attempt_of(sig))
        assert outcome.retry_in_s == float(sig.retry_timeout)
    assert timeouts == [1, 2, 3, 5, 8]
    assert counts == [4, 3, 2, 1, 0]
    assert attempts == [2, 3, 4, 5, 6]
    final, _, _ = _run(fail, sig)
    assert final.kind is Kind.FAILED
    assert final.retry is None
    assert final.error == "boom"


def test_retry_timeout_is_a_starting_point() -> None:
    outcome, before, after = _run(
        fail, _sig("fail", Arg("string", "x"), retry_count=1, retry_timeout=10)
    )
    assert outcome.retry is not None
    assert outcome.retry.retry_timeout == 13
    assert outcome.retry_in_s == 13.0
    _assert_eta(outcome, before, after, 13.0)


def test_retry_replaces_an_existing_eta() -> None:
    past = GoTime.parse("2001-01-01T00:00:00Z")
    outcome, before, after = _run(fail, _sig("fail", Arg("string", "x"), retry_count=1, eta=past))
    _assert_eta(outcome, before, after, 1.0)


def test_retry_message_survives_the_wire() -> None:
    outcome, _, _ = _run(fail, _sig("fail", Arg("string", "x"), retry_count=2, headers={}))
    assert outcome.retry is not None
    encoded = outcome.retry.encode()
    assert b'"Headers":{"taskd_attempt":2},' in encoded
    assert b'"RetryCount":1,"RetryTimeout":1,' in encoded
    decoded = decode_signature(encoded)
    assert decoded.encode() == encoded
    assert attempt_of(decoded) == 2
    assert decoded.eta == outcome.retry.eta


def test_jitter_spreads_the_delay_but_not_the_backoff() -> None:
    policy = RetryPolicy(jitter=0.5)
    for _ in range(20):
        sig = _sig("fail", Arg("string", "x"), retry_count=1, retry_timeout=3)
        outcome, before, after = _run(fail, sig, policy)
        assert outcome.retry is not None
        assert outcome.retry.retry_timeout == 5
        assert 2.5 <= outcome.retry_in_s <= 7.5
        _assert_eta(outcome, before, after, outcome.retry_in_s)


def test_max_delay_caps_the_delay_but_not_the_backoff() -> None:
    sig = _sig("fail", Arg("string", "x"), retry_count=1, retry_timeout=5)
    outcome, before, after = _run(fail, sig, RetryPolicy(max_delay_s=2.0))
    assert outcome.retry is not None
    assert outcome.retry.retry_timeout == 8
    assert outcome.retry_in_s == 2.0
    _assert_eta(outcome, before, after, 2.0)


# -- taskd.Retry -------------------------------------------------------------------------------


def make_retrier(countdown_s: float, reason: str | None = None) -> Any:
    def retrier() -> None:
        if reason is None:
            raise Retry(countdown_s)
        raise Retry(countdown_s, reason)

    return retrier


def test_retry_request_honours_retry_count() -> None:
    sig = _sig("retrier", retry_count=2, retry_timeout=3)
    outcome, before, after = _run(make_retrier(7.5, "not yet"), sig)
    assert outcome.kind is Kind.RETRY
    assert outcome.error == "not yet"
    assert outcome.retry_in_s == 7.5
    assert outcome.retry is not None
    assert outcome.retry.retry_count == 1
    assert outcome.retry.retry_timeout == 3  # a countdown does not advance the backoff
    assert attempt_of(outcome.retry) == 2
    _assert_eta(outcome, before, after, 7.5)


def test_retry_request_without_retries_left_fails() -> None:
    outcome, _, _ = _run(make_retrier(1.0, "not yet"), _sig("retrier", retry_count=0))
    assert outcome.kind is Kind.FAILED
    assert outcome.error == "not yet"
    assert outcome.retry is None


def test_retry_request_default_reason() -> None:
    outcome, _, _ = _run(make_retrier(0.0), _sig("retrier", retry_count=1))
    assert outcome.kind is Kind.RETRY
    assert outcome.error == "retry requested"
    assert outcome.retry_in_s == 0.0


def test_retry_request_countdown_is_capped_too() -> None:
    outcome, _, _ = _run(
        make_retrier(60.0), _sig("retrier", retry_count=1), RetryPolicy(max_delay_s=5)
    )
    assert outcome.retry_in_s == 5.0


def test_retry_requests_run_out() -> None:
    sig = _sig("retrier", retry_count=3)
    kinds = []
    for _ in range(4):
        outcome, _, _ = _run(make_retrier(0.5), sig)
        kinds.append(outcome.kind)
        if outcome.retry is not None:
            sig = outcome.retry
    assert kinds == [Kind.RETRY, Kind.RETRY, Kind.RETRY, Kind.FAILED]


@pytest.mark.parametrize(
    ("countdown_s", "reason", "error"),
    [
        (float("inf"), "x", "ValueError: Retry countdown_s must be 0 or more seconds, got inf"),
        (float("nan"), "x", "ValueError: Retry countdown_s must be 0 or more seconds, got nan"),
        (-1, "x", "ValueError: Retry countdown_s must be 0 or more seconds, got -1"),
        ("5", "x", "TypeError: Retry countdown_s must be seconds, got str"),
        (True, "x", "TypeError: Retry countdown_s must be seconds, got bool"),
        (1, 123, "TypeError: Retry reason must be a str, got int"),
    ],
)
def test_a_retry_request_taskd_cannot_honour_fails_where_the_task_raises_it(
    countdown_s: Any, reason: Any, error: str
) -> None:
    outcome, _, _ = _run(make_retrier(countdown_s, reason), _sig("retrier"))
    assert outcome.kind is Kind.FAILED
    assert outcome.error == error.partition(": ")[2]
    assert error in outcome.traceback
    assert "in retrier" in outcome.traceback  # the task's own line is shown


def test_a_retry_past_the_latest_eta_fails_instead_of_being_sent() -> None:
    outcome, _, _ = _run(make_retrier(1e300, "later"), _sig("retrier", retry_count=1))
    assert (outcome.kind, outcome.retry) == (Kind.FAILED, None)
    assert outcome.error.startswith("later (not retried: countdown 1e+300 s is out of range")
    # A RetryTimeout off the wire (any producer's) grows the backoff past it the same way.
    sig = _sig("fail", Arg("string", "boom"), retry_count=1, retry_timeout=2**62)
    outcome, _, _ = _run(fail, sig)
    assert (outcome.kind, outcome.retry) == (Kind.FAILED, None)
    assert outcome.error.startswith("boom (not retried: countdown ")
    assert "RuntimeError: boom" in outcome.traceback


# -- bad arguments -----------------------------------------------------------------------------


def test_bad_args_fail_without_retry_and_without_calling_the_task() -> None:
    calls: list[Any] = []

    def add_tracked(*numbers: int) -> int:
        calls.append(numbers)
        return sum(numbers)

    sig = _sig("add", Arg("int64", 1), Arg("string", "2"), retry_count=5)
    outcome = execute(_task(add_tracked, "add"), sig, QUEUE, NO_JITTER)
    assert outcome.kind is Kind.FAILED
    assert outcome.retry is None
    assert outcome.error == "argument 2 of task 'add': numbers must be int64, got string"
    assert calls == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "task 'stats': takes 1 argument(s), got 0"),
        ((Arg("[]int64", [1]), Arg("int64", 1)), "takes 1 argument(s), got 2"),
        ((Arg("[]int64", [1.5]),), "argument 1 of task 'stats': []int64 element: 1.5 is not int64"),
        ((Arg("[]int64", "x"),), "argument 1 of task 'stats'"),
        ((Arg("complex64", 1),), "argument 1 of task 'stats'"),
    ],
)
def test_bad_args_messages(args: tuple[Arg, ...], message: str) -> None:
    outcome, _, _ = _run(stats, _sig("stats", *args, retry_count=2))
    assert outcome.kind is Kind.FAILED
    assert outcome.retry is None
    assert message in outcome.error


def test_execute_never_raises_for_byte_slice_into_list_of_float() -> None:
    outcome, _, _ = _run(sum_floats, _sig("sum_floats", Arg("[]uint8", "AQI="), retry_count=1))
    assert outcome == Outcome(Kind.SUCCEEDED, results=(TaskResult("float64", 3.0),))


# -- attempts and TaskContext ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "attempt"),
    [
        (None, 1),
        ({}, 1),
        ({ATTEMPT_HEADER: 1}, 1),
        ({ATTEMPT_HEADER: 4}, 4),
        ({ATTEMPT_HEADER: "4"}, 1),
        ({ATTEMPT_HEADER: True}, 1),
        ({ATTEMPT_HEADER: 0}, 1),
        ({ATTEMPT_HEADER: -3}, 1),
        ({ATTEMPT_HEADER: 2.5}, 1),
    ],
)
def test_attempt_of(headers: dict[str, Any] | None, attempt: int) -> None:
    assert attempt_of(Signature(name="x", headers=headers)) == attempt


def test_attempt_header_increments_from_any_start() -> None:
    sig = _sig("fail", Arg("string", "x"), retry_count=1, headers={ATTEMPT_HEADER: 7, "k": "v"})
    outcome, _, _ = _run(fail, sig)
    assert outcome.retry is not None
    assert outcome.retry.headers == {ATTEMPT_HEADER: 8, "k": "v"}


def test_task_context_is_injected_first() -> None:
    seen: list[TaskContext] = []

    def with_context(ctx: TaskContext, x: int) -> int:
        seen.append(ctx)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt}")
        return x * 10

    task = _task(with_context)
    sig = _sig("with_context", Arg("int64", 4), retry_count=5)
    outcomes = []
    for _ in range(3):
        outcome = execute(task, sig, "q1", NO_JITTER)
        outcomes.append(outcome)
        if outcome.retry is not None:
            sig = outcome.retry
    assert [o.kind for o in outcomes] == [Kind.RETRY, Kind.RETRY, Kind.SUCCEEDED]
    assert [o.error for o in outcomes] == ["attempt 1", "attempt 2", ""]
    assert outcomes[-1].results == (TaskResult("int64", 40),)
    assert [ctx.attempt for ctx in seen] == [1, 2, 3]
    assert [ctx.retries_left for ctx in seen] == [5, 4, 3]
    assert all(ctx.queue == "q1" for ctx in seen)
    assert all(ctx.task_id == "task_with_context" for ctx in seen)
    assert seen[-1].signature is sig


# -- what follows a run (workflow's pure helpers fed with execute's results) --------------------


def test_results_are_appended_to_on_success_callbacks() -> None:
    callback = Signature(name="multiply", uuid="task_m", args=(Arg("int64", 4),))
    sig = _sig("add", Arg("int64", 1), Arg("int64", 2), on_success=(callback,))
    outcome, _, _ = _run(add, sig)
    (follow,) = on_success(sig, outcome.results)
    assert follow.args == (Arg("int64", 4), Arg("int64", 3))
    assert (
        b'"Args":[{"Name":"","Type":"int64","Value":4},{"Name":"","Type":"int64","Value":3}],'
        in (follow.encode())
    )


def test_immutable_task_does_not_pass_its_results_on() -> None:
    callback = Signature(name="multiply", uuid="task_m", args=(Arg("int64", 4),))
    sig = _sig("add", Arg("int64", 1), on_success=(callback,), immutable=True)
    outcome, _, _ = _run(add, sig)
    assert on_success(sig, outcome.results) == [callback]


def test_error_is_prepended_to_on_error_callbacks() -> None:
    callback = Signature(name="report", uuid="task_r", args=(Arg("int64", 9),))
    sig = _sig("fail", Arg("string", "boom"), on_error=(callback,))
    outcome, _, _ = _run(fail, sig)
    (follow,) = on_error(sig.on_error or (), outcome.error)
    assert follow.args == (Arg("string", "boom"), Arg("int64", 9))
