"""The task registry: @task, modules, entry points, and argument binding with clear errors."""

import sys
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import taskd
from taskd.errors import ArgumentError, PluginError, TaskNotFound
from taskd.registry import Registry, TaskContext, describe, load_registry, task
from taskd.wire import Arg, Signature

EXAMPLE_TASKS = [
    "add",
    "concat",
    "fail",
    "long_running_task",
    "multiply",
    "panic_task",
    "sleep",
    "split",
    "sum",
    "sum_floats",
    "sum_ints",
]


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module into a directory on sys.path; forget it afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names: list[str] = []

    def write(source: str) -> str:
        name = f"taskd_test_mod_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(source, encoding="utf-8")
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


# -- @task -----------------------------------------------------------------------------------


def test_task_decorator_marks_and_returns_the_function() -> None:
    def double(x: int) -> int:
        return 2 * x

    marked = task(double)
    assert marked is double
    assert marked(4) == 8
    assert Registry().register(double).name == "double"


def test_task_decorator_with_a_name() -> None:
    @task(name="sum_ints_v2")
    def whatever(numbers: list[int]) -> int:
        return sum(numbers)

    registry = Registry()
    registered = registry.register(whatever)
    assert registered.name == "sum_ints_v2"
    assert "sum_ints_v2" in registry
    assert "whatever" not in registry
    assert whatever([1, 2]) == 3


def test_task_is_exported_from_the_package() -> None:
    assert taskd.task is task
    assert taskd.TaskContext is TaskContext


def test_register_with_an_explicit_name_wins() -> None:
    @task(name="marked")
    def fn() -> None:
        return None

    assert Registry().register(fn, name="explicit").name == "explicit"


# -- modules ---------------------------------------------------------------------------------


def _module_with(**members: Any) -> types.ModuleType:
    module = types.ModuleType("taskd_test_fake_module")
    for key, value in members.items():
        setattr(module, key, value)
    return module


def test_register_module_takes_only_marked_functions() -> None:
    @task
    def one() -> int:
        return 1

    @task(name="deux")
    def two() -> int:
        return 2

    def helper() -> int:
        return 3

    module = _module_with(one=one, two=two, helper=helper, CONSTANT=5)
    registry = Registry()
    registered = registry.register_module(module)
    assert sorted(t.name for t in registered) == ["deux", "one"]
    assert registry.names() == ["deux", "one"]
    assert registry.get("one").source == "taskd_test_fake_module"
    assert registry.get("deux").fn is two


def test_register_module_with_a_source_label() -> None:
    @task
    def labelled() -> None:
        return None

    registry = Registry()
    registry.register_module(_module_with(labelled=labelled), source="plugin x")
    assert registry.get("labelled").source == "plugin x"


def test_import_module_registers_its_tasks(make_module: Callable[[str], str]) -> None:
    name = make_module(
        "from taskd import task\n\n"
        "@task\n"
        "def hello(who: str) -> str:\n"
        "    return 'hello ' + who\n\n"
        "def not_a_task():\n"
        "    return None\n"
    )
    registry = Registry()
    registered = registry.import_module(name)
    assert [t.name for t in registered] == ["hello"]
    assert registry.get("hello").source == name
    assert registry.get("hello").fn("you") == "hello you"


def test_import_module_that_raises_names_it(make_module: Callable[[str], str]) -> None:
    name = make_module("raise RuntimeError('kaboom at import')\n")
    with pytest.raises(PluginError) as caught:
        Registry().import_module(name)
    assert caught.value.plugin == name
    assert name in str(caught.value)
    assert "RuntimeError: kaboom at import" in str(caught.value)
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_import_module_with_a_syntax_error(make_module: Callable[[str], str]) -> None:
    name = make_module("def broken(:\n")
    with pytest.raises(PluginError, match=f"{name}.*SyntaxError"):
        Registry().import_module(name)


def test_import_of_a_missing_module() -> None:
    with pytest.raises(PluginError, match=r"taskd_no_such_module_zz.*ModuleNotFoundError"):
        Registry().import_module("taskd_no_such_module_zz")


def test_duplicate_name_from_another_function_is_an_error() -> None:
    def first() -> int:
        return 1

    def second() -> int:
        return 2

    registry = Registry()
    registry.register(first, name="dup", source="plugin-a")
    with pytest.raises(PluginError) as caught:
        registry.register(second, name="dup", source="plugin-b")
    assert caught.value.plugin == "plugin-b"
    assert "'dup' is already registered by plugin-a" in str(caught.value)
    assert registry.get("dup").fn is first


def test_duplicate_between_modules_is_an_error() -> None:
    @task(name="clash")
    def a() -> None:
        return None

    @task(name="clash")
    def b() -> None:
        return None

    registry = Registry()
    registry.register_module(_module_with(a=a), source="mod_a")
    with pytest.raises(PluginError, match="'clash' is already registered by mod_a"):
        registry.register_module(_module_with(b=b), source="mod_b")


def test_registering_the_same_function_twice_is_harmless() -> None:
    @task
    def same() -> None:
        return None

    registry = Registry()
    first = registry.register(same, source="a")
    again = registry.register(same, source="b")
    assert again is first
    assert registry.names() == ["same"]


def test_get_unknown_task() -> None:
    with pytest.raises(TaskNotFound) as caught:
        Registry().get("nope", queue="machinery_tasks")
    assert caught.value.name == "nope"
    assert str(caught.value) == "task 'nope' is not registered (queue 'machinery_tasks')"


def test_tasks_mapping_is_a_copy() -> None:
    registry = Registry()
    registry.register(lambda: None, name="l")
    snapshot = registry.tasks()
    snapshot.pop("l")  # type: ignore[attr-defined]
    assert "l" in registry


# -- the installed example plugin ---------------------------------------------------------------


def test_example_plugin_entry_point_provides_machinerys_example_tasks() -> None:
    registry = Registry()
    registry.load_entry_points()
    assert set(EXAMPLE_TASKS) <= set(registry.names())
    assert registry.get("add").source == "example (taskd_example.tasks)"
    assert registry.get("sum").fn.__name__ == "sum_numbers"


def test_load_registry_adds_imports(make_module: Callable[[str], str]) -> None:
    name = make_module("from taskd import task\n\n@task\ndef extra() -> int:\n    return 1\n")
    registry = load_registry([name])
    assert set(EXAMPLE_TASKS) | {"extra"} <= set(registry.names())


def test_load_registry_reports_a_broken_import(make_module: Callable[[str], str]) -> None:
    name = make_module("import taskd_no_such_dependency_zz\n")
    with pytest.raises(PluginError, match=name):
        load_registry([name])


def test_load_entry_points_of_an_empty_group() -> None:
    registry = Registry()
    registry.load_entry_points(group="taskd.tests.no_such_group")
    assert registry.names() == []


def test_example_tasks_bind_and_run() -> None:
    registry = Registry()
    registry.load_entry_points()

    def run(name: str, *args: Arg) -> Any:
        found = registry.get(name)
        return found.fn(*found.bind(args))

    assert run("add", Arg("int64", 1), Arg("int64", 2)) == 3
    assert run("add") == 0
    assert run("multiply", Arg("int64", 3), Arg("int64", 4)) == 12
    assert run("sum_ints", Arg("[]int64", [1, 2, 3])) == 6
    assert run("sum_floats", Arg("[]float64", [0.5, 0.25])) == 0.75
    assert run("concat", Arg("[]string", ["fo", "o"])) == "foo"
    assert run("split", Arg("string", "foo")) == ["f", "o", "o"]
    assert run("sum", Arg("[]int64", [4, 5])) == 9
    with pytest.raises(RuntimeError, match="oops"):
        run("panic_task")
    with pytest.raises(RuntimeError, match="bye"):
        run("fail", Arg("string", "bye"))


def test_example_tasks_declare_their_result_types() -> None:
    registry = Registry()
    registry.load_entry_points()
    assert registry.get("add").returns == ("int64",)
    assert registry.get("sum_floats").returns == ("float64",)
    assert registry.get("split").returns == ("[]string",)
    assert registry.get("long_running_task").returns == ()
    assert registry.get("fail").returns == ()


# -- Task.bind -------------------------------------------------------------------------------


def _task(fn: Callable[..., Any], name: str = "t") -> Any:
    return describe(fn, name, "tests")


def takes_int_and_str(count: int, label: str) -> str:
    return label * count


def test_bind_converts_arguments() -> None:
    bound = _task(takes_int_and_str).bind([Arg("int64", 2), Arg("string", "ab")])
    assert bound == [2, "ab"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [Arg("string", "2"), Arg("string", "ab")],
            "argument 1 of task 't': count must be int64, got string",
        ),
        (
            [Arg("int64", 2), Arg("int64", 3)],
            "argument 2 of task 't': label must be string, got int64",
        ),
        (
            [Arg("float64", 2.0), Arg("string", "ab")],
            "argument 1 of task 't': count must be int64, got float64",
        ),
        (
            [Arg("bool", True), Arg("string", "ab")],
            "argument 1 of task 't': count must be int64, got bool",
        ),
        (
            [Arg("[]int64", [1]), Arg("string", "ab")],
            "argument 1 of task 't': count must be int64, got []int64",
        ),
    ],
)
def test_bind_wrong_type_names_argument_parameter_and_type(args: list[Arg], message: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        _task(takes_int_and_str).bind(args)
    assert str(caught.value) == message
    assert caught.value.task == "t"


def test_bind_value_that_does_not_fit_its_type_names_the_argument() -> None:
    with pytest.raises(ArgumentError) as caught:
        _task(takes_int_and_str).bind([Arg("int64", 2.0), Arg("string", "ab")])
    assert str(caught.value) == "argument 1 of task 't': 2.0 is not int64"
    assert caught.value.index == 0
    with pytest.raises(ArgumentError, match="argument 1 of task 't': 300 is out of range"):
        _task(takes_int_and_str).bind([Arg("uint8", 300), Arg("string", "ab")])


@pytest.mark.parametrize(
    ("count", "message"),
    [
        (1, "task 't': takes 2 argument(s), got 1"),
        (3, "task 't': takes 2 argument(s), got 3"),
        (0, "task 't': takes 2 argument(s), got 0"),
    ],
)
def test_bind_wrong_number_of_arguments(count: int, message: str) -> None:
    args = [Arg("int64", 1), Arg("string", "a"), Arg("string", "b")][:count]
    with pytest.raises(ArgumentError) as caught:
        _task(takes_int_and_str).bind(args)
    assert str(caught.value) == message


def with_default(a: int, b: int = 10) -> int:
    return a + b


def test_bind_with_defaults() -> None:
    described = _task(with_default)
    assert described.required == 1
    assert described.bind([Arg("int64", 1)]) == [1]
    assert described.bind([Arg("int64", 1), Arg("int64", 2)]) == [1, 2]
    with pytest.raises(ArgumentError, match="takes 1 to 2 argument\\(s\\), got 3"):
        described.bind([Arg("int64", 1)] * 3)
    with pytest.raises(ArgumentError, match="takes 1 to 2 argument\\(s\\), got 0"):
        described.bind([])


def variadic(prefix: str, *numbers: int) -> str:
    return prefix + str(sum(numbers))


def test_bind_variadic() -> None:
    described = _task(variadic)
    assert described.bind([Arg("string", "n=")]) == ["n="]
    assert described.bind([Arg("string", "n="), Arg("int64", 1), Arg("uint8", 2)]) == ["n=", 1, 2]
    with pytest.raises(ArgumentError, match="takes at least 1 argument\\(s\\), got 0"):
        described.bind([])
    with pytest.raises(ArgumentError) as caught:
        described.bind([Arg("string", "n="), Arg("int64", 1), Arg("string", "x")])
    assert str(caught.value) == "argument 3 of task 't': numbers must be int64, got string"


def ints(numbers: list[int]) -> int:
    return sum(numbers)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (Arg("[]int64", [1, 2]), [1, 2]),
        (Arg("[]int", [1, 2]), [1, 2]),
        (Arg("[]int8", [-1]), [-1]),
        (Arg("[]uint64", [2**64 - 1]), [2**64 - 1]),
        (Arg("[]uint8", "AQI="), [1, 2]),  # a []uint8 arrives as bytes: the task gets a list
        (Arg("[]byte", [1, 2]), [1, 2]),
        (Arg("[]uint8", None), []),
        (Arg("[]int64", None), []),
    ],
)
def test_list_of_int_accepts_integer_slices(arg: Arg, expected: list[int]) -> None:
    (value,) = _task(ints).bind([arg])
    assert value == expected
    assert type(value) is list


@pytest.mark.parametrize("type_name", ["[]string", "[]float64", "[]bool", "int64", "string"])
def test_list_of_int_rejects_other_types(type_name: str) -> None:
    with pytest.raises(ArgumentError) as caught:
        _task(ints).bind([Arg(type_name, None)])
    assert str(caught.value) == f"argument 1 of task 't': numbers must be []int64, got {type_name}"


def floats(x: float) -> float:
    return x


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (Arg("float64", 2.5), 2.5),
        (Arg("float32", 1.5), 1.5),
        (Arg("int64", 3), 3.0),
        (Arg("uint8", 3), 3.0),
        (Arg("float64", 2), 2.0),
    ],
)
def test_float_accepts_ints_and_floats(arg: Arg, expected: float) -> None:
    (value,) = _task(floats).bind([arg])
    assert value == expected
    assert type(value) is float


def test_float_rejects_strings_and_bools() -> None:
    for arg in (Arg("string", "1"), Arg("bool", True)):
        with pytest.raises(ArgumentError, match="x must be float64"):
            _task(floats).bind([arg])


def list_of_floats(numbers: list[float]) -> float:
    return sum(numbers)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (Arg("[]float64", [1.5, 2]), [1.5, 2.0]),
        (Arg("[]float32", [0.5]), [0.5]),
        (Arg("[]int64", [1, 2]), [1.0, 2.0]),
    ],
)
def test_list_of_float_accepts_numeric_slices(arg: Arg, expected: list[float]) -> None:
    (value,) = _task(list_of_floats).bind([arg])
    assert value == expected
    assert all(type(item) is float for item in value)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [(Arg("[]uint8", "AQI="), [1.0, 2.0]), (Arg("[]byte", "MTI="), [49.0, 50.0])],
)
def test_list_of_float_accepts_byte_slices(arg: Arg, expected: list[float]) -> None:
    (value,) = _task(list_of_floats).bind([arg])
    assert value == expected


def typed_scalars(flag: bool, blob: bytes, words: list[str], flags: list[bool]) -> None:
    return None


def test_other_annotations() -> None:
    described = _task(typed_scalars)
    bound = described.bind(
        [Arg("bool", True), Arg("[]byte", "aGk="), Arg("[]string", ["a"]), Arg("[]bool", [False])]
    )
    assert bound == [True, b"hi", ["a"], [False]]
    with pytest.raises(ArgumentError, match="argument 2 of task 't': blob must be \\[\\]uint8"):
        described.bind(
            [Arg("bool", True), Arg("string", "hi"), Arg("[]string", []), Arg("[]bool", [])]
        )


def sequences(a: Sequence[int], b: tuple[str, ...], c: tuple[int, str]) -> None:
    return None


def test_sequence_annotations() -> None:
    described = _task(sequences)
    assert described.bind(
        [Arg("[]int64", [1]), Arg("[]string", ["x"]), Arg("string", "anything")]
    ) == [[1], ["x"], "anything"]
    with pytest.raises(ArgumentError, match="a must be \\[\\]int64"):
        described.bind([Arg("[]string", []), Arg("[]string", []), Arg("int64", 1)])
    with pytest.raises(ArgumentError, match="b must be \\[\\]string"):
        described.bind([Arg("[]int64", []), Arg("[]int64", []), Arg("int64", 1)])


def untyped(a, b):  # type: ignore[no-untyped-def]
    return (a, b)


def test_unannotated_parameters_accept_any_machinery_type_but_still_check_values() -> None:
    described = _task(untyped)
    assert described.bind([Arg("[]string", ["x"]), Arg("uint8", 7)]) == [["x"], 7]
    with pytest.raises(ArgumentError, match="argument 2 of task 't': 300 is out of range"):
        described.bind([Arg("int64", 1), Arg("uint8", 300)])
    with pytest.raises(ArgumentError, match="'complex64' is not one of machinery's types"):
        described.bind([Arg("int64", 1), Arg("complex64", 1)])


def with_context(ctx: TaskContext, x: int) -> int:
    return ctx.attempt + x


def test_task_context_is_injected_not_counted() -> None:
    described = _task(with_context)
    assert described.wants_context
    assert described.required == 1
    assert [p.name for p in described.params] == ["x"]
    assert described.bind([Arg("int64", 5)]) == [5]
    with pytest.raises(ArgumentError, match="takes 1 argument\\(s\\), got 2"):
        described.bind([Arg("int64", 5), Arg("int64", 6)])
    with pytest.raises(ArgumentError, match="argument 1 of task 't': x must be int64"):
        described.bind([Arg("string", "5")])


def context_later(x: int, ctx: TaskContext) -> None:
    return None


def test_task_context_only_counts_as_first_parameter() -> None:
    described = _task(context_later)
    assert not described.wants_context
    assert described.required == 2


def test_task_context_properties() -> None:
    sig = Signature(name="x", uuid="task_1", retry_count=2)
    ctx = TaskContext(sig, attempt=3, queue="q")
    assert (ctx.task_id, ctx.retries_left, ctx.attempt, ctx.queue) == ("task_1", 2, 3, "q")


def keyword_only(a: int, *, scale: int = 2) -> int:
    return a * scale


def test_keyword_only_parameters_are_not_positional() -> None:
    described = _task(keyword_only)
    assert [p.name for p in described.params] == ["a"]
    with pytest.raises(ArgumentError, match="takes 1 argument"):
        described.bind([Arg("int64", 1), Arg("int64", 2)])


def returns_pair() -> tuple[int, str]:
    return (1, "a")


def returns_nothing() -> None:
    return None


def returns_bytes() -> bytes:
    return b""


def returns_unknown() -> dict[str, int]:
    return {}


def returns_unannotated():  # type: ignore[no-untyped-def]
    return 1


@pytest.mark.parametrize(
    ("fn", "returns"),
    [
        (returns_pair, ("int64", "string")),
        (returns_nothing, ()),
        (returns_bytes, ("[]uint8",)),
        (returns_unknown, (None,)),
        (returns_unannotated, (None,)),
        (ints, ("int64",)),
        (list_of_floats, ("float64",)),
    ],
)
def test_declared_result_types(fn: Callable[..., Any], returns: tuple[str | None, ...]) -> None:
    assert _task(fn).returns == returns
