"""Events and the cache through real workers."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from tests.support import counter, rec, wait_until

pytestmark = pytest.mark.integration


def test_every_started_task_completes_or_fails_in_events(engine: ExecutionEngine, uid: str) -> None:
    seen: list[dict[str, Any]] = []
    lock = threading.Lock()

    def collect(event: dict[str, Any]) -> None:
        if event["data"].get("planId") == f"ev-{uid}":
            with lock:
                seen.append(event)

    engine.on("*", collect)
    try:
        tasks = [
            {"id": f"t{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 0}}
            for i in range(18)
        ] + [{"id": f"bad{i}", "type": "function", "target": "fail"} for i in range(2)]
        engine.execute_parallel({"id": f"ev-{uid}", "strategy": "allSettled", "tasks": tasks})
        wait_until(lambda: sum(e["type"] != "task:started" for e in list(seen)) >= 20)
    finally:
        engine.off("*", collect)
    started = {e["data"]["taskId"] for e in seen if e["type"] == "task:started"}
    completed = {e["data"]["taskId"] for e in seen if e["type"] == "task:completed"}
    failed = {e["data"]["taskId"] for e in seen if e["type"] == "task:failed"}
    assert started == {f"t{i}" for i in range(18)} | {"bad0", "bad1"}
    assert completed == {f"t{i}" for i in range(18)} and failed == {"bad0", "bad1"}
    sample = next(e for e in seen if e["type"] == "task:completed")
    assert {"taskId", "result", "confidence", "executionTime", "planId", "worker"} <= set(
        sample["data"]
    )
    assert isinstance(sample["timestamp"], float)


def test_handler_that_raises_does_not_stop_delivery(engine: ExecutionEngine, uid: str) -> None:
    got: list[str] = []

    def broken(_event: dict[str, Any]) -> None:
        raise RuntimeError("listener bug")

    def good(event: dict[str, Any]) -> None:
        if event["data"].get("planId", "") == f"task:{uid}":
            got.append(event["type"])

    engine.on("task:completed", broken)
    engine.on("task:completed", good)
    try:
        engine.execute_task(
            {"id": "x", "type": "function", "target": "noop", "metadata": {"idempotencyKey": uid}}
        )
        wait_until(lambda: bool(got))
    finally:
        engine.off("task:completed")
    assert got == ["task:completed"]


def test_opted_in_function_result_is_cached(
    engine: ExecutionEngine, cluster: Any, uid: str
) -> None:
    key = f"{uid}:cached"
    task = {**rec("c", cluster, key, confidence=0.9), "metadata": {"cache": True}}
    first = engine.execute_task(task)
    second = engine.execute_task(task)
    assert first.status is TaskStatus.SUCCESS and first.metadata["cached"] is False
    assert second.status is TaskStatus.SUCCESS and second.metadata["cached"] is True
    assert second.result == first.result
    assert counter(cluster, key) == 1
    assert engine.cache.stats()["hits"] >= 1
