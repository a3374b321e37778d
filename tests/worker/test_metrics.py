"""Prometheus metrics of a real ``taskd start`` (``metrics.listen``), on SQLite and Redis."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskd import __version__, signature
from taskd.config import split_host_port
from taskd.worker.metrics import Metrics
from tests.support.harness import (
    Daemon,
    PrivateRedis,
    client_for,
    config_data,
    free_port,
    run_cli,
    wait_until,
    write_config,
)
from tests.support.tasks import runs

# Daemons get TMPDIR=tmp_path: the fixture's kill -9 leaves their metrics directory behind.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Served = tuple[int, Path, Any]  # port, config path, Client


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def scrape_counted(port: int, tasks: int) -> Samples:
    """The first scrape that counts ``tasks`` runs of ``count``, in the counter and in the
    duration histogram alike."""

    def counted() -> Samples | None:
        samples = scrape(port)
        done = value(samples, "taskd_tasks_finished_total", task="count", state="SUCCESS")
        return samples if done == tasks else None

    samples = wait_until(counted, 10, what=f"{tasks} tasks counted")
    assert value(samples, "taskd_task_duration_seconds_count", task="count") == tasks
    assert value(samples, "taskd_task_duration_seconds_bucket", task="count", le="+Inf") == tasks
    return samples


def serving_metrics(kind: str, namespace: str, tmp_path: Path, **overrides: Any) -> Served:
    """A config of this test's serving metrics on a free loopback port: the port, the
    config's path and a Client of it."""
    port = free_port()
    metrics = {"listen": f"127.0.0.1:{port}"}
    config, client = client_for(kind, namespace, tmp_path, metrics=metrics, **overrides)
    return port, config, client


def test_metrics_sum_tasks_over_children(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    port, config, client = serving_metrics(driver_kind, namespace, tmp_path)
    with client:
        taskd = daemon(config, "--concurrency", "2", TMPDIR=str(tmp_path))
        taskd.wait_ready(2)
        # /healthz follows the pool (taskd_ready), which the supervisor logs once the last
        # child's signal has woken it: a moment after that child's child_ready.
        wait_until(lambda: taskd.events("taskd_ready"), 20, what="taskd_ready")
        results = client.send_many([signature("count", i) for i in range(100)])
        assert [r.get(timeout=60) for r in results] == [1] * 100

    samples = scrape_counted(port, 100)
    assert value(samples, "taskd_children_alive") == 2
    assert value(samples, "taskd_child_restarts_total") == 0
    assert value(samples, "taskd_build_info", version=__version__) == 1
    assert value(samples, "taskd_queue_messages", queue=namespace, kind="ready") == 0
    assert value(samples, "taskd_queue_messages", queue=namespace, kind="dead") == 0
    assert get(port, "/healthz") == (200, "ok\n")

    # A child that dies keeps its counts (its files stay); it is replaced and counted so.
    os.kill(next(iter(taskd.child_pids())), signal.SIGKILL)

    def replaced() -> Samples | None:
        samples = scrape(port)
        restarted = value(samples, "taskd_child_restarts_total") == 1
        return samples if restarted and value(samples, "taskd_children_alive") == 2 else None

    samples = wait_until(replaced, 20, what="the killed child replaced")
    assert value(samples, "taskd_tasks_finished_total", task="count", state="SUCCESS") == 100


def test_recycled_children_leave_their_counts_not_their_files(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    port, config, client = serving_metrics(
        driver_kind, namespace, tmp_path, worker={"max_tasks_per_child": 3}
    )
    with client:
        taskd = daemon(config, "--concurrency", "1", TMPDIR=str(tmp_path))
        wait_until(lambda: taskd.events("taskd_ready"), 20, what="taskd_ready")
        (listening,) = taskd.events("metrics_listening")
        directory = Path(listening["directory"])
        for i in range(20):  # one at a time: each child runs its 3, then a new one takes over
            assert client.send("count", i).get(timeout=30) == 1

    scrape_counted(port, 20)
    exited = {event["child_pid"] for event in taskd.events("child_exited")}
    assert len(exited) >= 6  # 20 tasks, 3 per child
    # The files of exited children are folded into one per kind as each exits.
    files = {path.name for path in directory.iterdir()}
    left = {name for name in files if any(name.endswith(f"_{pid}.db") for pid in exited)}
    assert not left, f"files of exited children: {sorted(left)}"
    assert {"counter_retired.db", "histogram_retired.db"} <= files


def test_healthz_is_503_while_draining_and_the_directory_goes(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    port, config, client = serving_metrics(driver_kind, namespace, tmp_path)
    trace = tmp_path / "trace"
    with client:
        taskd = daemon(config, "--concurrency", "1", TMPDIR=str(tmp_path))
        wait_until(lambda: taskd.events("taskd_ready"), 20, what="taskd_ready")
        (listening,) = taskd.events("metrics_listening")
        directory = Path(listening["directory"])
        assert directory.is_dir()
        client.send("slow_record", str(trace), "slow", 3.0)
        wait_until(lambda: "start:slow" in runs(trace), 10, what="the task started")
        assert get(port, "/healthz") == (200, "ok\n")
        taskd.signal(signal.SIGTERM)
        wait_until(lambda: get(port, "/healthz") == (503, "draining\n"), 5, what="503")
        assert taskd.wait(30) == 0
    assert not directory.exists()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0  # the listener went with the daemon


def test_healthz_is_503_until_every_child_reached_its_redis(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon], private_redis: PrivateRedis
) -> None:
    """Ready (``taskd_ready``, /healthz 200, systemd's READY=1) only once every child has
    reached its broker and backend: a daemon that starts while its Redis is down says
    "starting" until Redis comes up, then works."""
    private_redis.stop()
    port, config, client = serving_metrics("redis", namespace, tmp_path, broker=private_redis.url)
    taskd = daemon(config, "--concurrency", "2", TMPDIR=str(tmp_path))
    try:
        wait_until(lambda: len(taskd.events("backend_unavailable")) == 2, 20, what="both children")
    except AssertionError as exc:  # seen once in CI, not since: what the daemon said
        raise AssertionError(f"{exc}; the daemon's log:\n{taskd.log()}") from None
    assert get(port, "/healthz") == (503, "starting\n")
    assert taskd.events("child_ready") == taskd.events("taskd_ready") == []
    private_redis.start()
    wait_until(lambda: get(port, "/healthz") == (200, "ok\n"), 20, what="/healthz 200")
    (ready,) = taskd.events("taskd_ready")
    assert ready["children"] == 2 and ready["queue"] == namespace
    assert len(taskd.events("child_ready")) == 2
    with client:
        assert client.send("count", 1, 2).get(timeout=30) == 2


def listening_sockets(pid: int) -> set[str]:
    """Inodes of the TCP sockets process ``pid`` holds in LISTEN state."""
    held = {
        os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1]
        for fd in os.listdir(f"/proc/{pid}/fd")
        if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")
    }
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                listening.add(fields[9])
    return held & listening


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs of the test's own, for it to fill (mounting needs root, as CI runs)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(directory: Path) -> None:
    with open(directory / "filler", "wb") as filler, contextlib.suppress(OSError):  # full
        while True:
            filler.write(b"\0" * 65_536)
            filler.flush()


RECORD_TASKS = """
import os, sys
from taskd.brokers import Delivery
from taskd.client import signature
from taskd.wire import GoTime
from taskd.worker.execute import Kind, Outcome
from taskd.worker.jobs import Job
from taskd.worker.metrics import TaskMetrics

metrics = TaskMetrics()
for i in range(int(sys.argv[1])):
    sig = signature(f"task_{i:03d}", eta=GoTime.now())
    job = Job(Delivery("q", b"", 1, None), sig, object(), GoTime.now())
    metrics.record(job, Outcome(Kind.SUCCEEDED), 1.0)
    metrics.record(job, Outcome(Kind.RETRY, error="again"), 1.0)
"""


@pytest.mark.parametrize("tasks", [2, 40])
def test_a_childs_files_are_backed_ahead_of_what_they_hold(tasks: int, tmp_path: Path) -> None:
    """Each file of a child's is backed with disk blocks beyond the bytes its labels use (a
    write prometheus-client makes through its map never meets a page without one), and
    grows with the tasks it has run, not with those it has."""
    import struct
    import sys

    from taskd.worker.metrics_files import file_bytes

    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    command = [sys.executable, "-c", RECORD_TASKS, str(tasks)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    files = sorted(tmp_path.glob("*.db"))
    assert [f.name.split("_")[0] for f in files] == ["counter", "histogram"]
    for path in files:
        used = struct.unpack("i", path.read_bytes()[:4])[0]
        backed = path.stat().st_blocks * 512
        assert used <= path.stat().st_size <= backed, (path.name, used, path.stat())
        assert path.stat().st_size == file_bytes(max(tasks, 3))


def test_a_full_metrics_directory_costs_metrics_not_the_daemon(
    namespace: str, tmp_path: Path, small_tmpfs: Path, daemon: Callable[..., Daemon]
) -> None:
    """prometheus-client writes its files through a memory map: on a full filesystem (a full
    /tmp) the first write to a page it cannot back killed the child with SIGBUS, and the
    supervisor, folding that child's counts into a file of its own, with it. Now each
    process's files are backed when made, and a process without room records no metrics."""
    port, config, client = serving_metrics("sqlite", namespace, tmp_path)
    with client:
        taskd = daemon(config, "--concurrency", "2", TMPDIR=str(small_tmpfs))
        taskd.wait_ready(2)
        fill(small_tmpfs)
        sent = client.send_many([signature("count", i) for i in range(20)])
        assert [result.get(timeout=30) for result in sent] == [1] * 20
        scrape_counted(port, 20)  # a task is counted after its state is stored: all, first
        before = taskd.child_pids()
        os.kill(next(iter(before)), signal.SIGKILL)

        def replaced() -> bool:
            now = taskd.child_pids()
            return len(now) == 2 and now != before

        wait_until(replaced, 20, what="the child replaced")
        assert client.send("count", 1, 2).get(timeout=30) == 2
    assert taskd.process.poll() is None
    assert taskd.events("metrics_off_in_child")  # the new child: no room for its files
    samples = scrape(port)
    counted = value(samples, "taskd_tasks_finished_total", task="count", state="SUCCESS")
    assert counted in (20, 21)  # the last one too where the child that ran it records


def test_tasks_no_worker_has_count_under_one_label(
    namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    """Each unknown task name sent made a label of its own, in every child's files and in
    every scrape: a producer with a bug (or anyone who may send) could grow them without
    bound. They count under one label."""
    port, config, client = serving_metrics("sqlite", namespace, tmp_path)
    with client:
        taskd = daemon(config, "--concurrency", "2", TMPDIR=str(tmp_path))
        taskd.wait_ready(2)
        unknown = client.send_many([signature(f"no_such_task_{i}") for i in range(20)])
        for sent in unknown:
            assert sent.wait(timeout=30).state.value == "FAILURE"

        def counted() -> Samples | None:
            samples = scrape(port)
            done = value(
                samples, "taskd_tasks_finished_total", task="(unregistered)", state="FAILURE"
            )
            return samples if done == 20 else None

        samples = wait_until(counted, 10, what="20 unregistered tasks counted")
    tasks = {dict(labels).get("task") for _name, labels in samples}
    assert not [task for task in tasks if task and task.startswith("no_such_task_")]


def test_metrics_are_off_by_default(
    driver_kind: str, namespace: str, tmp_path: Path, daemon: Callable[..., Daemon]
) -> None:
    config, client = client_for(driver_kind, namespace, tmp_path)
    with client:
        taskd = daemon(config, "--concurrency", "2", TMPDIR=str(tmp_path))
        taskd.wait_ready(2)
        assert client.send("count", 1, 2).get(timeout=30) == 2
    assert taskd.events("metrics_listening") == []
    assert listening_sockets(taskd.pid) == set()
    for pid in taskd.child_pids():
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert b"PROMETHEUS_MULTIPROC_DIR=" not in environ


def test_a_busy_port_is_a_config_error(driver_kind: str, namespace: str, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config, client = client_for(
            driver_kind, namespace, tmp_path, metrics={"listen": f"127.0.0.1:{port}"}
        )
        client.close()
        done = run_cli(tmp_path, "taskd", "start", "-c", str(config), timeout_s=30)
    assert done.returncode == 2, done.stderr
    assert "metrics.listen" in done.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_a_bad_listen_address_is_a_config_error(
    driver_kind: str, namespace: str, tmp_path: Path
) -> None:
    data = config_data(driver_kind, namespace, tmp_path, metrics={"listen": "9808"})
    config = write_config(tmp_path, data)
    done = run_cli(tmp_path, "taskd", "check-config", "-c", str(config))
    assert done.returncode == 2, done.stderr
    assert "metrics.listen: must be host:port" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9808", ("127.0.0.1", 9808)), ("[::1]:80", ("::1", 80)), ("h:1", ("h", 1))],
)
def test_listen_addresses(text: str, expected: tuple[str, int]) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["9808", ":9808", "host:", "host:0", "host:65536", "h:x"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ValueError, match="must be host:port"):
        split_host_port(text)


def test_a_broker_error_leaves_out_the_queue_gauges_only(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    closed = free_port()  # nothing listens there
    config = make_config(
        "sqlite",
        broker=f"redis://127.0.0.1:{closed}/0",
        result_backend=f"sqlite://{tmp_path}/r.db",
        metrics={"listen": f"127.0.0.1:{free_port()}"},
    )
    metrics = Metrics(config)
    try:
        text = metrics.exposition().decode()
    finally:
        metrics.close()
    assert f'taskd_build_info{{version="{__version__}"}} 1.0' in text
    assert "taskd_children_alive 0.0" in text
    assert "taskd_queue_messages{" not in text
    assert not Path(metrics.directory).exists()
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_a_child_file_that_cannot_be_folded_leaves_the_supervisor_running(
    make_config: Callable[..., Any], tmp_path: Path
) -> None:
    """The supervisor folds an exited child's files as the child goes: a file it cannot
    read is logged and left, never the supervisor's end."""
    config = make_config("sqlite", metrics={"listen": f"127.0.0.1:{free_port()}"})
    metrics = Metrics(config)
    try:
        broken = Path(metrics.directory) / "counter_999999.db"
        broken.write_bytes(b"\xff\xff\xff\x7f" + bytes(12))  # says it holds 2 GB
        metrics.child_gone(999999, replaced=True)
        assert broken.exists()
        assert metrics.restarts == 1
    finally:
        metrics.close()
