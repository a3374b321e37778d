"""taskd: a broker-agnostic distributed task queue, wire-compatible with machinery.

Tasks are plain functions marked with ``@task``; applications send them with ``Client``.
"""

from taskd.client import AsyncResult, Client, signature
from taskd.errors import Retry, TaskFailed
from taskd.registry import TaskContext, task
from taskd.wire import Arg, Signature, TaskResult
from taskd.workflows import chain, chord, group

__version__ = "0.1.0"

__all__ = [
    "Arg",
    "AsyncResult",
    "Client",
    "Retry",
    "Signature",
    "TaskContext",
    "TaskFailed",
    "TaskResult",
    "__version__",
    "chain",
    "chord",
    "group",
    "signature",
    "task",
]
