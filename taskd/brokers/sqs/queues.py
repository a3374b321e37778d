"""Reaching SQS: the broker URL, the boto3 client, errors, and each queue's URL and kind.

Broker URLs:
- ``https://sqs.<region>.amazonaws.com/<account>`` (machinery's form); a queue's URL is the
  broker URL + "/" + the queue name, and the region comes from the host.
- ``sqs://host:port/<account>`` (plain HTTP) and ``sqs+https://host:port/<account>``: any
  SQS-compatible service at that endpoint (ElasticMQ, moto, LocalStack...).

Credentials come from boto3's usual chain (environment, profile, instance role); they are
never part of the URL and never logged.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from taskd import logs
from taskd.config import Config, redact_url
from taskd.errors import BrokerError, BrokerUnavailable, ConfigError

log = logs.get_logger("taskd.sqs")
T = TypeVar("T")
DRIVER = "sqs"
FIFO_SUFFIX = ".fifo"
DEAD_PREFIX = "taskd-dead-"  # + the queue's name: where taskd sets rejected messages aside
MAX_NAME = 80  # SQS's longest queue name, ".fifo" included
NAME_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+")
MIN_RETENTION_S = 60  # SQS's bounds of a queue's MessageRetentionPeriod
MAX_RETENTION_S = 1_209_600  # (14 days)
FALLBACK_REGION = "us-east-1"  # for a custom endpoint when nothing else names a region
CONNECT_TIMEOUT_S = 5.0
# SQS's own transient refusals: retried by the worker like a lost connection.
TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "RequestThrottled",
        "ServiceUnavailable",
        "InternalError",
        "InternalFailure",
        "KMS.ThrottlingException",
        "AWS.SimpleQueueService.QueueDeletedRecently",  # created again within 60 s of a delete
    }
)
MISSING_QUEUE_CODES = frozenset(
    {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist", "NonExistentQueue"}
)


@dataclass(frozen=True, slots=True)
class Endpoint:
    base: str  # queue URLs are base + "/" + name
    endpoint_url: str | None  # None: AWS's own endpoint for the region
    region: str | None


def endpoint_of(url: str, config: Config) -> Endpoint:
    """The endpoint of a broker URL; ConfigError naming ``broker`` when it is not one."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    account = parts.path.strip("/")

    def bad(why: str) -> ConfigError:
        return ConfigError("broker", f"{redact_url(url)!r}: {why}", config.source)

    try:
        port = parts.port
    except ValueError:
        raise bad("the port is not a number from 1 to 65535") from None
    host = parts.hostname or ""
    if not host:
        raise bad("names no host")
    if not account or "/" in account:
        raise bad(
            "the path must be the account id alone, as in https://sqs.<region>.amazonaws.com/<account>"
        )
    if parts.username or parts.password:
        raise bad("credentials do not go in the URL: boto3 reads them from its usual chain")
    region = config.sqs.region or None
    if scheme == "https":
        labels = host.split(".")
        if labels[0] != "sqs" or len(labels) < 3:
            raise bad(
                "an https broker URL is an SQS queue URL: https://sqs.<region>.amazonaws.com/<account>"
            )
        region = region or labels[1]
        endpoint = (
            None
            if host.endswith(".amazonaws.com") or host.endswith(".amazonaws.com.cn")
            else f"https://{parts.netloc}"
        )
        return Endpoint(f"https://{parts.netloc}/{account}", endpoint, region)
    if scheme in ("sqs", "sqs+https"):
        web = "https" if scheme == "sqs+https" else "http"
        netloc = host if port is None else f"{host}:{port}"
        return Endpoint(f"{web}://{netloc}/{account}", f"{web}://{netloc}", region)
    raise bad(
        "not an SQS URL (https://sqs.<region>.amazonaws.com/<account>, sqs://host:port/<account>)"
    )


def new_client(endpoint: Endpoint, read_timeout_s: float) -> Any:
    """A boto3 SQS client of this process's own (clients are not shared across fork)."""
    import boto3
    import botocore.config

    session = boto3.session.Session()
    region = endpoint.region or session.region_name
    if region is None and endpoint.endpoint_url is not None:
        region = FALLBACK_REGION
    settings = botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT_S,
        read_timeout=read_timeout_s,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=4,  # the fetching thread, the visibility keeper, taskctl
    )
    return session.client(
        "sqs", region_name=region, endpoint_url=endpoint.endpoint_url, config=settings
    )


def error_code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


@contextmanager
def translated(queue: str | None, *, unsent: bool = False) -> Iterator[None]:
    """botocore's errors as taskd's: connection trouble, throttling and 5xx as
    BrokerUnavailable (the worker waits and retries), the rest as BrokerError; ``unsent``:
    nothing in the block sends a message."""
    import botocore.exceptions as aws

    try:
        yield
    except aws.NoCredentialsError as exc:
        raise BrokerError(
            DRIVER, f"{exc} (set AWS credentials: environment, profile or role)", queue
        ) from exc
    except aws.ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        kind = (
            BrokerUnavailable
            if error_code(exc) in TRANSIENT_CODES or status >= 500
            else BrokerError
        )
        raise kind(DRIVER, str(exc), queue, unsent=unsent) from exc
    except aws.BotoCoreError as exc:  # endpoint unreachable, timeouts, connection closed
        # Could not connect: nothing was sent.
        unsent = unsent or isinstance(exc, aws.EndpointConnectionError | aws.ConnectTimeoutError)
        raise BrokerUnavailable(
            DRIVER, f"{type(exc).__name__}: {exc}", queue, unsent=unsent
        ) from exc


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    url: str
    fifo: bool
    visibility_s: int  # what receives ask for
    redrive_target: str | None  # the URL of the dead-letter queue of its redrive policy


class Queues:
    """Each queue's URL and attributes, read once per process (created where allowed)."""

    def __init__(self, client: Callable[[], Any], endpoint: Endpoint, config: Config) -> None:
        self._client = client
        self._endpoint = endpoint
        self._create = config.sqs.create_queues
        visibility = config.sqs.receive_visibility_timeout
        self.visibility_s = visibility or max(1, round(config.lease.consumer_timeout_s))
        self.dead_retention_s = dead_retention_s(config.worker.dead_letters_max_age)
        self._known: dict[str, Queue] = {}
        self._lock = threading.Lock()

    def url_of(self, name: str) -> str:
        return f"{self._endpoint.base}/{name}"

    def get(self, name: str, *, create: bool = True) -> Queue | None:
        """The queue ``name``; None if it does not exist (and is not to be created)."""
        known = self._known.get(name)
        if known is not None:
            return known
        if (reason := name_error(name)) is not None:  # a message's RoutingKey, say
            raise BrokerError(DRIVER, reason, name)
        with self._lock, translated(name, unsent=True):
            queue = self._read(name)
            if queue is None and create and self._create:
                self._client().create_queue(QueueName=name, Attributes=self._attributes(name))
                queue = self._read(name)
            if queue is not None:
                self._known[name] = queue
            elif create:
                raise BrokerError(
                    DRIVER, f"no such queue: {self.url_of(name)} (sqs.create_queues is off)", name
                )
            return queue

    @contextmanager
    def using(self, queue: Queue) -> Iterator[None]:
        """``translated``, for a call on ``queue`` that a deleted queue refuses whole (a send,
        a receive): the queue is read, or created, again by the next call, and the error is
        an outage in which nothing was sent."""
        try:
            with translated(queue.name):
                yield
        except BrokerError as exc:
            if exc.__cause__ is None or error_code(exc.__cause__) not in MISSING_QUEUE_CODES:
                raise
            self._known.pop(queue.name, None)
            raise BrokerUnavailable(
                DRIVER, f"{exc.__cause__} (deleted since it was read)", queue.name, unsent=True
            ) from exc

    def _read(self, name: str) -> Queue | None:
        import json

        import botocore.exceptions as aws

        url = self.url_of(name)
        try:
            found = (
                self._client()
                .get_queue_attributes(
                    QueueUrl=url,
                    AttributeNames=["FifoQueue", "RedrivePolicy", "MessageRetentionPeriod"],
                )
                .get("Attributes", {})
            )
        except aws.ClientError as exc:
            if error_code(exc) in MISSING_QUEUE_CODES:
                return None
            raise
        retention = str(self.dead_retention_s)
        if name.startswith(DEAD_PREFIX) and found.get("MessageRetentionPeriod") != retention:
            self._set_retention(name, url, retention)
        target = None
        if found.get("RedrivePolicy"):
            arn = json.loads(found["RedrivePolicy"]).get("deadLetterTargetArn", "")
            target = self._url_of_arn(arn)
        fifo = found.get("FifoQueue") == "true" or name.endswith(FIFO_SUFFIX)
        return Queue(name, url, fifo, self.visibility_s, target)

    def _url_of_arn(self, arn: str) -> str | None:
        """arn:aws:sqs:<region>:<account>:<name> -> that queue's URL at this endpoint."""
        parts = arn.split(":")
        if len(parts) != 6:
            return None
        base = self._endpoint.base.rsplit("/", 1)[0]
        return f"{base}/{parts[4]}/{parts[5]}"

    def _set_retention(self, name: str, url: str, retention: str) -> None:
        """A dead queue made before (by an older taskd, or under another
        ``worker.dead_letters_max_age``) keeps its messages as long as configured now; where
        SQS refuses (permissions), that is logged and the queue used as it is."""
        import botocore.exceptions as aws

        try:
            self._client().set_queue_attributes(
                QueueUrl=url, Attributes={"MessageRetentionPeriod": retention}
            )
        except aws.ClientError as exc:
            log.warning("dead_letter_queue_not_capped", queue=name, error=str(exc))

    def _attributes(self, name: str) -> dict[str, str]:
        attributes = {"VisibilityTimeout": str(self.visibility_s)}
        if name.startswith(DEAD_PREFIX):
            attributes["MessageRetentionPeriod"] = str(self.dead_retention_s)
        if name.endswith(FIFO_SUFFIX):
            attributes["FifoQueue"] = "true"
        return attributes


def dead_retention_s(max_age_s: int) -> int:
    """``worker.dead_letters_max_age`` as SQS can keep it (0, no limit: SQS's longest)."""
    return min(max(max_age_s or MAX_RETENTION_S, MIN_RETENTION_S), MAX_RETENTION_S)


def dead_queue_name(name: str) -> str:
    """``taskd-dead-<queue>``: a FIFO queue's is FIFO too (its name keeps ``.fifo`` last)."""
    return DEAD_PREFIX + name


def name_error(name: str) -> str | None:
    """Why SQS refuses ``name`` for a queue, or None."""
    if len(name) <= MAX_NAME and NAME_CHARACTERS.fullmatch(name.removesuffix(FIFO_SUFFIX)):
        return None
    return (
        f"{name[:40]!r}{'...' if len(name) > 40 else ''}: an SQS queue's name has 1 to"
        f" {MAX_NAME} letters, digits, hyphens and underscores ({FIFO_SUFFIX} last on a FIFO"
        " queue's)"
    )


def dead_name_error(name: str) -> str | None:
    """Why taskd could not set ``name``'s rejected messages aside in a queue of its own (its
    name would be too long), or None; no matter where the queue has a redrive policy."""
    if len(dead_queue_name(name)) <= MAX_NAME:
        return None
    return (
        f"{name!r} has {len(name)} characters: taskd sets its rejected messages aside in"
        f" {DEAD_PREFIX}<queue>, which SQS would refuse; use at most"
        f" {MAX_NAME - len(DEAD_PREFIX)}, or give the queue a redrive policy"
    )
