"""Prometheus metrics: ``metrics.listen`` (off by default) serves ``/metrics`` and ``/healthz``.

The supervisor owns the listener (a daemon thread of its own) and a private directory for
prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``), made before any child
forks and removed at exit. Each child writes its task metrics to files of its own there
(mmapped: no round trip, no lock shared with other processes); a scrape sums them. When a
child exits, the supervisor adds its counts to those of the children that exited before it
(one file per kind) and removes its files, so counters never go back, and the directory
holds the files of the live children only, however many children were recycled. What only
the supervisor knows (children alive, restarts, the queue's depth, the build) comes from a
collector that reads it at scrape time.

- ``taskd_tasks_finished_total{task,state}``: SUCCESS, FAILURE or RETRY. A task no worker
  has registered counts as ``task="(unregistered)"``: its name came off the wire, and a label
  per name sent would let a faulty producer grow every child and every scrape without bound.
- ``taskd_task_duration_seconds{task}``: tasks that ran (not those settled unrun).
- ``taskd_task_queue_wait_seconds{task}``: received minus created; machinery's message
  carries no creation time, so this is observed for messages with an ETA (countdowns,
  retries), as received minus the ETA.
- ``taskd_task_retries_total{task}``, ``taskd_children_alive``, ``taskd_child_restarts_total``
- ``taskd_queue_messages{queue,kind}``: ready, delayed, dead, read from the broker when
  scraped, at most every QUEUE_CACHE_S and within QUEUE_TIMEOUT_S; a broker that fails
  or is slow leaves them out (logged), the rest of /metrics is served all the same.
- ``taskd_build_info{version}``: 1.

Import order matters: prometheus-client decides at import whether it writes to files, so
it is imported only once the directory is set (nothing is imported while metrics are off).
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from taskd import __version__, logs
from taskd.config import Config, split_host_port
from taskd.errors import ConfigError
from taskd.worker.execute import Kind, Outcome
from taskd.worker.metrics_files import RESERVED_FIRST_TASKS, file_bytes, reserved

if TYPE_CHECKING:
    from taskd.brokers import Broker
    from taskd.worker.jobs import Job
    from taskd.worker.supervisor import Supervisor

log = logs.get_logger("taskd.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUE_CACHE_S = 5.0  # queue depths are read from the broker at most this often...
QUEUE_TIMEOUT_S = 2.0  # ...and left out of a scrape when the broker takes longer
STATES = {Kind.SUCCEEDED: "SUCCESS", Kind.FAILED: "FAILURE", Kind.RETRY: "RETRY"}
UNREGISTERED = "(unregistered)"  # the task label of names no worker has registered
FOLDED_KINDS = ("counter", "histogram")  # the kinds of file a child writes
BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

# -- the children's side --------------------------------------------------------------------


class TaskMetrics:
    """What a child records after each task, to its own files in the shared directory, backed
    ahead of what they hold (``metrics_files``): for a few tasks when the child starts, and
    twice as many whenever a new task would need more; a child that finds no room records no
    more (logged), instead of dying of SIGBUS."""

    enabled = False  # set by the supervisor before it forks: then its children record

    def __init__(self) -> None:
        from prometheus_client import Counter, Histogram

        directory = os.environ[MULTIPROC_ENV]
        self._paths = [os.path.join(directory, f"{kind}_{os.getpid()}.db") for kind in FOLDED_KINDS]
        self._names: set[str] = set()  # task labels recorded
        self._backed = 0  # bytes of each file backed
        self.off = not self._back(RESERVED_FIRST_TASKS)
        self.finished = Counter(
            "taskd_tasks_finished", "Tasks finished", ["task", "state"], registry=None
        )
        self.duration = Histogram(
            "taskd_task_duration_seconds",
            "Task run time",
            ["task"],
            registry=None,
            buckets=BUCKETS_S,
        )
        self.queue_wait = Histogram(
            "taskd_task_queue_wait_seconds",
            "Received minus created (the ETA, for messages that have one)",
            ["task"],
            registry=None,
            buckets=BUCKETS_S,
        )
        self.retries = Counter("taskd_task_retries", "Retries sent", ["task"], registry=None)

    def record(self, job: Job, outcome: Outcome, duration_ms: float) -> None:
        name = job.sig.name if job.task is not None else UNREGISTERED
        if self.off or (name not in self._names and not self._back(len(self._names) + 1)):
            self.off = True
            return
        self._names.add(name)
        self.finished.labels(name, STATES[outcome.kind]).inc()
        if duration_ms > 0:  # 0: settled without running
            self.duration.labels(name).observe(duration_ms / 1000)
        if job.sig.eta is not None:
            wait_s = job.received_at.to_unix() - job.sig.eta.to_unix()
            self.queue_wait.labels(name).observe(max(wait_s, 0.0))
        if outcome.kind is Kind.RETRY:
            self.retries.labels(name).inc()

    def _back(self, tasks: int) -> bool:
        """Files backed for the labels of ``tasks`` tasks: False, logged, without room."""
        size = file_bytes(tasks)
        if size <= self._backed:
            return True
        size = max(size, 2 * self._backed)
        if not all(reserved(path, size) for path in self._paths):
            log.error(
                "metrics_off_in_child",
                reason="no room",
                directory=os.path.dirname(self._paths[0]),
                needs=size,
            )
            return False
        self._backed = size
        return True


def task_metrics() -> TaskMetrics | None:
    """For a child: its recorder, or None when the daemon serves no metrics, or where the
    directory has no room for its files (logged)."""
    if not TaskMetrics.enabled:
        return None
    recorder = TaskMetrics()
    return None if recorder.off else recorder


# -- the supervisor's side ------------------------------------------------------------------


class Metrics:
    """The supervisor's listener; the supervisor ticks it and tells it of children's exits."""

    def __init__(self, config: Config) -> None:
        self.listen = config.metrics.listen
        host, port = split_host_port(self.listen)
        self.directory = tempfile.mkdtemp(prefix="taskd-metrics-")
        os.environ[MULTIPROC_ENV] = self.directory  # before prometheus_client is imported
        try:
            self.server = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            shutil.rmtree(self.directory, ignore_errors=True)
            os.environ.pop(MULTIPROC_ENV, None)
            reason = exc.strerror or str(exc)
            raise ConfigError(
                "metrics.listen", f"cannot listen on {self.listen}: {reason}", config.source
            ) from None
        TaskMetrics.enabled = True
        from prometheus_client import CollectorRegistry

        self.registry = CollectorRegistry()
        self._files = threading.Lock()  # a scrape reads them all, or a child's are being folded
        self._retired: dict[str, tuple[Any, dict[str, float]]] = {}  # kind: file, its counts
        self.registry.register(_ChildrenFiles(self.directory, self._files))
        self.registry.register(_PoolCollector(self))
        self.server.daemon_threads = True
        self.server.metrics = self  # type: ignore[attr-defined]
        self.alive, self.restarts, self.draining, self.ready = 0, 0, False, False
        self.config, self.queue = config, config.default_queue
        self._depth: dict[tuple[str, str], int] = {}
        self._depth_at = -QUEUE_CACHE_S
        self._depth_lock = threading.Lock()
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="taskd-metrics-broker")
        self._broker: Broker | None = None
        self._broker_config: Config | None = None
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="taskd-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics_listening", listen=self.listen, directory=self.directory)

    @classmethod
    def start(cls, config: Config) -> Metrics | None:
        """The listener ``metrics.listen`` asks for, or None; ConfigError if it cannot bind."""
        return cls(config) if config.metrics.listen else None

    def tick(self, pool: Supervisor) -> None:
        self.alive = sum(1 for child in pool.children.values() if not child.asked_to_stop)
        self.draining, self.ready = pool.draining, pool.service.ready
        self.config, self.queue = pool.config, pool.queue

    def child_gone(self, pid: int, *, replaced: bool) -> None:
        from prometheus_client import multiprocess

        with self._files:
            multiprocess.mark_process_dead(pid, self.directory)
            try:
                self._fold(pid)
            except Exception as exc:  # never the supervisor's end (its files stay, read as such)
                log.warning("metrics_fold_failed", child_pid=pid, error=str(exc))
        self.restarts += replaced

    def _fold(self, pid: int) -> None:
        """Add the counts of the child ``pid`` (exited) to those of the children that exited
        before it, in one file per kind, and remove its own files. Counters and histograms
        only: the children write no gauges."""
        from prometheus_client.mmap_dict import MmapedDict

        for kind in FOLDED_KINDS:
            path = os.path.join(self.directory, f"{kind}_{pid}.db")
            try:
                entries = MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:  # it finished no task
                continue
            if kind not in self._retired:
                retired = os.path.join(self.directory, f"{kind}_retired.db")
                size = os.path.getsize(path)  # a child's labels, as the retired ones
                if not reserved(retired, size):
                    raise OSError(errno.ENOSPC, f"no room for {size} bytes", retired)
                self._retired[kind] = (MmapedDict(retired), {})
            into, counts = self._retired[kind]
            for key, value, *_ in entries:  # a histogram's buckets are not cumulative here
                counts[key] = counts.get(key, 0.0) + value
                into.write_value(key, counts[key], 0.0)
            os.remove(path)

    def in_child(self) -> None:
        """In a freshly forked child: let go of the listening socket."""
        self.server.socket.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._reader.submit(self._close_broker)
        self._reader.shutdown(wait=False)
        with self._files:
            for retired, _counts in self._retired.values():
                retired.close()
        shutil.rmtree(self.directory, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == self.directory:
            del os.environ[MULTIPROC_ENV]
        TaskMetrics.enabled = False

    # -- what a scrape reads ----------------------------------------------------------------

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    def queue_depth(self) -> dict[tuple[str, str], int]:
        with self._depth_lock:
            if time.monotonic() - self._depth_at >= QUEUE_CACHE_S:
                future = self._reader.submit(self._read_depth, self.config, self.queue)
                try:
                    self._depth = future.result(timeout=QUEUE_TIMEOUT_S)
                except Exception as exc:
                    log.warning("metrics_queue_depth_failed", error=str(exc) or type(exc).__name__)
                    self._depth = {}
                self._depth_at = time.monotonic()
            return dict(self._depth)

    def _read_depth(self, config: Config, queue: str) -> dict[tuple[str, str], int]:
        from taskd.brokers import open_broker
        from taskd.brokers.base import NotSupported

        if self._broker is None or self._broker_config is not config:
            self._close_broker()
            self._broker, self._broker_config = open_broker(config), config
        broker, depth = self._broker, {}
        cap = config.worker.dead_letters_max or 100_000
        readers = {
            "ready": lambda: broker.size(queue),
            "delayed": lambda: broker.delayed(queue),
            "dead": lambda: len(broker.dead_letters(queue, cap)),
        }
        try:
            for kind, read in readers.items():
                try:
                    depth[(queue, kind)] = read()
                except NotSupported:
                    continue
        except Exception:
            self._close_broker()  # opened afresh next time
            raise
        return depth

    def _close_broker(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            try:
                broker.close()
            except Exception as exc:
                log.debug("metrics_broker_close_failed", error=str(exc))


class _ChildrenFiles:
    """The children's metrics, from their files, read while no child's are being folded."""

    def __init__(self, directory: str, lock: threading.Lock) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._files, self._lock = MultiProcessCollector(None, path=directory), lock

    def collect(self) -> Iterator[Any]:
        with self._lock:
            return iter(list(self._files.collect()))


class _PoolCollector:
    """What only the supervisor knows, read at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        m = self.metrics
        yield GaugeMetricFamily("taskd_children_alive", "Children running", value=m.alive)
        yield CounterMetricFamily(
            "taskd_child_restarts", "Children replaced after they exited", value=m.restarts
        )
        depth = GaugeMetricFamily(
            "taskd_queue_messages", "Messages of the queue, by kind", labels=["queue", "kind"]
        )
        for (queue, kind), count in m.queue_depth().items():
            depth.add_metric([queue, kind], count)
        yield depth
        info = GaugeMetricFamily("taskd_build_info", "taskd's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        metrics: Metrics = self.server.metrics  # type: ignore[attr-defined]
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            try:
                self._send(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            except Exception as exc:
                log.exception("metrics_scrape_failed")
                self._send(500, f"{exc}\n".encode(), "text/plain; charset=utf-8")
        elif path == "/healthz":
            status, text = 200, b"ok\n"
            if metrics.draining:
                status, text = 503, b"draining\n"
            elif not metrics.ready:  # not every child has reached its broker and backend yet
                status, text = 503, b"starting\n"
            self._send(status, text, "text/plain; charset=utf-8")
        else:
            self._send(404, b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every few seconds is not worth a log line
