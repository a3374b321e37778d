"""Tasks by name: plain Python functions, found through entry points and ``imports:``.

A package exposes tasks through the ``taskd.tasks`` entry-point group: an entry point naming a
module registers every ``@task`` function in it; one naming a function registers it under the
entry point's name. Parameter annotations say which machinery types a task accepts, so a
wrong argument fails with the argument and the expected type instead of deep in the task.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import math
import os
import signal
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from taskd import logs
from taskd.errors import ArgumentError, PluginError, TaskNotFound
from taskd.wire import Arg, Signature
from taskd.wire import args as typed

log = logs.get_logger("taskd")
TASKS_GROUP = "taskd.tasks"
_MARK = "__taskd_task__"
_LIMITS = "__taskd_time_limits__"  # (time_limit, soft_time_limit) given to @task

F = TypeVar("F", bound=Callable[..., Any])


def task(
    fn: F | None = None,
    *,
    name: str | None = None,
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
) -> Any:
    """Mark a function as a task, registered under ``name`` (default: the function's name).

    Use as ``@task`` or ``@task(name="sum_ints", time_limit=60, soft_time_limit=50)``. The
    limits are seconds (0: none) and stand unless the signature's headers say otherwise; unset,
    ``worker.time_limit`` and ``worker.soft_time_limit`` apply (``taskd.worker.limits``). The
    function is returned unchanged, so it stays callable and testable as plain Python.
    """
    limits = (
        None if time_limit is None else limit_seconds(time_limit, "time_limit"),
        None if soft_time_limit is None else limit_seconds(soft_time_limit, "soft_time_limit"),
    )

    def mark(target: F) -> F:
        setattr(target, _MARK, name or target.__name__)
        if limits != (None, None):
            setattr(target, _LIMITS, limits)
        return target

    return mark(fn) if fn is not None else mark


def limit_seconds(value: object, what: str) -> float:
    """A time limit in seconds, 0 or more (0: none), from a number or its decimal text (as a
    Go producer's string header carries it); ValueError naming ``what`` for anything else."""
    number = math.nan
    with contextlib.suppress(ValueError, OverflowError):  # not a number; past a float's range
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            number = float(value.strip())
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{what} must be a number of seconds, 0 or more (0: none), got {value!r}")
    return number


@dataclass(frozen=True, slots=True)
class TaskContext:
    """What a task may know about its own run; opt in with a first parameter of this type.

    machinery passes a ``context.Context`` carrying the signature; taskd passes this.
    """

    signature: Signature
    attempt: int  # 1 for the first run, 2 for the first retry...
    queue: str

    @property
    def task_id(self) -> str:
        return self.signature.uuid

    @property
    def retries_left(self) -> int:
        return self.signature.retry_count


# -- parameter types ------------------------------------------------------------------------

_INT_TYPES = frozenset(
    t for t in typed.TYPE_NAMES if not typed.is_slice(t) and typed.kind_of(t) in ("int", "uint")
)
_FLOAT_TYPES = frozenset({"float32", "float64"})
_INT_SLICES = frozenset(f"[]{t}" for t in _INT_TYPES) | {"[]byte"}
_FLOAT_SLICES = frozenset({"[]float32", "[]float64"})

# annotation -> (machinery types accepted, the type named in errors and results)
_SCALAR_ANNOTATIONS: dict[Any, tuple[frozenset[str], str]] = {
    int: (_INT_TYPES, "int64"),
    float: (_FLOAT_TYPES | _INT_TYPES, "float64"),
    str: (frozenset({"string"}), "string"),
    bool: (frozenset({"bool"}), "bool"),
    bytes: (typed.BYTES_TYPES, "[]uint8"),
}
_LIST_ANNOTATIONS: dict[Any, tuple[frozenset[str], str]] = {
    int: (_INT_SLICES, "[]int64"),
    float: (_FLOAT_SLICES | _INT_SLICES, "[]float64"),
    str: (frozenset({"[]string"}), "[]string"),
    bool: (frozenset({"[]bool"}), "[]bool"),
}
_LIST_ORIGINS = (list, tuple, Sequence, Iterable, typing.Sequence)


def _machinery_type(annotation: Any) -> tuple[frozenset[str], str] | None:
    """What a parameter annotation accepts, or None for "anything"."""
    if annotation in _SCALAR_ANNOTATIONS:
        return _SCALAR_ANNOTATIONS[annotation]
    origin, params = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in _LIST_ORIGINS and params and params[0] in _LIST_ANNOTATIONS:
        if origin is tuple and not (len(params) == 2 and params[1] is Ellipsis):
            return None
        return _LIST_ANNOTATIONS[params[0]]
    return None


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    accepts: frozenset[str] | None  # None: any machinery type
    expected: str  # how errors name the wanted type

    def convert(self, arg: Arg, task_name: str, index: int) -> Any:
        if self.accepts is not None and arg.type not in self.accepts:
            raise ArgumentError(
                f"{self.name} must be {self.expected}, got {arg.type}", task=task_name, index=index
            )
        try:
            value = arg.python_value()
        except ArgumentError as exc:
            raise ArgumentError(exc.reason, task=task_name, index=index) from None
        if isinstance(value, bytes) and self.expected != "[]uint8":
            value = list(value)  # []byte given where a list of numbers is wanted
        if self.expected == "float64":
            return float(value)
        if self.expected == "[]float64":
            return [float(item) for item in value]
        return value


@dataclass(frozen=True, slots=True)
class Task:
    """A registered task: its function and what its signature accepts and returns."""

    name: str
    fn: Callable[..., Any]
    params: tuple[Param, ...]
    required: int  # positional parameters without a default
    variadic: Param | None  # *args
    returns: tuple[str | None, ...]  # declared machinery type per result
    wants_context: bool
    source: str
    time_limit_s: float | None = None  # from @task(time_limit=...); None: not set there
    soft_time_limit_s: float | None = None

    def bind(self, args: Sequence[Arg]) -> list[Any]:
        """Convert machinery args to Python values this function accepts; ArgumentError if not."""
        if len(args) < self.required or (self.variadic is None and len(args) > len(self.params)):
            if self.variadic is not None:
                want = f"at least {self.required}"
            elif self.required == len(self.params):
                want = str(self.required)
            else:
                want = f"{self.required} to {len(self.params)}"
            raise ArgumentError(f"takes {want} argument(s), got {len(args)}", task=self.name)
        values = []
        for index, arg in enumerate(args):
            param = self.params[index] if index < len(self.params) else self.variadic
            assert param is not None
            values.append(param.convert(arg, self.name, index))
        return values


def describe(fn: Callable[..., Any], name: str, source: str) -> Task:
    """Read a function's parameters and annotations into a Task."""
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: accept anything rather than refuse to load
        hints = {}
    signature = inspect.signature(fn)
    params: list[Param] = []
    variadic = None
    required = 0
    wants_context = False
    time_limit_s, soft_time_limit_s = getattr(fn, _LIMITS, (None, None))
    for position, parameter in enumerate(signature.parameters.values()):
        hint = hints.get(parameter.name, parameter.annotation)
        if position == 0 and hint is TaskContext:
            wants_context = True
            continue
        mapped = _machinery_type(hint)
        param = Param(parameter.name, *(mapped or (None, "any type")))
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            variadic = param
        elif parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            params.append(param)
            if parameter.default is inspect.Parameter.empty:
                required += 1
    return Task(
        name=name,
        fn=fn,
        params=tuple(params),
        required=required,
        variadic=variadic,
        returns=_declared_results(hints.get("return", inspect.Signature.empty)),
        wants_context=wants_context,
        source=source,
        time_limit_s=time_limit_s,
        soft_time_limit_s=soft_time_limit_s,
    )


def _declared_results(annotation: Any) -> tuple[str | None, ...]:
    if annotation is None or annotation is type(None):
        return ()
    if typing.get_origin(annotation) is tuple:
        items = typing.get_args(annotation)
        if len(items) == 2 and items[1] is Ellipsis:
            return ()  # as many results as returned, each typed after its value
        return tuple(_declared_result(item) for item in items)
    return (_declared_result(annotation),)


def _declared_result(annotation: Any) -> str | None:
    mapped = _machinery_type(annotation)
    return mapped[1] if mapped else None


# -- the registry ---------------------------------------------------------------------------


class Registry:
    """Task name -> Task. Built once in the supervisor, inherited by forked children."""

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}

    def register(self, fn: Callable[..., Any], name: str | None = None, source: str = "") -> Task:
        name = name or getattr(fn, _MARK, None) or fn.__name__
        existing = self._tasks.get(name)
        if existing is not None:
            if existing.fn is fn:
                return existing
            raise PluginError(
                source or _where(fn),
                f"task {name!r} is already registered by {existing.source or _where(existing.fn)}",
            )
        registered = describe(fn, name, source or _where(fn))
        self._tasks[name] = registered
        module = getattr(fn, "__module__", None)
        if module and module not in _IMPORTED_MTIMES:  # the first time: just imported
            _IMPORTED_MTIMES[module] = _mtime(module)
        return registered

    def register_module(self, module: types.ModuleType, source: str = "") -> list[Task]:
        """Register every ``@task`` function a module defines or imports."""
        found = [
            value
            for value in vars(module).values()
            if callable(value) and isinstance(getattr(value, _MARK, None), str)
        ]
        return [self.register(fn, source=source or module.__name__) for fn in found]

    def import_module(self, name: str) -> list[Task]:
        """Import a module by name (the ``imports:`` key) and register its tasks."""
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            raise PluginError(name, f"{type(exc).__name__}: {exc}") from exc
        return self.register_module(module, source=name)

    def load_entry_points(self, group: str = TASKS_GROUP) -> None:
        """Load every installed plugin of the ``taskd.tasks`` entry-point group."""
        for point in entry_points(group=group):
            label = f"{point.name} ({point.value})"
            try:
                target = point.load()
            except Exception as exc:
                raise PluginError(label, f"{type(exc).__name__}: {exc}") from exc
            if isinstance(target, types.ModuleType):
                self.register_module(target, source=label)
            elif callable(target):
                self.register(target, getattr(target, _MARK, None) or point.name, source=label)
            else:
                raise PluginError(label, "is neither a module nor a function")

    def get(self, name: str, queue: str | None = None) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise TaskNotFound(name, queue) from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def tasks(self) -> Mapping[str, Task]:
        return dict(self._tasks)

    def changed_on_disk(self) -> list[str]:
        """The modules of these tasks whose file changed since this process imported them:
        Python runs the code it imported, so a reload keeps it and a restart loads the new."""
        modules = sorted({getattr(task.fn, "__module__", "") for task in self._tasks.values()})
        return [m for m in modules if m in _IMPORTED_MTIMES and _mtime(m) != _IMPORTED_MTIMES[m]]


# Module name -> its file's mtime when this process first registered a task of it.
_IMPORTED_MTIMES: dict[str, float] = {}


def _mtime(module: str) -> float:
    path = getattr(sys.modules.get(module), "__file__", None)
    try:
        return os.stat(path).st_mtime if path else 0.0
    except OSError:
        return 0.0


def load_registry(imports: Iterable[str] = ()) -> Registry:
    """A registry of every installed plugin's tasks plus the modules in ``imports``."""
    registry = Registry()
    registry.load_entry_points()
    for name in imports:
        registry.import_module(name)
    pipe_errors_kept("imports")
    return registry


def pipe_errors_kept(by: str, **context: Any) -> None:
    """SIGPIPE ignored again where task code set it back to its default (a Unix tool's idiom:
    end quietly when the reader of a pipe goes). taskd relies on Python's setting (and
    systemd's IgnoreSIGPIPE): a write to a closed pipe or socket is an error it handles; with
    the default, the first log line after a log shipper restarted killed the process."""
    if signal.getsignal(signal.SIGPIPE) is signal.SIG_IGN:
        return
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    log.warning("sigpipe_ignored_again", by=by, fix=_PIPE_FIX, **context)


_PIPE_FIX = "leave SIGPIPE as Python sets it in code that taskd runs"


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
