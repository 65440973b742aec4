"""Models: camelCase and snake_case input, camelCase output, and rejections that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskplane.errors import ValidationError
from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    SequentialExecutionPlan,
    Strategy,
    TaskStatus,
    TaskType,
    parse_plan,
    parse_result,
    parse_task,
    plan_kind,
)


def task_dict(task_id: str = "t1", **extra: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "agent", "target": "a1", **extra}


def plan_dict(**extra: Any) -> dict[str, Any]:
    return {"id": "p1", "tasks": [task_dict("t1"), task_dict("t2")], **extra}


def rejected_fields(data: Any, kind: str | None = None) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_plan(data, kind)
    assert isinstance(info.value, ValueError)  # also a ValueError for callers that catch those
    return [error["field"] for error in info.value.errors]


# --- input forms ---------------------------------------------------------------------------


def test_camel_case_input() -> None:
    plan = parse_plan(plan_dict(maxConcurrency=3, strategy="allSettled"))
    assert isinstance(plan, ParallelExecutionPlan)
    assert plan.max_concurrency == 3
    assert plan.strategy is Strategy.ALL_SETTLED


def test_snake_case_input() -> None:
    plan = parse_plan(plan_dict(max_concurrency=3))
    assert isinstance(plan, ParallelExecutionPlan)
    assert plan.max_concurrency == 3
    seq = parse_plan(plan_dict(continue_on_error=True))
    assert isinstance(seq, SequentialExecutionPlan)
    assert seq.continue_on_error is True


def test_task_metadata_in_both_cases() -> None:
    camel = parse_task(task_dict(metadata={"idempotencyKey": "k", "timeout": 50}))
    snake = parse_task(task_dict(metadata={"idempotency_key": "k", "timeout": 50}))
    assert camel.metadata.idempotency_key == snake.metadata.idempotency_key == "k"
    assert camel.metadata.timeout == 50


def test_task_metadata_keeps_extra_keys() -> None:
    task = parse_task(task_dict(metadata={"owner": "team-a"}))
    assert task.to_json_dict()["metadata"]["owner"] == "team-a"


def test_models_pass_through_parse() -> None:
    task = ExecutionTask(id="t", type=TaskType.HTTP, target="http://x")
    assert parse_task(task) is task
    plan = ParallelExecutionPlan(id="p", tasks=[task])
    assert parse_plan(plan) is plan
    assert parse_plan(plan, "parallel") is plan


def test_model_of_the_wrong_kind_is_refused() -> None:
    plan = SequentialExecutionPlan(id="p", tasks=[])
    with pytest.raises(ValidationError, match="kind"):
        parse_plan(plan, "parallel")


def test_defaults() -> None:
    plan = parse_plan({"id": "p", "tasks": []})
    assert isinstance(plan, ParallelExecutionPlan)
    assert (plan.strategy, plan.max_concurrency, plan.timeout) == (Strategy.ALL, None, 30000)
    seq = parse_plan({"id": "p", "tasks": []}, "sequential")
    assert isinstance(seq, SequentialExecutionPlan)
    assert (seq.continue_on_error, seq.timeout) == (False, 60000)


# --- output --------------------------------------------------------------------------------


def test_plan_to_json_dict_is_camel_case() -> None:
    plan = parse_plan(plan_dict(max_concurrency=2))
    wire = plan.to_json_dict()
    assert wire["maxConcurrency"] == 2
    assert "max_concurrency" not in wire
    assert wire["tasks"][0]["metadata"]["idempotencyKey"] is None
    json.dumps(wire)
    assert parse_plan(wire) == plan


def test_sequential_to_json_dict_round_trips() -> None:
    plan = parse_plan(plan_dict(continueOnError=True))
    wire = plan.to_json_dict()
    assert wire["continueOnError"] is True
    assert wire["kind"] == "sequential"
    assert parse_plan(wire) == plan


def test_result_to_json_dict_is_camel_case_and_round_trips() -> None:
    result = ExecutionResult(
        task_id="t1",
        status=TaskStatus.SUCCESS,
        result={"v": 1},
        confidence=0.9,
        execution_time=12.5,
        retries=1,
        metadata={"agentId": "a1"},
    )
    wire = result.to_json_dict()
    assert wire["taskId"] == "t1"
    assert wire["executionTime"] == 12.5
    assert wire["status"] == "success"
    assert parse_result(json.loads(json.dumps(wire))) == result
    assert result.ok


def test_result_accepts_snake_case_and_ignores_unknown_fields() -> None:
    result = parse_result({"task_id": "t", "status": "timeout", "somethingNew": 1})
    assert result.status is TaskStatus.TIMEOUT
    assert not result.ok


def test_result_confidence_must_be_finite() -> None:
    with pytest.raises(ValueError, match="finite"):
        ExecutionResult(task_id="t", status=TaskStatus.SUCCESS, confidence=float("nan"))


# --- plan kind -----------------------------------------------------------------------------


def test_continue_on_error_means_sequential() -> None:
    assert plan_kind({"continueOnError": False}) == "sequential"
    assert isinstance(parse_plan(plan_dict(continueOnError=False)), SequentialExecutionPlan)


def test_kind_decides() -> None:
    assert isinstance(parse_plan(plan_dict(kind="sequential")), SequentialExecutionPlan)
    assert isinstance(parse_plan(plan_dict(kind="parallel")), ParallelExecutionPlan)
    assert plan_kind({"strategy": "race"}) == "parallel"


def test_kind_argument_forces_the_model() -> None:
    assert isinstance(parse_plan(plan_dict(), "sequential"), SequentialExecutionPlan)


def test_kind_disagreeing_with_argument_is_refused() -> None:
    with pytest.raises(ValidationError, match="kind"):
        parse_plan(plan_dict(kind="parallel"), "sequential")


def test_parallel_field_on_a_sequential_plan_is_refused() -> None:
    assert "strategy" in rejected_fields(plan_dict(continueOnError=True, strategy="race"))


# --- rejections name the field -------------------------------------------------------------


def test_unknown_task_type() -> None:
    assert rejected_fields(plan_dict(tasks=[task_dict(type="shell")])) == ["tasks.0.type"]


def test_empty_task_id() -> None:
    assert rejected_fields(plan_dict(tasks=[task_dict("")])) == ["tasks.0.id"]


def test_task_id_with_whitespace() -> None:
    assert rejected_fields(plan_dict(tasks=[task_dict("a b")])) == ["tasks.0.id"]


def test_empty_plan_id() -> None:
    assert rejected_fields(plan_dict(id="")) == ["id"]


def test_duplicate_task_ids() -> None:
    with pytest.raises(ValidationError, match="'t1' appears more than once") as info:
        parse_plan(plan_dict(tasks=[task_dict("t1"), task_dict("t1")]))
    assert [e["field"] for e in info.value.errors] == ["tasks"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {1, 2}, b"bytes", object()])
def test_non_json_payload(bad: Any) -> None:
    fields = rejected_fields(plan_dict(tasks=[task_dict(payload={"x": bad})]))
    assert fields == ["tasks.0.payload"]


def test_non_json_metadata_extra() -> None:
    fields = rejected_fields(plan_dict(tasks=[task_dict(metadata={"x": {1}})]))
    assert fields == ["tasks.0.metadata"]


def test_non_finite_priority_is_refused() -> None:
    fields = rejected_fields(plan_dict(tasks=[task_dict(metadata={"priority": float("nan")})]))
    assert fields == ["tasks.0.metadata.priority"]


def test_max_concurrency_zero() -> None:
    assert rejected_fields(plan_dict(maxConcurrency=0)) == ["maxConcurrency"]


def test_unknown_strategy() -> None:
    assert rejected_fields(plan_dict(strategy="fastest")) == ["strategy"]


def test_unknown_top_level_field() -> None:
    with pytest.raises(ValidationError, match="maxConcurency"):
        parse_plan(plan_dict(maxConcurency=3))


def test_unknown_task_field() -> None:
    assert rejected_fields(plan_dict(tasks=[task_dict(extra=1)])) == ["tasks.0.extra"]


def test_unknown_kind() -> None:
    assert rejected_fields(plan_dict(kind="diagonal")) == ["kind"]


@pytest.mark.parametrize("not_a_plan", [None, [], "plan", 3])
def test_plan_not_a_dict(not_a_plan: Any) -> None:
    with pytest.raises(ValidationError, match="expected an object"):
        parse_plan(not_a_plan)


def test_task_not_a_dict() -> None:
    with pytest.raises(ValidationError, match="expected an object"):
        parse_task(["t1"])  # type: ignore[arg-type]


def test_every_bad_field_is_named_at_once() -> None:
    fields = rejected_fields(
        plan_dict(strategy="x", maxConcurrency=0, tasks=[task_dict(type="y"), task_dict("")])
    )
    assert set(fields) == {"strategy", "maxConcurrency", "tasks.0.type", "tasks.1.id"}


def test_message_summarises_every_field() -> None:
    with pytest.raises(ValidationError) as info:
        parse_plan(plan_dict(strategy="x", timeout=-1))
    assert str(info.value).startswith("invalid plan: ")
    assert "strategy" in str(info.value)
    assert "timeout" in str(info.value)


# --- fuzz ----------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=8),
)
_junk = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=20,
)
_keys = st.sampled_from(
    [
        "id",
        "tasks",
        "kind",
        "strategy",
        "maxConcurrency",
        "max_concurrency",
        "continueOnError",
        "timeout",
        "bogus",
    ]
)
_metadata_junk = st.dictionaries(
    st.sampled_from(["timeout", "retries", "priority", "pattern", "cache", "idempotencyKey", "x"]),
    _junk,
    max_size=4,
)
_task_junk = st.dictionaries(
    st.sampled_from(["id", "type", "target", "payload", "metadata", "extra"]),
    st.one_of(_junk, _metadata_junk, st.sampled_from(["agent", "http", "t1", "x"])),
    max_size=6,
)
_plan_junk = st.dictionaries(
    _keys,
    st.one_of(
        _junk,
        st.lists(_task_junk, max_size=3),
        st.sampled_from(["parallel", "sequential", "race", "all"]),
    ),
    max_size=7,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(_plan_junk, _junk))
def test_junk_either_parses_or_raises_validation_error(data: Any) -> None:
    try:
        plan = parse_plan(data)
    except ValidationError as exc:
        assert str(exc).startswith("invalid ")
    else:
        assert isinstance(plan, ParallelExecutionPlan | SequentialExecutionPlan)
        json.dumps(plan.to_json_dict(), allow_nan=False)
