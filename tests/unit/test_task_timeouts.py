"""Submit refuses a task whose attempt could outlive the broker's visibility timeout."""

from __future__ import annotations

from typing import Any

import pytest

from taskplane.config import Settings
from taskplane.engine import ExecutionEngine
from taskplane.errors import ValidationError
from taskplane.models import parse_plan
from taskplane.tasks.canvas import check_task_timeouts, effective_timeout_ms

SHORT = Settings(visibility_timeout_s=20, default_timeout=5000)  # tasks may run 14 s


def plan(*timeouts: int | None) -> Any:
    tasks = []
    for i, timeout in enumerate(timeouts):
        task: dict[str, Any] = {"id": f"t{i}", "type": "function", "target": "echo"}
        if timeout is not None:
            task["metadata"] = {"timeout": timeout}
        tasks.append(task)
    return parse_plan({"id": "p", "tasks": tasks})


def test_the_effective_timeout_is_the_tasks_own_else_the_default() -> None:
    parsed = plan(None, 9000)
    assert [effective_timeout_ms(t, SHORT) for t in parsed.tasks] == [5000, 9000]


def test_tasks_up_to_the_limit_pass() -> None:
    check_task_timeouts(plan(None, 14_000, 1), SHORT)


def test_a_longer_task_is_refused_naming_its_field_and_the_setting() -> None:
    with pytest.raises(ValidationError) as info:
        check_task_timeouts(plan(None, 14_001, 3000, 60_000), SHORT)
    assert [e["field"] for e in info.value.errors] == [
        "tasks[1].metadata.timeout",
        "tasks[3].metadata.timeout",
    ]
    message = str(info.value)
    assert message.startswith("invalid plan")
    assert "TASKPLANE_VISIBILITY_TIMEOUT_S" in message and "14000 ms" in message


def test_a_default_timeout_beyond_the_limit_names_the_default() -> None:
    settings = Settings(visibility_timeout_s=20, default_timeout=30_000)
    with pytest.raises(ValidationError) as info:
        check_task_timeouts(plan(None), settings)
    assert [e["field"] for e in info.value.errors] == ["TASKPLANE_DEFAULT_TIMEOUT"]


def test_no_limit_on_an_amqp_broker() -> None:
    settings = Settings(broker_url="amqp://guest@127.0.0.1//", visibility_timeout_s=20)
    check_task_timeouts(plan(24 * 3600 * 1000), settings)


def test_an_agent_policy_timeout_longer_than_the_limit_is_refused_at_registration(
    redis_url: str, redis_client: Any
) -> None:
    settings = SHORT.model_copy(update={"redis_url": redis_url, "key_prefix": "tp-unit"})
    with ExecutionEngine(settings) as engine:
        with pytest.raises(ValidationError) as info:
            engine.register_agent("long", "http://127.0.0.1:9", policy={"timeout": 14_001})
        assert info.value.errors[0]["field"] == "policy.timeout"
        assert "TASKPLANE_VISIBILITY_TIMEOUT_S" in str(info.value)
        assert engine.list_agents() == []  # nothing half-registered
        engine.register_agent("ok", "http://127.0.0.1:9", policy={"timeout": 14_000},
                              check_health=False)  # fmt: skip
        assert [a.agent_id for a in engine.list_agents()] == ["ok"]
