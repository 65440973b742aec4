"""Waiting holds no worker slot: retries and rate-limit waits are Celery retries.

These tests run their own small clusters (their own broker and state
databases, workers with few slots and a low rate limit), so what one agent's
waiting costs the others is visible: with a slot held per waiting task, the
healthy plans below would queue behind the sick agent's backlog for seconds.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from tests.agents import HttpAgentServer
from tests.integration.celery_events import CeleryEvents
from tests.integration.small import ARRIVAL_JITTER_S, SmallCluster, agent_task, small_cluster
from tests.support import wait_until

pytestmark = pytest.mark.integration

#: Broker and state databases of these clusters (the shared test cluster uses 13 and 14).
BROKER_DB, STATE_DB = 7, 8


@pytest.fixture
def small(redis_url: str) -> Iterator[SmallCluster]:
    """An engine and no workers yet, on databases of its own, 4 calls/s per agent."""
    env = {
        "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY": "1000",
        "TASKPLANE_RATE_LIMIT__MAX_REQUESTS": "4",
        "TASKPLANE_RATE_LIMIT__WINDOW_MS": "1000",
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "12",
        "TASKPLANE_EVENTS_ENABLED": "true",
    }
    with small_cluster(
        redis_url,
        broker_db=BROKER_DB,
        state_db=STATE_DB,
        env=env,
        default_timeout=5000,
        visibility_timeout_s=12,
    ) as cluster:
        yield cluster


def healthy_plan_seconds(engine: ExecutionEngine, agent_id: str, plan_id: str) -> float:
    started = time.monotonic()
    results = engine.execute_parallel(
        {"id": plan_id, "tasks": [agent_task(f"h{i}", agent_id) for i in range(3)]}
    )
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 3
    return time.monotonic() - started


def test_a_retry_is_a_celery_retry_and_frees_the_slot(small: SmallCluster, uid: str) -> None:
    small.add_worker("one", slots=4)
    with (
        HttpAgentServer("ok") as sick,
        HttpAgentServer("slow", delay_ms=50) as healthy,
        CeleryEvents(small.engine) as events,
    ):
        sick.first_mode, sick.first_calls, sick.retry_after = "throttle", 1, "3"
        small.engine.register_agent(f"sick-{uid}", sick.endpoint)
        small.engine.register_agent(f"ok-{uid}", healthy.endpoint)
        retrying: list[dict[str, Any]] = []
        small.engine.on("task:retrying", lambda e: retrying.append(e["data"]))
        backlog = small.engine.submit(
            {"id": f"sick-{uid}", "maxConcurrency": 16, "strategy": "allSettled",
             "tasks": [agent_task(f"s{i}", f"sick-{uid}") for i in range(16)]}
        )  # fmt: skip
        assert wait_until(lambda: sick.calls >= 16, timeout_s=10), sick.calls
        # 16 tasks wait out their Retry-After on a worker with 4 slots: the slots are free
        took = healthy_plan_seconds(small.engine, f"ok-{uid}", f"ok-{uid}")
        assert took < 1.0, f"the healthy plan took {took:.2f} s behind the waiting backlog"
        results = backlog.wait(30)

        def retried_then_succeeded() -> bool:  # a worker's events come in batches
            retried = {e["uuid"] for e in events.of_type("task-retried")}
            succeeded = {e["uuid"] for e in events.of_type("task-succeeded")}
            return len(retried) == 16 and retried <= succeeded  # RETRY, then the final state

        assert wait_until(retried_then_succeeded, timeout_s=5)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 16
    assert {r.retries for r in results} == {1} and {r.metadata["attempts"] for r in results} == {2}
    assert wait_until(lambda: len(retrying) >= 16, timeout_s=5)
    assert {(e["attempt"], e["delay"]) for e in retrying} == {(1, 3000.0)}
    # the countdown was the Retry-After: each task's second call came 3 s after its first
    by_task: dict[str, list[float]] = {}
    for request, stamp in zip(sick.requests, sick.timestamps, strict=True):
        by_task.setdefault(request["headers"]["X-Taskplane-Task-Id"], []).append(stamp)
    gaps = [stamps[1] - stamps[0] for stamps in by_task.values()]
    assert len(gaps) == 16 and all(2.9 <= gap < 4.5 for gap in gaps), gaps


def test_a_rate_limited_backlog_drains_at_the_limit_across_two_workers(
    small: SmallCluster, uid: str
) -> None:
    small.add_worker("left", slots=4)
    small.add_worker("right", slots=4)
    with HttpAgentServer("ok") as limited, HttpAgentServer("slow", delay_ms=50) as healthy:
        small.engine.register_agent(f"lim-{uid}", limited.endpoint)
        small.engine.register_agent(f"ok-{uid}", healthy.endpoint)
        backlog = small.engine.submit(
            {"id": f"lim-{uid}", "maxConcurrency": 16, "strategy": "allSettled",
             "tasks": [agent_task(f"l{i}", f"lim-{uid}") for i in range(16)]}
        )  # fmt: skip
        assert wait_until(lambda: limited.calls >= 4, timeout_s=5)
        took = healthy_plan_seconds(small.engine, f"ok-{uid}", f"ok2-{uid}")
        results = backlog.wait(30)
        stamps = sorted(limited.timestamps)
    assert took < 1.0, f"the healthy plan took {took:.2f} s behind the limited backlog"
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 16
    assert {r.retries for r in results} == {0}  # a wait for a slot is not an attempt
    assert limited.calls == 16
    window = 1.0 - ARRIVAL_JITTER_S
    busiest = max(sum(1 for s in stamps if first <= s < first + window) for first in stamps)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    assert busiest <= 4, f"{busiest} calls within one window; gaps {gaps}"
    assert stamps[-1] - stamps[0] >= 3.0 - ARRIVAL_JITTER_S  # 16 calls at 4/s: 3 more windows
    assert stamps[-1] - stamps[0] < 5.0, f"the backlog drained slower than its limit: {gaps}"


def test_a_worker_killed_while_tasks_wait_for_their_retry_loses_none(
    small: SmallCluster, uid: str
) -> None:
    victim = small.add_worker("victim", slots=8)
    with HttpAgentServer("ok") as agent:
        agent.first_mode, agent.first_calls, agent.retry_after = "throttle", 1, "2"
        small.engine.register_agent(f"k-{uid}", agent.endpoint)
        handle = small.engine.submit(
            {"id": f"k-{uid}", "maxConcurrency": 12, "strategy": "allSettled", "timeout": 60000,
             "tasks": [agent_task(f"k{i}", f"k-{uid}") for i in range(12)]}
        )  # fmt: skip
        assert wait_until(lambda: agent.calls >= 12, timeout_s=10)
        victim.kill()  # it held every retry, each waiting out its countdown
        small.add_worker("survivor", slots=8)
        results = handle.wait(60)
        per_task: dict[str, list[int]] = {}
        for request in agent.requests:
            task_id = request["headers"]["X-Taskplane-Task-Id"]
            per_task.setdefault(task_id, []).append(len(per_task.get(task_id, [])) + 1)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 12
    # every task was throttled once and answered once: none lost, none called after its outcome
    assert {task: len(calls) for task, calls in per_task.items()} == {f"k{i}": 2 for i in range(12)}
    assert {r.metadata["worker"].split("@")[0] for r in results} == {"survivor"}


def test_the_deadline_ends_pending_retries_as_timeout(small: SmallCluster, uid: str) -> None:
    small.add_worker("one", slots=2)
    with HttpAgentServer("throttle") as agent:
        agent.retry_after = "1"
        small.engine.register_agent(f"d-{uid}", agent.endpoint)
        started = time.monotonic()
        results = small.engine.execute_parallel(
            {"id": f"d-{uid}", "timeout": 2500, "strategy": "allSettled",
             "tasks": [agent_task("far", f"d-{uid}", retries=5)]}
        )  # fmt: skip
        took = time.monotonic() - started
    (result,) = results
    assert result.status is TaskStatus.TIMEOUT
    assert "no time left to retry" in (result.error or "")
    assert 1 <= result.retries <= 2 and agent.calls == result.retries + 1
    assert took < 3.0  # no retry was scheduled past the plan's deadline


def test_a_worker_holds_hundreds_of_tasks_at_once_without_running_out_of_redis_connections(
    small: SmallCluster, uid: str
) -> None:
    # redis-py's default pool fails past 100 connections ("Too many connections"); the
    # worker's pools are sized per task slot, so 300 tasks finishing together all record
    worker = small.add_worker("wide", slots=300)
    tasks = [
        {"id": f"s{i}", "type": "function", "target": "sleep", "payload": {"ms": 1000, "i": i}}
        for i in range(300)
    ]
    started = time.monotonic()
    results = small.engine.submit(
        {"id": f"wide-{uid}", "strategy": "allSettled", "maxConcurrency": 300, "tasks": tasks}
    ).wait(60)
    took = time.monotonic() - started
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 300, {
        r.error for r in results if r.error
    }
    assert {r.retries for r in results} == {0}
    assert took < 15, f"300 one-second tasks on 300 slots took {took:.1f} s"
    assert "Too many connections" not in worker.log()
