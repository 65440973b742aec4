"""AsyncExecutionEngine against real workers: many awaits on one loop, cancellation, events."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
import redis.asyncio as aioredis

from taskplane import (
    AsyncExecutionEngine,
    ExecutionResult,
    PlanFailedError,
    TaskStatus,
    ValidationError,
)
from taskplane.aio import MAX_CONNECTIONS
from taskplane.aio_watch import RunWatcher
from taskplane.completions import START
from taskplane.errors import WaitTimeoutError

pytestmark = [pytest.mark.integration, pytest.mark.single_redis]

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
        empty = await (await aengine.submit({"id": f"aio-empty-{uid}", "tasks": []})).wait()
        return [one, par, seq, empty]

    one, par, seq, empty = run(cluster, scenario)
    assert empty == []
    assert one.status is TaskStatus.SUCCESS and one.result == 42
    assert [r.task_id for r in par] == ["x", "y"]
    assert seq[1].result["previous"]["result"] == 2


def test_many_concurrent_awaits_use_no_thread_and_no_connection_each(
    cluster: Any, uid: str
) -> None:
    plans = 150  # more than redis.asyncio's default pool of 100 connections

    async def scenario(
        aengine: AsyncExecutionEngine,
    ) -> tuple[list[list[ExecutionResult]], int, int]:
        handles = await asyncio.gather(
            *(
                aengine.submit({"id": f"aio-many-{uid}-{i}", "tasks": [nap(f"n{i}", 100)]})
                for i in range(plans)
            )
        )
        before = threading.active_count()
        peak_threads, peak_connections = before, 0
        pool = aengine.redis.connection_pool
        waits = asyncio.gather(*(h.wait(timeout=60) for h in handles))
        while not waits.done():
            peak_threads = max(peak_threads, threading.active_count())
            opened = len(pool._in_use_connections) + len(pool._available_connections)  # type: ignore[attr-defined]
            peak_connections = max(peak_connections, opened)
            await asyncio.sleep(0.02)
        return await waits, peak_threads - before, peak_connections

    results, extra_threads, connections = run(cluster, scenario)
    assert [r[0].task_id for r in results] == [f"n{i}" for i in range(plans)]
    assert all(r[0].status is TaskStatus.SUCCESS for r in results)
    # the only threads are the loop's small executor; all waits share one blocking read
    assert extra_threads < 10
    assert connections <= MAX_CONNECTIONS < plans


def test_the_watcher_wakes_waiters_and_a_late_one_at_once(
    redis_client: Any, redis_url: str
) -> None:
    async def scenario() -> tuple[str, str, float, str]:
        client = aioredis.Redis.from_url(redis_url, decode_responses=True)
        watcher = RunWatcher(client, prefix="test")
        try:
            first = asyncio.create_task(watcher.changed("s1", START, 10))
            await asyncio.sleep(0.1)  # the read is blocked on s1 alone now
            started = time.monotonic()
            late = asyncio.create_task(watcher.changed("s2", START, 10))
            await asyncio.sleep(0.1)
            await client.xadd("s2", {"i": "0"})
            woke_late = await late
            late_s = time.monotonic() - started
            await client.xadd("s1", {"i": "0"})
            woke_first = await first
            quiet = await watcher.changed("s1", woke_first, 0.2)  # nothing newer: times out
            return woke_first, woke_late, late_s, quiet
        finally:
            await watcher.close()
            await client.aclose()

    woke_first, woke_late, late_s, quiet = asyncio.run(scenario())
    assert woke_first != START and woke_late != START
    assert late_s < 2  # not a whole slice (5 s): the late waiter poked the read
    assert quiet == woke_first


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
