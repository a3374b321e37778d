"""taskd: a broker-agnostic distributed task queue, wire-compatible with machinery.

Tasks are plain functions marked with ``@task``; applications send them with ``Client``.
The names below are imported on first use, so ``import taskd.wire`` (or the registry, or the
config) does not pull in the client and every driver.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Arg": "taskd.wire",
    "AsyncResult": "taskd.results",
    "Client": "taskd.client",
    "Retry": "taskd.errors",
    "Signature": "taskd.wire",
    "SoftTimeLimitExceeded": "taskd.errors",
    "TaskContext": "taskd.registry",
    "TaskFailed": "taskd.errors",
    "TaskResult": "taskd.wire",
    "chain": "taskd.workflows",
    "chord": "taskd.workflows",
    "group": "taskd.workflows",
    "signature": "taskd.client",
    "task": "taskd.registry",
}

__all__ = [
    "Arg",
    "AsyncResult",
    "Client",
    "Retry",
    "Signature",
    "SoftTimeLimitExceeded",
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

if TYPE_CHECKING:
    from taskd.client import Client, signature
    from taskd.errors import Retry, SoftTimeLimitExceeded, TaskFailed
    from taskd.registry import TaskContext, task
    from taskd.results import AsyncResult
    from taskd.wire import Arg, Signature, TaskResult
    from taskd.workflows import chain, chord, group


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'taskd' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
