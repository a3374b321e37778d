"""Throughput and latency of taskd against a bare redis-py loop, measured side by side.

    .venv/bin/python benchmarks/bench.py [--broker URL] [--backend URL] [--tasks 10000]

    .venv/bin/python benchmarks/bench.py --broker amqp://guest:guest@127.0.0.1:5672/ \
        --backend redis://127.0.0.1:6379/0

Prints, for the chosen broker and backend:
- end-to-end tasks/s: N no-op tasks through `taskd start` with 2 children, from the first
  enqueue until the last result is stored (results stored, at-least-once);
- enqueue rate of the client;
- round-trip latency p50/p99 of one task at a time (send, run, result read back), and the
  CPU each round trip costs the client, the daemon's processes and Redis (Linux's /proc and
  Redis's INFO; on Redis, beside a bare loop's: LPUSH, BLPOP, LPUSH of the reply, BLPOP);
- Redis round trips and commands per task, from Redis's own counters (Redis only);
- the bare loop: one producer RPUSHing small JSON messages, 2 consumer processes BLPOPing,
  decoding and INCRing a counter, one message per round trip; and taskd's ratio to it. On
  AMQP, a bare pika loop instead: persistent messages each confirmed, consumers with
  prefetch 32 acking each message.

Figures only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from taskd.client import Client, signature  # noqa: E402
from taskd.config import load_config  # noqa: E402
from taskd.wire import State, new_id  # noqa: E402

DEFAULT_URL = "redis://127.0.0.1:6379/0"


# -- the baseline ---------------------------------------------------------------------------


def _bare_consumer(url: str, queue: str, counter: str, total: int) -> None:
    import redis

    client = redis.Redis.from_url(url)
    while True:
        item = client.blpop([queue], timeout=1)
        if item is None:
            if int(client.get(counter) or 0) >= total:
                return
            continue
        json.loads(item[1])
        if client.incr(counter) >= total:
            return


def forked(run: Callable[[], None], count: int) -> list[int]:
    """The pids of ``count`` forked processes, each running ``run`` and then exiting."""
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            try:
                run()
            finally:
                os._exit(0)
        pids.append(pid)
    return pids


def _timed_loop(
    consume: Callable[[], None],
    publish: Callable[[int], None],
    counter: str,
    total: int,
    consumers: int,
    counter_url: str = DEFAULT_URL,
) -> float:
    """Messages per second: ``consumers`` forked processes run ``consume`` (each INCRs
    ``counter`` in Redis per message) while this one calls ``publish(i)`` ``total`` times;
    timed from the first publish until the counter reaches ``total``."""
    import redis

    done = redis.Redis.from_url(counter_url)
    pids = forked(consume, consumers)
    time.sleep(0.3)  # consumers connected and blocking
    started = time.perf_counter()
    for i in range(total):
        publish(i)
    while int(done.get(counter) or 0) < total:
        time.sleep(0.002)
    elapsed = time.perf_counter() - started
    for pid in pids:
        os.waitpid(pid, 0)
    done.delete(counter)
    return total / elapsed


def _body(i: int) -> str:
    return json.dumps({"id": i, "name": "noop", "args": []})


def process_cpu_s(pgid: int | None = None, pids: tuple[int, ...] = ()) -> float:
    """CPU seconds (user and system) of the processes in group ``pgid`` and of ``pids``."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(entry.name) in pids or (pgid is not None and int(fields[2]) == pgid):
            total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def redis_cpu_s(client: Any) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


class RoundTrips:
    """p50/p99 of ``samples`` round trips of ``call`` and the CPU each cost (µs): this
    process, the ``pgid`` process group or ``pids`` (the consumers), and Redis."""

    def __init__(
        self, redis_url: str | None, pgid: int | None = None, pids: tuple[int, ...] = ()
    ) -> None:
        import redis

        self.redis = redis.Redis.from_url(redis_url) if redis_url else None
        self.pgid, self.pids = pgid, pids

    def measure(self, call: Callable[[], None], samples: int) -> dict[str, float]:
        latencies = []
        redis_before = redis_cpu_s(self.redis) if self.redis else 0.0
        workers_before, client_before = process_cpu_s(self.pgid, self.pids), time.process_time()
        for _ in range(samples):
            started = time.perf_counter()
            call()
            latencies.append((time.perf_counter() - started) * 1000)
        client_s = time.process_time() - client_before
        workers_s = process_cpu_s(self.pgid, self.pids) - workers_before
        redis_s = (redis_cpu_s(self.redis) - redis_before) if self.redis else math.nan
        return {
            "p50_ms": statistics.median(latencies),
            "p99_ms": statistics.quantiles(latencies, n=100)[98],
            "client_us": client_s / samples * 1e6,
            "workers_us": workers_s / samples * 1e6,
            "redis_us": redis_s / samples * 1e6,
        }


def _bare_replier(url: str, queue: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    while True:
        _key, raw = client.blpop([queue])
        message = json.loads(raw)
        if message is None:  # told to stop
            return
        client.lpush(message["reply"], json.dumps(message["id"]))  # the task's result


def bare_round_trips(url: str, samples: int, consumers: int) -> dict[str, float]:
    """The bare loop one message at a time, its consumer LPUSHing a reply the sender
    BLPOPs (as taskd runs a no-op task): p50/p99 and CPU per round trip, as for taskd."""
    import redis

    queue = f"taskd-bench-bare-{secrets.token_hex(4)}"
    client = redis.Redis.from_url(url)
    pids = forked(lambda: _bare_replier(url, queue), consumers)
    sent = iter(range(1 << 62))

    def call() -> None:
        i = next(sent)
        reply = f"{queue}:reply:{i}"
        client.lpush(queue, json.dumps({"id": i, "reply": reply}))
        if client.blpop([reply], timeout=10) is None:
            raise SystemExit("the bare loop's consumers did not answer")

    try:
        for _ in range(50):  # warm
            call()
        return RoundTrips(url, pids=tuple(pids)).measure(call, samples)
    finally:
        for _ in pids:
            client.rpush(queue, "null")
        for pid in pids:
            os.waitpid(pid, 0)
        client.delete(queue)


def bare_loop(url: str, total: int, consumers: int) -> float:
    """Messages per second of the plain redis-py loop."""
    import redis

    ns = f"taskd-bench-bare-{secrets.token_hex(4)}"
    queue, counter = f"{ns}:queue", f"{ns}:done"
    client = redis.Redis.from_url(url)
    rate = _timed_loop(
        lambda: _bare_consumer(url, queue, counter, total),
        lambda i: client.rpush(queue, _body(i)),
        counter,
        total,
        consumers,
        counter_url=url,
    )
    client.delete(queue)
    return rate


def _pika_consumer(url: str, queue: str, counter: str, total: int) -> None:
    import pika
    import redis

    done = redis.Redis.from_url(DEFAULT_URL)
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=32)
    for method, _properties, body in channel.consume(queue, inactivity_timeout=1):
        if method is None:
            if int(done.get(counter) or 0) >= total:
                break
            continue
        json.loads(body)
        channel.basic_ack(method.delivery_tag)
        if done.incr(counter) >= total:
            break
    connection.close()


def bare_pika_loop(url: str, total: int, consumers: int) -> float:
    """Messages per second of a plain pika loop: persistent messages, a publisher confirm
    each, manual acks; completion counted in Redis as in the Redis loop."""
    import pika

    ns = f"taskd-bench-bare-{secrets.token_hex(4)}"
    counter = f"{ns}:done"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.queue_declare(ns, durable=True)
    channel.confirm_delivery()
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    rate = _timed_loop(
        lambda: _pika_consumer(url, ns, counter, total),
        lambda i: channel.basic_publish("", ns, _body(i), properties),
        counter,
        total,
        consumers,
    )
    channel.queue_delete(ns)
    connection.close()
    return rate


def delete_amqp(url: str, ns: str) -> None:
    """What the daemon declared for the run: its queue, dead letters, delay ladder."""
    import pika

    from taskd.brokers.amqp.delays import Ladder

    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    ladder = Ladder(ns)
    finals = [ladder.final(key) for key in (ns, f"{ns}.task")]
    for queue in [ns, f"taskd.dead.{ns}", *ladder.queues(), *finals]:
        channel.queue_delete(queue)
    for exchange in [ns, *Ladder(ns).exchanges()]:
        channel.exchange_delete(exchange)
    connection.close()


# -- taskd ----------------------------------------------------------------------------------


class Stats:
    """Redis's counters of commands and read events (about one per round trip)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def snapshot(self) -> tuple[int, int]:
        info = self.client.info("stats")
        return int(info["total_commands_processed"]), int(info["total_reads_processed"])


def start_daemon(client: Client, config: Path, children: int, log: Path) -> subprocess.Popen[bytes]:
    """Start taskd and return once it has run a few tasks (warm, all children up)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "taskd"),
            "start",
            "-c",
            str(config),
            "--concurrency",
            str(children),
        ],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env=env,
        start_new_session=True,
    )
    warmup = [client.send("noop") for _ in range(10 * children)]
    try:
        for result in warmup:
            result.get(timeout=30)
    except Exception as exc:
        process.kill()
        raise SystemExit(f"taskd did not start ({exc}):\n{log.read_text()}") from None
    return process


def wait_all_done(client: Client, ids: list[str], timeout_s: float) -> int:
    """Poll until every task is SUCCESS; returns how many backend reads that took."""
    cursor, reads = 0, 0
    deadline = time.monotonic() + timeout_s
    while cursor < len(ids):
        window = ids[cursor : cursor + 500]
        states = client.backend.get_states(window)
        reads += 1
        for state in states:
            if state is None or state.state is not State.SUCCESS:
                if state is not None and state.is_completed:
                    raise SystemExit(f"task {state.task_uuid} ended {state.state}: {state.error}")
                break
            cursor += 1
        else:
            continue
        if time.monotonic() > deadline:
            raise SystemExit(f"only {cursor}/{len(ids)} tasks done after {timeout_s}s")
        time.sleep(0.005)
    return reads


def run_taskd(args: argparse.Namespace) -> dict[str, Any]:
    ns = f"taskd-bench-{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        data = {
            "broker": args.broker,
            "result_backend": args.backend,
            "default_queue": ns,
            "results_expire_in": 600,
            "imports": ["benchmarks.tasks"],
            "log_level": args.log_level,
            "redis": {"key_prefix": f"{ns}:", "delayed_tasks_key": f"{ns}:delayed"},
            "amqp": {"exchange": ns, "binding_key": f"{ns}.task"},
            "worker": {"prefetch": args.prefetch},
        }
        for key in ("broker", "result_backend"):
            if data[key].startswith("sqlite"):
                data[key] = f"sqlite://{tmp_path}/bench.db?synchronous=normal"
        config_path = tmp_path / "bench.yml"
        config_path.write_text(yaml.safe_dump(data))
        client = Client(load_config(config_path))
        redis_stats = Stats(args.broker) if args.broker.startswith("redis") else None
        process = start_daemon(client, config_path, args.children, tmp_path / "taskd.log")
        try:
            before = redis_stats.snapshot() if redis_stats else None
            sigs = [signature("noop", task_id=new_id()) for _ in range(args.tasks)]
            started = time.perf_counter()
            for i in range(0, len(sigs), args.batch):
                client.publish(sigs[i : i + args.batch])
            enqueued = time.perf_counter()
            polls = wait_all_done(client, [s.uuid for s in sigs], timeout_s=600)
            finished = time.perf_counter()
            after = redis_stats.snapshot() if redis_stats else None

            redis_urls = [url for url in (args.broker, args.backend) if url.startswith("redis")]
            redis_url = redis_urls[0] if redis_urls else None
            round_trips = RoundTrips(redis_url, pgid=process.pid).measure(
                lambda: client.send("noop").get(timeout=10), args.latency_samples
            )
        finally:
            process.terminate()
            process.wait(timeout=60)
            if redis_stats:
                keys = list(redis_stats.client.scan_iter(match=f"{ns}*", count=1000))
                ids = [s.uuid for s in sigs]
                for chunk in (keys, *(ids[i : i + 1000] for i in range(0, len(ids), 1000))):
                    if chunk:
                        redis_stats.client.delete(*chunk)
            if args.broker.startswith("amqp"):
                delete_amqp(args.broker, ns)
            client.close()
    result: dict[str, Any] = {
        "tasks_per_s": args.tasks / (finished - started),
        "enqueue_per_s": args.tasks / (enqueued - started),
        "round_trips": round_trips,
    }
    if before and after:
        producer_rts = 2 * -(-args.tasks // args.batch)
        result["redis_commands_per_task"] = (after[0] - before[0]) / args.tasks
        result["worker_round_trips_per_task"] = (
            after[1] - before[1] - producer_rts - polls
        ) / args.tasks
    return result


def print_round_trips(who: str, figures: dict[str, float]) -> None:
    redis_us = figures["redis_us"]
    redis = "" if math.isnan(redis_us) else f", Redis {redis_us:.0f} µs"
    print(
        f"{who + ' round trip':24s}p50 {figures['p50_ms']:.2f} ms   p99 {figures['p99_ms']:.2f} ms"
        f"   CPU per round trip: client {figures['client_us']:.0f} µs, workers"
        f" {figures['workers_us']:.0f} µs{redis}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--broker", default=DEFAULT_URL)
    parser.add_argument("--backend", default=None, help="default: the broker URL")
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--children", type=int, default=2)
    parser.add_argument(
        "--prefetch",
        type=int,
        default=0,
        help="worker.prefetch of the daemon (0: its default, auto)",
    )
    parser.add_argument(
        "--batch", type=int, default=100, help="tasks the producer sends per publish"
    )
    parser.add_argument("--log-level", default="warning", help="the daemon's log_level")
    parser.add_argument("--latency-samples", type=int, default=300)
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    args.backend = args.backend or args.broker

    print(
        f"broker {args.broker}  backend {args.backend}  tasks {args.tasks}"
        f"  children {args.children}  prefetch {args.prefetch}  batch {args.batch}"
        f"  log_level {args.log_level}"
    )
    taskd = run_taskd(args)
    print(
        f"taskd end-to-end        {taskd['tasks_per_s']:8.0f} tasks/s"
        " (results stored, at-least-once)"
    )
    print(f"taskd enqueue           {taskd['enqueue_per_s']:8.0f} tasks/s")
    print_round_trips("taskd", taskd["round_trips"])
    if "worker_round_trips_per_task" in taskd:
        print(
            f"redis per task          {taskd['worker_round_trips_per_task']:.2f}"
            f" worker round trips, {taskd['redis_commands_per_task']:.2f} commands (all clients)"
        )
    if not args.skip_baseline and args.broker.startswith("redis"):
        print_round_trips("bare loop", bare_round_trips(args.broker, args.latency_samples, 2))
        bare = bare_loop(args.broker, args.tasks, args.children)
        print(f"bare redis-py loop      {bare:8.0f} msgs/s (RPUSH / BLPOP + json + INCR)")
        print(f"taskd / bare loop       {taskd['tasks_per_s'] / bare:8.2f}x")
    if not args.skip_baseline and args.broker.startswith("amqp"):
        bare = bare_pika_loop(args.broker, args.tasks, args.children)
        print(f"bare pika loop          {bare:8.0f} msgs/s (confirmed publish / consume + ack)")
        print(f"taskd / bare loop       {taskd['tasks_per_s'] / bare:8.2f}x")


if __name__ == "__main__":
    main()
