"""AsyncExecutionEngine against real workers: many awaits on one loop, cancellation, events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from taskplane import (
    AsyncExecutionEngine,
    ExecutionResult,
    PlanFailedError,
    TaskStatus,
    ValidationError,
)
from taskplane.errors import WaitTimeoutError

pytestmark = pytest.mark.integration

T = TypeVar("T")


def nap(task_id: str, ms: int) -> dict[str, Any]:
    return {"id": task_id, "type": "function", "target": "sleep", "payload": {"ms": ms}}


def run(cluster: Any, scenario: Callable[[AsyncExecutionEngine], Awaitable[T]]) -> T:
    """Run *scenario* with a fresh async engine on a fresh event loop."""

    async def main() -> T:
        async with AsyncExecutionEngine(cluster.settings) as aengine:
            return await scenario(aengine)

    return asyncio.run(main())


def test_task_parallel_and_sequential(cluster: Any, uid: str) -> None:
    async def scenario(aengine: AsyncExecutionEngine) -> list[Any]:
        one = await aengine.execute_task(
            {"id": "t", "type": "function", "target": "add", "payload": {"a": 2, "b": 40}}
        )
        par = await aengine.execute_parallel(
            {"id": f"aio-par-{uid}", "tasks": [nap("x", 10), nap("y", 10)]}
        )
        seq = await aengine.execute_sequential(
            {
                "id": f"aio-seq-{uid}",
                "tasks": [
                    {"id": "a", "type": "function", "target": "add", "payload": {"a": 1, "b": 1}},
                    {"id": "b", "type": "function", "target": "echo"},
                ],
            }
        )
        return [one, par, seq]

    one, par, seq = run(cluster, scenario)
    assert one.status is TaskStatus.SUCCESS and one.result == 42
    assert [r.task_id for r in par] == ["x", "y"]
    assert seq[1].result["previous"]["result"] == 2


def test_many_concurrent_awaits_use_no_thread_each(cluster: Any, uid: str) -> None:
    plans = 40

    async def scenario(aengine: AsyncExecutionEngine) -> tuple[list[list[ExecutionResult]], int]:
        handles = await asyncio.gather(
            *(
                aengine.submit({"id": f"aio-many-{uid}-{i}", "tasks": [nap(f"n{i}", 400)]})
                for i in range(plans)
            )
        )
        before = threading.active_count()
        peak = before
        waits = asyncio.gather(*(h.wait(timeout=30) for h in handles))
        while not waits.done():
            peak = max(peak, threading.active_count())
            await asyncio.sleep(0.02)
        return await waits, peak - before

    results, extra_threads = run(cluster, scenario)
    assert [r[0].task_id for r in results] == [f"n{i}" for i in range(plans)]
    assert all(r[0].status is TaskStatus.SUCCESS for r in results)
    # 40 plans waited on at once; the only threads are the loop's small executor
    assert extra_threads < 10


def test_cancelling_the_awaiting_coroutine_leaves_the_plan_running(cluster: Any, uid: str) -> None:
    async def scenario(aengine: AsyncExecutionEngine) -> tuple[str, list[ExecutionResult]]:
        handle = await aengine.submit({"id": f"aio-cancel-{uid}", "tasks": [nap("slow", 800)]})
        waiter = asyncio.create_task(handle.wait())
        await asyncio.sleep(0.2)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        state = (await handle.status())["state"]
        return state, await handle.wait(timeout=20)

    state, results = run(cluster, scenario)
    assert state == "running"
    assert results[0].status is TaskStatus.SUCCESS


def test_cancel_on_request_and_wait_timeout(cluster: Any, uid: str) -> None:
    async def scenario(aengine: AsyncExecutionEngine) -> PlanFailedError:
        plan = {
            "id": f"aio-stop-{uid}",
            "maxConcurrency": 1,
            "tasks": [nap("a", 600), nap("b", 600), nap("c", 600)],
        }
        handle = await aengine.submit(plan)
        with pytest.raises(WaitTimeoutError):
            await handle.wait(timeout=0.2)
        await handle.cancel()
        with pytest.raises(PlanFailedError) as failed:
            await handle.wait(timeout=20)
        return failed.value

    error = run(cluster, scenario)
    assert "cancelled" in str(error)
    assert {r.status for r in error.results[1:]} == {TaskStatus.CANCELLED}


def test_events_by_subscription_and_by_handler(cluster: Any, uid: str) -> None:
    plan_id = f"aio-events-{uid}"

    async def scenario(aengine: AsyncExecutionEngine) -> tuple[list[str], list[str]]:
        handled: list[str] = []

        async def on_started(event: dict[str, Any]) -> None:
            if event["data"].get("planId") == plan_id:
                handled.append(event["data"]["taskId"])

        subscription = await aengine.on("task:started", on_started)
        completed: list[str] = []
        async with aengine.subscribe("task:completed") as events:
            await aengine.execute_parallel({"id": plan_id, "tasks": [nap("e1", 10), nap("e2", 10)]})
            give_up = time.monotonic() + 10
            async for event in events:
                if event["data"].get("planId") == plan_id:
                    assert event["type"] == "task:completed"
                    completed.append(event["data"]["taskId"])
                if len(completed) == 2 or time.monotonic() > give_up:
                    break
        await subscription.close()
        return sorted(completed), sorted(handled)

    completed, started = run(cluster, scenario)
    assert completed == ["e1", "e2"]
    assert started == ["e1", "e2"]


def test_invalid_plan_names_the_field(cluster: Any) -> None:
    async def scenario(aengine: AsyncExecutionEngine) -> None:
        await aengine.submit({"id": "bad", "strategy": "sometimes", "tasks": [nap("a", 1)]})

    with pytest.raises(ValidationError, match="strategy"):
        run(cluster, scenario)
