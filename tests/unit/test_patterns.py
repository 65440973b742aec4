"""Pattern templates, aggregations, nesting guard and the control-plane adapter (no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from taskplane.errors import NotFoundError, PatternError
from taskplane.models import ExecutionResult, TaskStatus
from taskplane.patterns import (
    FilePatternEngine,
    PatternExecutorAdapter,
    aggregate,
    check_nesting,
    substitute,
)


def ok(value: Any, confidence: float | None = None, task_id: str = "t") -> ExecutionResult:
    return ExecutionResult(
        task_id=task_id, status=TaskStatus.SUCCESS, result=value, confidence=confidence
    )


def bad(task_id: str = "x") -> ExecutionResult:
    return ExecutionResult(task_id=task_id, status=TaskStatus.FAILURE, error="boom")


def test_substitution_whole_values_and_text() -> None:
    template = {
        "code": "{{ input.code }}",
        "nested": ["{{input.meta.n}}", "n={{ input.meta.n }}"],
        "all": "{{ input }}",
        "missing": "{{ input.nope }}",
        "plain": "no {template} here",
    }
    data = {"code": {"lines": 3}, "meta": {"n": 7}}
    assert substitute(template, data) == {
        "code": {"lines": 3},
        "nested": [7, "n=7"],
        "all": data,
        "missing": None,
        "plain": "no {template} here",
    }


def test_substitution_does_not_evaluate_code() -> None:
    assert substitute("{{ input.__class__ }}", {"a": 1}) is None
    assert substitute("{{ 1 + 1 }}", {}) == "{{ 1 + 1 }}"


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("all", (["a", "b", "b"], pytest.approx((0.5 + 0.9 + 0.7) / 3))),
        ("first", ("a", 0.5)),
        ("last", ("b", 0.7)),
        ("best-confidence", ("b", 0.9)),
        ("consensus", ("b", pytest.approx(2 / 4 * 0.8))),
    ],
)
def test_aggregations(how: str, expected: tuple[Any, Any]) -> None:
    results = [ok("a", 0.5), ok("b", 0.9), bad(), ok("b", 0.7)]
    assert aggregate(how, results) == expected


def test_merge_and_failures() -> None:
    assert aggregate("merge", [ok({"a": 1, "b": 1}, 0.8), ok({"b": 2}, 1.0)]) == (
        {"a": 1, "b": 2},
        pytest.approx(0.9),
    )
    with pytest.raises(PatternError, match="no task"):
        aggregate("all", [bad()])
    with pytest.raises(PatternError, match="unknown aggregation"):
        aggregate("median", [ok(1)])


def test_nesting_guard() -> None:
    assert check_nesting(("a", "b"), "c") == ("a", "b", "c")
    with pytest.raises(PatternError, match="cycle: a -> b -> a"):
        check_nesting(("a", "b"), "a")
    with pytest.raises(PatternError, match="deeper than 5"):
        check_nesting(("p1", "p2", "p3", "p4", "p5"), "p6")


def test_file_engine_reads_json_and_yaml(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "name: alpha\nkind: sequential\naggregate: last\n"
        "tasks:\n  - {id: t, type: function, target: add, payload: {a: '{{ input.x }}'}}\n"
    )
    (tmp_path / "b.json").write_text(
        '{"name": "beta", "strategy": "race", "tasks": '
        '[{"id": "t", "type": "function", "target": "noop"}]}'
    )
    (tmp_path / "notes.txt").write_text("ignored")
    engine = FilePatternEngine(tmp_path)
    assert engine.names() == ["alpha", "beta"]
    plan = engine.get("alpha").plan_for({"x": 5}, "run-1")
    assert plan.kind == "sequential" and plan.id == "run-1"
    assert plan.tasks[0].payload == {"a": 5}
    assert engine.get("beta").plan_for({}, "r").kind == "parallel"
    with pytest.raises(NotFoundError, match="Pattern gamma not found"):
        engine.get("gamma")


def test_bad_pattern_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("name: broken\ntasks:\n  - {id: t, type: teleport}\n")
    with pytest.raises(PatternError, match=r"broken\.yaml"):
        FilePatternEngine(tmp_path).names()


class CamelCaseEngine:
    def executePattern(self, name: str, input: Any, options: dict[str, Any]) -> Any:
        if name == "explode":
            raise RuntimeError("control plane down")
        return (
            {"id": "e1", "status": "failed", "error": "nope"}
            if name == "bad"
            else {
                "id": "e2",
                "status": "completed",
                "result": {"echo": input},
                "metrics": {"confidence": 0.7, "executionTime": 5},
            }
        )


def test_adapter_maps_results_and_errors() -> None:
    adapter = PatternExecutorAdapter(CamelCaseEngine())
    done = adapter.execute("good", {"q": 1}, timeout=1000, execution_id="x", parent_task_id="t")
    assert (done.status, done.result, done.confidence, done.execution_time) == (
        "completed",
        {"echo": {"q": 1}},
        0.7,
        5.0,
    )
    assert adapter.execute("bad", {}).error == "nope"
    exploded = adapter.execute("explode", {})
    assert exploded.status == "failed" and "control plane down" in (exploded.error or "")
    with pytest.raises(Exception, match="execute_pattern"):
        PatternExecutorAdapter(object())


def test_load_pattern_executor_from_instance_factory_or_class() -> None:
    from taskplane.errors import ConfigurationError
    from taskplane.patterns import load_pattern_executor

    for spec in ("tests.functions:make_pattern_executor", "tests.functions:ControlPlaneStandIn"):
        executor = load_pattern_executor(spec)
        assert executor.execute("p", {}).status == "completed"
    with pytest.raises(ConfigurationError, match="TASKPLANE_PATTERN_EXECUTOR"):
        load_pattern_executor("tests.functions:nothing_here")
    with pytest.raises(ConfigurationError, match="no execute"):
        load_pattern_executor("builtins:dict")
