"""FunctionRegistry: registration, lookup and running a ``function`` task's payload as keywords."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

import taskplane
from taskplane import functions
from taskplane.contract import CallContext
from taskplane.errors import (
    ConfigurationError,
    FunctionError,
    InvalidPayloadError,
    NotFoundError,
    ValidationError,
)
from taskplane.functions import FunctionRegistry, FunctionResult, import_function_modules
from taskplane.models import ExecutionTask, TaskStatus, TaskType
from taskplane.runner import TaskRunner

CALL = CallContext(timeout_s=1.0)


def add(a: int, b: int = 0) -> int:
    return a + b


def task(target: str, **payload: Any) -> ExecutionTask:
    return ExecutionTask(id="t1", type=TaskType.FUNCTION, target=target, payload=payload)


@pytest.fixture
def registry() -> FunctionRegistry:
    reg = FunctionRegistry()
    reg.register("add", add)
    return reg


# --- registration --------------------------------------------------------------------------


def test_register_and_get(registry: FunctionRegistry) -> None:
    assert registry.get("add") is add
    assert registry.names() == ["add"]


def test_registering_the_same_function_again_is_fine(registry: FunctionRegistry) -> None:
    registry.register("add", add)
    assert registry.get("add") is add


def test_a_different_function_under_a_taken_name_is_refused(registry: FunctionRegistry) -> None:
    def other(a: int) -> int:
        return a

    with pytest.raises(ValidationError, match="'add' is already registered"):
        registry.register("add", other)
    assert registry.get("add") is add


def test_same_qualname_from_another_module_is_refused(registry: FunctionRegistry) -> None:
    namespace: dict[str, Any] = {"__name__": "somebody.else"}
    exec("def add(a, b=0):\n    return a - b\n", namespace)
    impostor = namespace["add"]
    assert impostor.__qualname__ == add.__qualname__
    with pytest.raises(ValidationError, match="already registered"):
        registry.register("add", impostor)
    assert registry.get("add") is add


def test_same_function_redefined_in_its_module_replaces_it(registry: FunctionRegistry) -> None:
    # A module imported twice (reload) defines an equal function again: that is not a clash.
    namespace: dict[str, Any] = {"__name__": add.__module__}
    exec("def add(a, b=0):\n    return a + b + 1\n", namespace)
    registry.register("add", namespace["add"])
    assert registry.get("add") is namespace["add"]


@pytest.mark.parametrize("name", ["", None, 3])
def test_name_must_be_a_non_empty_string(registry: FunctionRegistry, name: Any) -> None:
    with pytest.raises(ValidationError, match="name"):
        registry.register(name, add)


def test_unknown_function(registry: FunctionRegistry) -> None:
    with pytest.raises(NotFoundError) as info:
        registry.get("missing")
    assert str(info.value) == "Function missing not found"


def test_decorator_registers_in_the_package_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    fresh = FunctionRegistry()
    monkeypatch.setattr(functions, "registry", fresh)

    @taskplane.function("double")
    def double(x: int) -> int:
        return 2 * x

    assert fresh.get("double") is double
    assert double(2) == 4  # the decorator hands the function back unchanged


# --- calling -------------------------------------------------------------------------------


def test_payload_is_passed_as_keywords(registry: FunctionRegistry) -> None:
    outcome = registry(task("add", a=2, b=3), CALL)
    assert (outcome.result, outcome.confidence) == (5, None)


def test_function_result_reports_confidence(registry: FunctionRegistry) -> None:
    registry.register("sure", lambda x: FunctionResult({"x": x}, confidence=0.75))
    outcome = registry(task("sure", x=1), CALL)
    assert (outcome.result, outcome.confidence) == ({"x": 1}, 0.75)


def test_unknown_function_task(registry: FunctionRegistry) -> None:
    with pytest.raises(NotFoundError, match=r"^Function nope not found$"):
        registry(task("nope"), CALL)


@pytest.mark.parametrize(
    "payload",
    [{}, {"a": 1, "c": 2}, {"b": 1}],
    ids=["missing", "unexpected", "missing-required"],
)
def test_payload_that_does_not_bind(registry: FunctionRegistry, payload: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError, match="function add"):
        registry(task("add", **payload), CALL)


def test_binding_error_does_not_call_the_function() -> None:
    calls: list[int] = []

    def f(a: int) -> int:
        calls.append(a)
        return a

    reg = FunctionRegistry()
    reg.register("f", f)
    with pytest.raises(InvalidPayloadError):
        reg(task("f", b=1), CALL)
    assert calls == []


def test_builtin_without_signature_is_called() -> None:
    reg = FunctionRegistry()
    reg.register("dict", dict)
    assert reg(task("dict", a=1), CALL).result == {"a": 1}


def test_raising_function_becomes_function_error(registry: FunctionRegistry) -> None:
    def boom(**_: Any) -> None:
        raise KeyError("k")

    registry.register("boom", boom)
    with pytest.raises(FunctionError, match="function boom raised KeyError") as info:
        registry(task("boom"), CALL)
    assert isinstance(info.value.__cause__, KeyError)


@pytest.mark.parametrize("value", [{1, 2}, object(), float("nan"), {"x": b"bytes"}])
def test_non_json_return_is_a_function_error(registry: FunctionRegistry, value: Any) -> None:
    registry.register("weird", lambda: value)
    with pytest.raises(FunctionError, match="non-JSON"):
        registry(task("weird"), CALL)


def test_non_json_value_inside_function_result(registry: FunctionRegistry) -> None:
    registry.register("weird", lambda: FunctionResult({1, 2}, confidence=0.9))
    with pytest.raises(FunctionError, match="non-JSON"):
        registry(task("weird"), CALL)


# --- through the runner --------------------------------------------------------------------


def _runner(registry: FunctionRegistry) -> TaskRunner:
    def no_sleep(_s: float) -> None:
        raise AssertionError("function errors are not retried")

    return TaskRunner({TaskType.FUNCTION: registry}, clock=lambda: 0.0, sleep=no_sleep)


def test_runner_envelope_for_a_function(registry: FunctionRegistry) -> None:
    result = _runner(registry).run(task("add", a=1, b=1))
    assert (result.status, result.result) == (TaskStatus.SUCCESS, 2)
    assert result.metadata["taskType"] == "function"


def test_runner_unknown_function_is_a_failure_not_retried(registry: FunctionRegistry) -> None:
    result = _runner(registry).run(task("nope"))
    assert (result.status, result.error) == (TaskStatus.FAILURE, "Function nope not found")
    assert result.metadata["attempts"] == 1


def test_runner_raising_function_is_a_failure_not_retried(registry: FunctionRegistry) -> None:
    registry.register("boom", lambda: 1 / 0)
    result = _runner(registry).run(task("boom"))
    assert result.status is TaskStatus.FAILURE
    assert result.error is not None
    assert "ZeroDivisionError" in result.error


# --- importing function modules ------------------------------------------------------------


def test_import_function_modules_registers_what_they_decorate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "tp_imported_functions.py").write_text(
        "import taskplane\n\n"
        "@taskplane.function('imported.double')\n"
        "def double(x: int) -> int:\n"
        "    return 2 * x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(functions, "registry", FunctionRegistry())
    monkeypatch.delitem(sys.modules, "tp_imported_functions", raising=False)
    try:
        import_function_modules(["json", "tp_imported_functions"])
        module = sys.modules["tp_imported_functions"]
        assert functions.registry.names() == ["imported.double"]
        assert functions.registry.get("imported.double") is module.double
    finally:
        sys.modules.pop("tp_imported_functions", None)


def test_import_error_names_the_setting_and_module() -> None:
    with pytest.raises(ConfigurationError, match=r"TASKPLANE_FUNCTION_MODULES.*no_such_module_x"):
        import_function_modules(["no_such_module_x"])
