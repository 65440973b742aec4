"""Nested patterns through real workers: expansion without blocking, guard rails, caching."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from taskplane.devtools.cluster import start_worker, wait_ready
from tests.integration.conftest import (
    LOG_DIR,
    ON_REDIS_CLUSTER,
    ROOT,
    drop_queue,
    own_broker,
    own_settings,
)

pytestmark = pytest.mark.integration


def pattern_task(task_id: str, name: str, **payload: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "pattern", "target": name, "payload": payload}


@pytest.fixture(scope="module")
def small_engine(cluster: Any) -> Iterator[ExecutionEngine]:
    """An engine whose broker only a single 2-thread worker consumes."""
    env = {**cluster.env, **own_broker(cluster, 1)}
    engine = ExecutionEngine(own_settings(cluster, env))
    worker = start_worker(env, concurrency=2, name="small", log_dir=LOG_DIR, root=ROOT)
    try:
        wait_ready([worker], engine.app.control.ping)
        yield engine
    finally:
        worker.stop()
        if ON_REDIS_CLUSTER:
            drop_queue(engine)
        engine.close()


def test_patterns_three_deep_in_a_plan_on_two_threads(
    small_engine: ExecutionEngine, uid: str
) -> None:
    results = small_engine.execute_parallel(
        {
            "id": f"nest-{uid}",
            "strategy": "all",
            "tasks": [
                {**pattern_task("top", "t-top", word=uid), "metadata": {"cache": False}},
                {"id": "plain", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}},
            ],
            "timeout": 20000,
        }
    )
    top = results[0]
    assert top.status is TaskStatus.SUCCESS, top.error
    assert top.result == [f"wrapped {uid}1", f"wrapped {uid}2", f"wrapped {uid}3"]
    assert top.confidence == pytest.approx(0.85)
    assert top.metadata["childPlanId"] == f"nest-{uid}/top"
    assert results[1].result == 3


def test_sequential_pattern_sees_previous_and_best_confidence(
    engine: ExecutionEngine, uid: str
) -> None:
    leaf = engine.execute_task(
        {**pattern_task("l", "t-leaf", word=uid), "metadata": {"cache": False}}
    )
    assert leaf.status is TaskStatus.SUCCESS
    assert leaf.result == f"{uid}-high" and leaf.confidence == 0.9


def test_consensus_pattern(engine: ExecutionEngine) -> None:
    result = engine.execute_task({**pattern_task("c", "t-consensus"), "metadata": {"cache": False}})
    assert result.result == "yes"
    assert result.confidence == pytest.approx(2 / 3 * 0.8)


def test_pattern_cycle_fails_naming_the_chain(engine: ExecutionEngine) -> None:
    result = engine.execute_task(pattern_task("cy", "t-cycle-a"))
    assert result.status is TaskStatus.FAILURE
    assert "pattern cycle: t-cycle-a -> t-cycle-b -> t-cycle-a" in (result.error or "")


def test_pattern_depth_limit(engine: ExecutionEngine) -> None:
    result = engine.execute_task(pattern_task("d", "t-deep-1"))
    assert result.status is TaskStatus.FAILURE
    assert "deeper than 5" in (result.error or "")
    assert "t-deep-1 -> t-deep-2 -> t-deep-3 -> t-deep-4 -> t-deep-5 -> t-deep-6" in (
        result.error or ""
    )


def test_unknown_pattern_fails_clearly(engine: ExecutionEngine) -> None:
    result = engine.execute_task(pattern_task("u", "no-such-pattern"))
    assert result.status is TaskStatus.FAILURE
    assert result.error == "Pattern no-such-pattern not found"
    assert result.retries == 0


def test_pattern_result_is_cached_on_second_run(engine: ExecutionEngine, uid: str) -> None:
    first = engine.execute_task(pattern_task("p1", "t-leaf", word=f"cache-{uid}"))
    second = engine.execute_task(pattern_task("p2", "t-leaf", word=f"cache-{uid}"))
    assert first.metadata["cached"] is False and second.metadata["cached"] is True
    assert second.result == first.result == f"cache-{uid}-high"


class StandInPatternEngine:
    """Shaped like a control plane's PatternEngine, built around our execution engine."""

    def __init__(self, execution_engine: ExecutionEngine) -> None:
        self.execution_engine = execution_engine
        self.calls: list[tuple[str, Any, dict[str, Any]]] = []

    def execute_pattern(self, name: str, input: Any, options: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((name, input, options))
        results = self.execution_engine.execute_parallel(
            {
                "id": f"cp-{options['parentTaskId']}-{len(self.calls)}",
                "tasks": [
                    {"id": "sum", "type": "function", "target": "add", "payload": input},
                ],
            }
        )
        return {
            "id": "exec-1",
            "status": "completed",
            "result": results[0].result,
            "metrics": {"confidence": 0.91, "executionTime": 12.0},
        }


def test_control_plane_engine_through_the_adapter(engine: ExecutionEngine, uid: str) -> None:
    from taskplane.patterns import PatternExecutorAdapter

    control_plane = StandInPatternEngine(engine)
    engine.set_pattern_executor(PatternExecutorAdapter(control_plane))
    try:
        result = engine.execute_task(
            {**pattern_task(f"cp-{uid}", "anything", a=40, b=2), "metadata": {"cache": False}}
        )
    finally:
        engine._pattern_executor = None
    assert result.status is TaskStatus.SUCCESS, result.error
    assert result.result == 42 and result.confidence == 0.91
    name, payload, options = control_plane.calls[0]
    assert name == "anything" and payload == {"a": 40, "b": 2}
    assert options["parentTaskId"] == f"cp-{uid}"


def test_engine_as_pattern_executor(engine: ExecutionEngine, uid: str) -> None:
    outcome = engine.pattern_executor.execute("t-leaf", {"word": f"ex-{uid}"})
    assert outcome.status == "completed"
    assert outcome.result == f"ex-{uid}-high" and outcome.confidence == 0.9


def test_cancel_reaches_a_running_pattern(engine: ExecutionEngine, cluster: Any, uid: str) -> None:
    import time

    from tests.support import counter, wait_until

    key = f"{uid}:slow"
    handle = engine.submit(
        {
            "id": f"cancel-nested-{uid}",
            "tasks": [
                {
                    **pattern_task("slow", "t-slow", url=cluster.state_url, key=key),
                    "metadata": {"cache": False},
                }
            ],
        }
    )
    assert wait_until(lambda: counter(cluster, key) >= 1)  # the child's first task is running
    handle.cancel()
    with pytest.raises(Exception, match="cancelled"):
        handle.wait(5)
    child = engine.store.status(f"cancel-nested-{uid}/slow")
    assert child["state"] == "cancelled"
    time.sleep(1.0)
    assert counter(cluster, key) <= 2  # the rest of the child's tasks never ran


def test_workers_can_hand_patterns_to_a_control_plane(cluster: Any, uid: str) -> None:
    env = {
        **cluster.env,
        **own_broker(cluster, 2),
        "TASKPLANE_PATTERN_EXECUTOR": "tests.functions:make_pattern_executor",
    }
    engine = ExecutionEngine(own_settings(cluster, env))
    worker = start_worker(env, concurrency=2, name="cp", log_dir=LOG_DIR, root=ROOT)
    try:
        wait_ready([worker], engine.app.control.ping)
        result = engine.execute_task(
            {**pattern_task(f"cp-{uid}", "code-review", code="x"), "metadata": {"cache": False}}
        )
    finally:
        worker.stop()
        if ON_REDIS_CLUSTER:
            drop_queue(engine)
        engine.close()
    assert result.status is TaskStatus.SUCCESS, result.error
    assert result.result["pattern"] == "code-review" and result.result["input"] == {"code": "x"}
    assert result.confidence == 0.88
    assert result.metadata["patternExecutionId"] == f"cp-cp-{uid}"
