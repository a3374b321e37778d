"""Nothing is lost: crashes of children and of the whole daemon, broker restarts, ETA bursts."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from taskd.client import signature
from taskd.wire import GoTime, State, new_id
from tests.support.harness import (
    PrivateRedis,
    assert_kept_leased,
    client_for,
    server_on_free_port,
    wait_until,
)
from tests.support.tasks import lines, runs
from tests.support.traces import (
    assert_each_ran_once_except,
    ended,
    in_flight,
    next_start,
    send_slow,
)

# Consumers that died on this machine are recognised at once (their process is gone), so
# the defaults recover within a heartbeat; a remote one would wait out consumer_timeout.
QUICK_RECOVERY = {"heartbeat_interval": 0.5}


@pytest.mark.parametrize("driver_kind", ["sqlite", "redis", "amqp", "sqs"], indirect=True)
@pytest.mark.parametrize("victim", ["a child", "the whole daemon"])
def test_a_kill_9_mid_run_loses_nothing(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any], victim: str
) -> None:
    """Every task ends SUCCESS; only those running at the kill run twice."""
    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK_RECOVERY)
    trace = tmp_path / "trace"
    results = send_slow(client, trace, 24, 0.5)
    serving = daemon(config, "--concurrency", "2")
    serving.wait_ready(2)
    wait_until(lambda: ended(trace) >= 4, 30, what="four tasks to finish")
    token, pid = next_start(trace)  # a child has just begun a task: kill it mid-task
    if victim == "a child":
        os.kill(pid, signal.SIGKILL)
        running = {token}  # its previous task was settled before this one started
    else:
        os.killpg(serving.pid, signal.SIGKILL)  # supervisor and children, no goodbyes
        serving.process.wait(10)
        # Started and not stored as SUCCESS: still running, or finishing (settling) its run.
        unfinished = {
            r.task_id for r in results if (s := r.state()) is None or s.state is not State.SUCCESS
        }
        started_tokens = {
            line.split(":", 1)[1] for line in runs(trace) if line.startswith("start:")
        }
        running = in_flight(trace) | {
            t for t in started_tokens if results[int(t[1:])].task_id in unfinished
        }
        serving = daemon(config, "--concurrency", "2")
    assert ended(trace) < 24  # the kill came mid-run
    for result in results:
        assert result.wait(90).state is State.SUCCESS
    assert_each_ran_once_except(trace, 24, running)
    if victim == "a child":
        assert Counter(runs(trace))[f"start:{token}"] == 2  # the killed task ran again
        (exited,) = serving.events("child_exited")
        assert exited["child_pid"] == pid
    assert serving.process.poll() is None
    client.close()


def test_a_redis_restart_mid_run_loses_nothing(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    config, client = client_for(
        "redis", namespace, tmp_path, broker=private_redis.url, worker=QUICK_RECOVERY
    )
    trace = tmp_path / "trace"
    sigs = [signature("record", str(trace), f"r{i}", task_id=new_id()) for i in range(2000)]
    for start in range(0, len(sigs), 250):
        client.publish(sigs[start : start + 250])
    process = daemon(config, "--concurrency", "2")
    wait_until(lambda: len(runs(trace)) >= 300, 60, what="the run to be under way")
    private_redis.stop()

    def outage_noticed() -> bool:
        return any(e["event"].endswith("_unavailable") for e in process.events())

    wait_until(outage_noticed, 30, what="the daemon to notice the outage")
    private_redis.start()
    ids = [sig.uuid for sig in sigs]

    def all_succeeded() -> bool:
        return all(s and s.state is State.SUCCESS for s in client.backend.get_states(ids))

    wait_until(all_succeeded, 120, 0.2, "all 2000 tasks to succeed")
    assert set(runs(trace)) == {f"r{i}" for i in range(2000)}
    assert process.process.poll() is None  # it never exited

    def recovered() -> bool:  # all may have run before the stop: then this comes later
        events = {event["event"] for event in process.events()}
        return bool(events & {"broker_recovered", "backend_recovered"})

    wait_until(recovered, 30, what="the daemon to log its recovery")
    client.close()


def running_slow_task(
    url: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> tuple[Any, Any, Any, Path]:
    """A daemon of one child on the Redis at ``url`` (results there too) running a 1 s task:
    its client, process, the task's handle and trace."""
    config, client = client_for("redis", namespace, tmp_path, broker=url, worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "a", 1.0)
    client.flush()
    wait_until(lambda: "start:a" in runs(trace), 20, what="the task to start")
    return client, process, sent, trace


class NotNow:
    """Ways a Redis answers "not now": each sets the refusal up on ``server`` and returns
    what ends it."""

    @staticmethod
    def oom(server: Any, url: str, tmp_path: Path) -> Callable[[], None]:
        """At maxmemory under noeviction, writes are refused (OOM) until memory is freed."""
        server.config_set("maxmemory-policy", "noeviction")
        server.config_set("maxmemory", 1)  # far below what it holds: every write refused
        return lambda: server.config_set("maxmemory", 0)

    @staticmethod
    def busy(server: Any, url: str, tmp_path: Path) -> Callable[[], None]:
        """Another client's script past busy-reply-threshold: BUSY until it ends."""
        import threading

        import redis

        server.config_set("busy-reply-threshold", 100)
        spin = "local t0 = redis.call('TIME')[1] while redis.call('TIME')[1] - t0 < 3 do end"
        thread = threading.Thread(target=lambda: redis.Redis.from_url(url).eval(spin, 0))
        thread.start()
        return lambda: thread.join(30)

    @staticmethod
    def misconf(server: Any, url: str, tmp_path: Path) -> Callable[[], None]:
        """A snapshot that failed (its directory gone, as on a full disk), under
        stop-writes-on-bgsave-error: MISCONF until one succeeds."""
        gone = tmp_path / "gone"
        gone.mkdir()
        kept = server.config_get("dir")["dir"]
        server.config_set("dir", str(gone))
        gone.rmdir()
        server.bgsave()
        wait_until(lambda: server.info("persistence")["rdb_last_bgsave_status"] == "err", 20)

        def saved() -> None:
            server.config_set("dir", kept)
            server.bgsave()
            wait_until(lambda: server.info("persistence")["rdb_last_bgsave_status"] == "ok", 20)

        return saved

    @staticmethod
    def noreplicas(server: Any, url: str, tmp_path: Path) -> Callable[[], None]:
        """min-replicas-to-write with no replica in sight: NOREPLICAS until one comes."""
        server.config_set("min-replicas-to-write", 1)
        return lambda: server.config_set("min-replicas-to-write", 0)


@pytest.mark.parametrize(
    ("refusal", "says"),
    [("oom", "maxmemory"), ("busy", "BUSY"), ("misconf", "MISCONF"), ("noreplicas", "NOREPLICAS")],
)
def test_a_redis_that_answers_not_now_is_an_outage_the_worker_rides_out(
    refusal: str, says: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """The worker waits, as for any outage, and its task is settled once, not run again.
    Before, all but OOM were permanent errors (redis-py has no class for them): the child
    crashed at its settle, and the task ran again or the daemon stopped."""
    import redis

    def command(port: int) -> list[str]:  # snapshots on (misconf), and CONFIG SET dir allowed
        return ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "3600 1",
                "--appendonly", "no", "--dir", str(tmp_path),
                "--enable-protected-configs", "yes"]  # fmt: skip

    with server_on_free_port(command, "redis-server of the test's own") as port:
        url = f"redis://127.0.0.1:{port}/0"
        client, process, sent, trace = running_slow_task(url, namespace, tmp_path, daemon)
        ended = getattr(NotNow, refusal)(redis.Redis.from_url(url), url, tmp_path)
        try:

            def refused() -> list[str]:
                return [e["error"] for e in process.events() if e["event"].endswith("_unavailable")]

            errors = wait_until(refused, 20, what="the daemon to meet the refusal")
            assert any(says in error for error in errors), errors
        finally:
            ended()

        def succeeded() -> bool:
            state = client.backend.get_states([sent.task_id])[0]
            return state is not None and state.state is State.SUCCESS

        wait_until(succeeded, 30, what="the task to be settled")
        assert runs(trace) == ["start:a", "end:a"]  # once
        assert not process.events("child_crashed")
        assert process.process.poll() is None
        client.close()


def test_a_fetch_unblocked_by_the_server_is_an_outage_not_a_crash(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    """A failover that demotes the master ends its blocked commands with UNBLOCKED (as
    CLIENT UNBLOCK ... ERROR does): the child waiting for messages fetches again."""
    import redis

    config, client = client_for(
        "redis", namespace, tmp_path, broker=private_redis.url, worker=QUICK_RECOVERY
    )
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    server = redis.Redis.from_url(private_redis.url)
    blocked = wait_until(
        lambda: [c["id"] for c in server.client_list() if c["cmd"] == "blmove"], 20
    )
    assert server.client_unblock(blocked[0], error=True)
    wait_until(lambda: process.events("broker_unavailable"), 20, what="the outage to be logged")
    assert client.send("sum", [1, 2]).get(timeout=20) == 3
    assert not process.events("fetch_failed")  # an outage, not a broken queue
    assert not process.events("child_crashed")
    client.close()


def test_a_wait_for_a_result_rides_out_a_restart_of_the_backend(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    """A client waiting for a result while Redis restarts (a failover, an upgrade) gets the
    result, as the worker settles it once Redis is back, not BackendUnavailable at the
    first lost connection."""
    import threading

    from structlog.testing import capture_logs

    client, _, sent, trace = running_slow_task(private_redis.url, namespace, tmp_path, daemon)
    got: list[object] = []
    with capture_logs() as logs:
        waiter = threading.Thread(target=lambda: got.append(sent.get(timeout=60)))
        waiter.start()
        private_redis.stop()
        wait_until(lambda: "end:a" in runs(trace), 20, what="the task to end, Redis down")
        wait_until(lambda: any(e["event"] == "backend_unavailable" for e in logs), 20)
        private_redis.start()
        waiter.join(60)
    assert got == ["a"]
    assert [e["event"] for e in logs if e["event"].startswith("backend_")] == [
        "backend_unavailable",
        "backend_recovered",
    ]
    client.close()


def test_follow_ups_the_broker_refuses_for_good_set_the_message_aside(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], redis_namespace: str
) -> None:
    """A callback whose queue the broker refuses (here a Redis key of another type: WRONGTYPE)
    crashed the child at its settle; the message came back, its task was settled from its
    stored state, the callback refused again: a crash loop for ever. Now the message is set
    aside with the reason, once, and the task's SUCCESS stands."""
    import redis

    from tests.support.harness import REDIS_URL

    config, client = client_for("redis", namespace, tmp_path, worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    blocked = f"{namespace}-not-a-list"
    redis.Redis.from_url(REDIS_URL).set(blocked, "something else's")
    trace = tmp_path / "trace"
    callback = signature("total_once", str(trace), queue=blocked)
    sent = client.send("total_once", str(trace), 1, 2, on_success=[callback])
    assert sent.get(timeout=20) == 3
    (letter,) = wait_until(lambda: client.broker.dead_letters(namespace, 5), 20)
    assert letter.reason.startswith("what it sets off was refused: ")
    assert "WRONGTYPE" in letter.reason
    assert process.events("followups_refused")
    assert not process.events("child_crashed")
    assert runs(trace) == ["3"]  # once, and the callback never
    client.close()


def test_a_message_the_broker_refuses_to_set_aside_stays_leased_and_the_child_goes_on(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], redis_namespace: str
) -> None:
    """Setting aside an unknown task whose dead-letter list became another type of key (the
    same holds for a permission taken away at run time): the script took the message off
    its processing list, then failed to push it (WRONGTYPE), and it was lost; the child
    crashed. Now nothing moves, the child logs the refusal once, keeps the message and
    serves the rest, and the message is back in its queue once the daemon stops."""
    import redis

    from tests.support.harness import REDIS_URL

    config, client = client_for("redis", namespace, tmp_path, worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    server = redis.Redis.from_url(REDIS_URL)
    dead = client.broker._keys.dead(namespace)
    server.set(dead, "something else's")
    try:
        unknown = client.send("no_such_task")
        assert client.send("add", 2, 3).get(timeout=20) == 5  # served after it
        assert_kept_leased(process, unknown.task_id, "WRONGTYPE")
        assert [m for m in server.lrange(namespace, 0, -1) if unknown.task_id.encode() in m]
    finally:
        server.delete(dead)
        client.close()


def test_ten_thousand_eta_tasks_run_after_their_eta(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], redis_namespace: str
) -> None:
    config, client = client_for("redis", namespace, tmp_path, worker={"prefetch": 32})
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    eta = GoTime(time.time_ns() + 2 * 10**9)
    sigs = [signature("stamp", str(trace), eta=eta) for _ in range(10_000)]
    for start in range(0, len(sigs), 1000):
        client.publish(sigs[start : start + 1000])
    wait_until(lambda: len(runs(trace)) >= 10_000, 60, 0.1, "10,000 ETA tasks to run")
    stamps = sorted(float(stamp) for stamp in runs(trace))
    assert len(stamps) == 10_000
    assert stamps[0] >= eta.to_unix() - 0.001  # none ran early
    print(f"\n10,000 ETA tasks: last ran {stamps[-1] - eta.to_unix():.2f}s after the ETA")
    client.close()


def test_a_message_that_kills_every_worker_is_set_aside(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    config, client = client_for(
        driver_kind, namespace, tmp_path, worker={**QUICK_RECOVERY, "max_deliveries": 2}
    )
    process = daemon(config, "--concurrency", "2")
    process.wait_ready(2)
    trace = tmp_path / "trace"
    deadly = client.send("crash", str(trace))
    state = deadly.wait(90)
    assert state.state is State.FAILURE
    assert "delivered 3 times, and each time its worker died" in state.error
    assert runs(trace) == ["crashing", "crashing"]  # it ran twice, not forever
    # The state is stored before the message is set aside (a waiter may hear of it first).
    (letter,) = wait_until(lambda: client.broker.dead_letters(namespace, 5), 10)
    assert "worker.max_deliveries" in letter.reason
    assert client.send("sum", [4]).get(timeout=60) == 4  # the daemon carries on
    assert process.process.poll() is None
    deaths = process.events("child_exited")
    assert [(death["task_id"], death["task"]) for death in deaths] == [
        (deadly.task_id, "crash")
    ] * 2
    # Each death is the message's, bounded by max_deliveries: its next child comes at once,
    # not after a backoff that stalled every other task (two such messages on 2 children
    # held 30 ordinary tasks up for 40 s, and the second crasher for minutes).
    assert not process.events("child_respawn_delayed")
    client.close()


@pytest.mark.parametrize("driver_kind", ["amqp"], indirect=True)
def test_where_deliveries_are_not_counted_a_killing_task_is_paced_not_looped(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """A RabbitMQ classic queue only flags a redelivery: worker.max_deliveries cannot set a
    message aside there (README), so the children it kills are replaced after the backoff,
    not at once (a fork loop)."""
    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK_RECOVERY)
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    client.send("crash", str(trace))
    wait_until(lambda: len(runs(trace)) >= 3, 60, what="three deaths")
    deaths = process.events("child_exited")
    assert {death.get("task") for death in deaths} == {"crash"}
    delays = [event["delay_s"] for event in process.events("child_respawn_delayed")]
    assert len(delays) >= 2 and delays == sorted(delays)  # doubling, not at once
    client.close()


def test_a_redelivered_message_that_had_finished_does_not_run_again(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Any]
) -> None:
    """Its worker died after storing SUCCESS and before the ack: settled, not run twice."""
    from taskd.backends import open_backend
    from taskd.brokers import open_broker
    from taskd.client import pending_state
    from taskd.wire import TaskResult

    config, client = client_for(driver_kind, namespace, tmp_path, worker=QUICK_RECOVERY)
    trace = tmp_path / "trace"
    (sent,) = client.publish([signature("record", str(trace), "once")])
    pid = os.fork()
    if pid == 0:  # a worker that takes the message, stores its result, and dies
        try:
            consumer = open_broker(client.config)
            assert consumer.fetch(namespace, max_messages=1, wait_s=5)
            done = pending_state(sent, GoTime.now()).with_changes(
                state=State.SUCCESS, results=(TaskResult("string", "once"),)
            )
            open_backend(client.config).set_state(done)  # its own connections, after fork
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    process = daemon(config, "--concurrency", "1")
    wait_until(lambda: process.events("task_already_finished"), 30, what="the redelivery")
    wait_until(lambda: client.broker.size(namespace) == 0, 10)
    assert runs(trace) == []  # never ran again
    assert client.result(sent.uuid).get(timeout=5) == "once"
    client.close()


def test_sigterm_during_an_outage_stops_without_waiting_for_the_kill(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    config, client = client_for(
        "redis", namespace, tmp_path, broker=private_redis.url,
        worker={**QUICK_RECOVERY, "shutdown_timeout": 60},
    )  # fmt: skip
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "t", 2.0)
    wait_until(lambda: "start:t" in runs(trace), 15, what="the task to start")
    private_redis.stop()  # its result cannot be stored now
    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0  # well before shutdown_timeout's KILL
    assert process.events("child_left_during_outage")
    assert not process.events("children_killed")
    private_redis.start()
    again = daemon(config, "--concurrency", "1")
    assert sent.wait(60).state is State.SUCCESS  # run again: nothing was lost
    assert again.process.poll() is None
    client.close()


def test_an_outage_longer_than_consumer_timeout_does_not_rerun_live_tasks(
    namespace: str, tmp_path: Path, daemon: Callable[..., Any], private_redis: PrivateRedis
) -> None:
    """After the outage every consumer's last beat is old, the live ones' too: nobody may
    reclaim by silence until it has been in touch for consumer_timeout itself."""
    config, client = client_for(
        "redis", namespace, tmp_path, broker=private_redis.url,
        worker={"heartbeat_interval": 0.5, "consumer_timeout": 2},
    )  # fmt: skip
    process = daemon(config, "--concurrency", "4")
    process.wait_ready(4)
    trace = tmp_path / "trace"
    sent = client.send("slow_record", str(trace), "long", 8.0)
    wait_until(lambda: "start:long" in runs(trace), 15, what="the task to start")
    private_redis.stop()
    time.sleep(4)  # the stimulus: an outage twice consumer_timeout long (not a wait for a result)
    private_redis.start()
    assert sent.wait(60).state is State.SUCCESS
    assert runs(trace) == ["start:long", "end:long"]  # once: never taken while it ran
    client.close()


@pytest.mark.parametrize("store", ["memcache", "redis"])
def test_a_result_too_large_for_the_backend_fails_once_with_the_reason(
    store: str, request: pytest.FixtureRequest, namespace: str, tmp_path: Path, daemon: Any
) -> None:
    """memcached keeps items of up to 1 MB, and a Redis with proto-max-bulk-len 1mb takes
    no longer string (its error failed the one script that stores a state with its ack: the
    child crashed, and again at each delivery): a task returning 2 MB runs once, ends in
    FAILURE saying why, and its OnError callback hears it, with no child lost."""
    if store == "memcache":
        request.getfixturevalue("memcached")
        config, client = client_for("memcache", namespace, tmp_path, worker=QUICK_RECOVERY)
    else:
        import redis

        server: PrivateRedis = request.getfixturevalue("private_redis")
        redis.Redis.from_url(server.url).config_set("proto-max-bulk-len", "1mb")
        config, client = client_for(
            "redis", namespace, tmp_path, broker=server.url, worker=QUICK_RECOVERY
        )
    process = daemon(config, "--concurrency", "1")
    process.wait_ready(1)
    trace, errors = tmp_path / "trace", tmp_path / "errors"
    # Alone (its state written with its ack), then with an OnError callback (its state first).
    alone = client.send("sized_record", str(trace), 2_000_000).wait(60)
    assert alone.state is State.FAILURE
    assert "its result could not be stored" in alone.error, alone.error
    on_error = signature("collect_error", str(errors))
    too_large = client.send("sized_record", str(trace), 2_000_000, on_error=[on_error])
    state = too_large.wait(60)
    assert state.state is State.FAILURE
    assert "its result could not be stored" in state.error, state.error
    assert wait_until(lambda: lines(errors), 20, what="the OnError callback") == [state.error]
    assert runs(trace) == ["sized", "sized"]  # once each: running again would be refused again
    assert client.send("sized_record", str(trace), 1_000).get(timeout=30) == "x" * 1_000
    assert not process.events("child_crashed")
    assert len(process.events("result_refused")) == 2
    client.close()
