"""``as_completed`` (sync and asyncio) against real workers: order, completeness, endings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from taskplane import (
    AsyncExecutionEngine,
    ExecutionEngine,
    ExecutionResult,
    PlanFailedError,
    PlanHandle,
    TaskStatus,
)
from taskplane.errors import WaitTimeoutError

pytestmark = pytest.mark.integration


def nap(task_id: str, ms: int) -> dict[str, Any]:
    return {"id": task_id, "type": "function", "target": "sleep", "payload": {"ms": ms}}


def boom(task_id: str) -> dict[str, Any]:
    return {"id": task_id, "type": "function", "target": "fail"}


def staggered(plan_id: str) -> dict[str, Any]:
    """Three tasks that finish in the reverse of their plan order."""
    return {
        "id": plan_id,
        "strategy": "allSettled",
        "maxConcurrency": 3,
        "tasks": [nap("slow", 900), nap("middle", 450), nap("fast", 20)],
    }


def failing_midway(plan_id: str) -> dict[str, Any]:
    """One task at a time: the second fails, so the last two never run."""
    return {
        "id": plan_id,
        "strategy": "all",
        "maxConcurrency": 1,
        "tasks": [nap("first", 20), boom("second"), nap("third", 20), nap("fourth", 20)],
    }


def ids(results: list[ExecutionResult]) -> list[str]:
    return [r.task_id for r in results]


def test_results_come_in_completion_order(engine: ExecutionEngine, uid: str) -> None:
    handle = engine.submit(staggered(f"asc-order-{uid}"))
    seen = list(handle.as_completed(timeout=20))
    assert ids(seen) == ["fast", "middle", "slow"]
    assert all(r.status is TaskStatus.SUCCESS for r in seen)
    # the recorded results agree with what was streamed
    assert sorted(ids(handle.wait())) == sorted(ids(seen))


def test_a_plan_failing_midway_yields_every_task_once(engine: ExecutionEngine, uid: str) -> None:
    handle = engine.submit(failing_midway(f"asc-fail-{uid}"))
    seen = list(handle.as_completed(timeout=20))
    assert ids(seen)[:2] == ["first", "second"]
    assert sorted(ids(seen)) == ["first", "fourth", "second", "third"]
    statuses = {r.task_id: r.status for r in seen}
    assert statuses["second"] is TaskStatus.FAILURE
    assert statuses["third"] is statuses["fourth"] is TaskStatus.CANCELLED


def test_tasks_cut_off_by_the_deadline_come_last_as_timeout(
    engine: ExecutionEngine, uid: str
) -> None:
    plan = {
        "id": f"asc-deadline-{uid}",
        "strategy": "allSettled",
        "timeout": 700,
        "tasks": [nap("quick", 20), nap("sleepy", 2500)],
    }
    seen = list(engine.submit(plan).as_completed(timeout=20))
    assert ids(seen) == ["quick", "sleepy"]
    assert [r.status for r in seen] == [TaskStatus.SUCCESS, TaskStatus.TIMEOUT]


def test_a_second_reader_sees_the_same_stream(engine: ExecutionEngine, uid: str) -> None:
    handle = engine.submit(staggered(f"asc-twice-{uid}"))
    first = ids(list(handle.as_completed(timeout=20)))
    again = ids(list(handle.as_completed(timeout=1)))  # a late reader replays from the start
    assert first == again == ["fast", "middle", "slow"]


def test_reader_timeout_leaves_the_plan_running(engine: ExecutionEngine, uid: str) -> None:
    handle = engine.submit({"id": f"asc-wait-{uid}", "tasks": [nap("long", 1500)]})
    with pytest.raises(WaitTimeoutError):
        list(handle.as_completed(timeout=0.3))
    assert handle.status()["state"] == "running"
    assert ids(list(handle.as_completed(timeout=20))) == ["long"]


def test_an_empty_plan_yields_nothing_and_an_unknown_one_fails(
    engine: ExecutionEngine, uid: str
) -> None:
    assert list(engine.submit({"id": f"asc-empty-{uid}", "tasks": []}).as_completed()) == []
    with pytest.raises(PlanFailedError, match="unknown or expired"):
        list(PlanHandle(engine, f"asc-nobody-{uid}").as_completed())


@pytest.mark.single_redis
def test_async_as_completed_order_and_failure(cluster: Any, uid: str) -> None:
    async def scenario() -> tuple[list[str], list[ExecutionResult]]:
        async with AsyncExecutionEngine(cluster.settings) as aengine:
            ordered = await aengine.submit(staggered(f"asc-aio-{uid}"))
            order = [r.task_id async for r in ordered.as_completed(timeout=20)]
            failing = await aengine.submit(failing_midway(f"asc-aio-fail-{uid}"))
            return order, [r async for r in failing.as_completed(timeout=20)]

    order, failed = asyncio.run(scenario())
    assert order == ["fast", "middle", "slow"]
    assert ids(failed)[:2] == ["first", "second"] and len(set(ids(failed))) == 4
    assert [r.status for r in failed[2:]] == [TaskStatus.CANCELLED] * 2
