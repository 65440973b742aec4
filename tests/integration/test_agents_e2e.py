"""Agent tasks end to end: engine → Redis → worker process → real HTTP/gRPC agents."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from tests.agents import GrpcAgentServer, HttpAgentServer
from tests.support import wait_until

pytestmark = pytest.mark.integration


def agent_task(task_id: str, agent_id: str, **payload: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "agent", "target": agent_id, "payload": payload}


def test_http_agent_round_trip(engine: ExecutionEngine, uid: str) -> None:
    with HttpAgentServer(confidence=0.75) as agent:
        info = engine.register_agent(f"http-{uid}", agent.endpoint, capabilities=["echo"])
        assert info.healthy is True
        result = engine.execute_task(agent_task("t1", f"http-{uid}", text="hello"))
        assert result.status is TaskStatus.SUCCESS, result.error
        assert result.result == {"echo": {"text": "hello"}}
        assert result.confidence == 0.75
        assert result.metadata["agentId"] == f"http-{uid}"
        headers = {k.lower(): v for k, v in agent.requests[0]["headers"].items()}
        assert headers["x-taskplane-task-id"] == "t1" and headers["idempotency-key"]


def test_grpc_agent_round_trip_with_struct(engine: ExecutionEngine, uid: str) -> None:
    data = {"nested": {"list": [1, "two", True, None], "n": 2.5}}
    with GrpcAgentServer(confidence=0.66) as agent:
        engine.register_agent(f"grpc-{uid}", agent.endpoint, protocol="grpc")
        result = engine.execute_task(agent_task("g1", f"grpc-{uid}", task="summarise", data=data))
        assert result.status is TaskStatus.SUCCESS, result.error
        assert result.confidence == 0.66
        assert agent.requests[0]["data"] == data
        assert agent.requests[0]["task_description"] == "summarise"


def test_unknown_agent_fails_without_retry(engine: ExecutionEngine, uid: str) -> None:
    result = engine.execute_task(agent_task("t", f"ghost-{uid}"))
    assert result.status is TaskStatus.FAILURE
    assert result.error == f"Agent ghost-{uid} not found"
    assert result.retries == 0


def test_cached_agent_result_does_not_reach_the_agent(engine: ExecutionEngine, uid: str) -> None:
    hits: list[str] = []
    engine.on("task:cache-hit", lambda e: hits.append(e["data"]["taskId"]))
    with HttpAgentServer(confidence=0.95) as agent:
        engine.register_agent(f"c-{uid}", agent.endpoint, capabilities=["b", "a"])
        first = engine.execute_task(agent_task("c1", f"c-{uid}", q=uid))
        second = engine.execute_task(agent_task("c2", f"c-{uid}", q=uid))
        assert first.metadata["cached"] is False and second.metadata["cached"] is True
        assert second.result == first.result and second.task_id == "c2"
        assert agent.calls == 1
        low = HttpAgentServer(confidence=0.5)
        with low:
            engine.register_agent(f"low-{uid}", low.endpoint)
            engine.execute_task(agent_task("l1", f"low-{uid}", q=uid))
            engine.execute_task(agent_task("l2", f"low-{uid}", q=uid))
            assert low.calls == 2  # below the confidence threshold: never cached
    seen = wait_until(lambda: "c2" in hits, timeout_s=3)
    engine.off("task:cache-hit")
    assert seen, hits


def test_breaker_opens_cluster_wide_and_fails_fast(engine: ExecutionEngine, uid: str) -> None:
    opened: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_open(event: dict[str, Any]) -> None:
        if event["data"].get("agentId") == f"flaky-{uid}":
            with lock:
                opened.append(event["data"])

    engine.on("circuit:open", on_open)
    with HttpAgentServer(mode="fail") as agent:
        engine.register_agent(f"flaky-{uid}", agent.endpoint)
        tasks = [
            {**agent_task(f"f{i}", f"flaky-{uid}", i=i), "metadata": {"retries": 0, "cache": False}}
            for i in range(8)
        ]
        results = engine.execute_parallel(
            {"id": f"br-{uid}", "strategy": "allSettled", "maxConcurrency": 1, "tasks": tasks}
        )
        assert all(r.status is TaskStatus.FAILURE for r in results)
        assert agent.calls == 5
        assert "circuit" in (results[-1].error or "").lower()
        engine.register_agent(f"flaky-{uid}", agent.endpoint)  # re-registering keeps the state
        again = engine.execute_task({**tasks[0], "id": "after"})
        assert "circuit" in (again.error or "").lower() and agent.calls == 5
    wait_until(lambda: bool(opened), timeout_s=3)
    engine.off("circuit:open")
    assert opened and opened[0]["failures"] >= 5


def test_agent_confidence_is_tracked(engine: ExecutionEngine, uid: str) -> None:
    with HttpAgentServer(confidence=0.8) as agent:
        engine.register_agent(f"t-{uid}", agent.endpoint)
        tasks = [
            {**agent_task(f"t{i}", f"t-{uid}", i=i), "metadata": {"cache": False}}
            for i in range(50)
        ]
        results = engine.execute_parallel({"id": f"tr-{uid}", "tasks": tasks, "maxConcurrency": 16})
        assert len(results) == 50
    tracker = engine.tracker
    wait_until(lambda: tracker.get_agent_stats(f"t-{uid}")["totalExecutions"] >= 50, timeout_s=10)
    stats = tracker.get_agent_stats(f"t-{uid}")
    assert stats["totalExecutions"] == 50
    assert stats["avgConfidence"] == pytest.approx(0.8)
    assert stats["successRate"] == 1.0
