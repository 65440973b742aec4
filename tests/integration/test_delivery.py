"""Delivery: enqueueing a window and by task name from outside, surviving a killed worker,
a message that reaches a worker before its run is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from taskplane.handle import PlanHandle
from taskplane.models import ExecutionPlan, ExecutionTask, ParallelExecutionPlan, Strategy
from taskplane.plan import PlanLayout, layout
from taskplane.tasks import RUN_AWAIT_LOOKS
from taskplane.tasks.canvas import canvas, send_canvas
from tests.integration.celery_events import CeleryEvents
from tests.support import counter, monitored, rec, wait_until

pytestmark = pytest.mark.integration

CLIENT = textwrap.dedent(
    """
    import json, sys
    from celery import Celery
    broker, backend, plan, queue = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
    app = Celery("client", broker=broker, backend=backend)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    results = app.send_task("taskplane.execute_plan", [plan], queue=queue).get(timeout=30)
    assert "taskplane" not in sys.modules
    print(json.dumps(results))
    """
)


@pytest.mark.single_redis  # MONITOR watches one Redis
def test_a_window_subscribes_the_client_to_no_result_channel(cluster: Any, uid: str) -> None:
    engine = cluster.engine
    sleepers = [
        {"id": f"s{i}", "type": "function", "target": "sleep", "payload": {"ms": 1500}}
        for i in range(3)
    ]
    with monitored(cluster.settings.redis_url) as commands:
        handle = engine.submit({"id": f"window-{uid}", "strategy": "allSettled", "tasks": sleepers})
        running: list[str] = []
        deadline = time.monotonic() + 10
        while len(running) < 3 and time.monotonic() < deadline:
            active = engine.app.control.inspect(timeout=0.5).active() or {}
            running = [
                t["id"]
                for tasks in active.values()
                for t in tasks
                if (t.get("kwargs") or {}).get("plan_id") == handle.id
            ]
    assert len(running) == 3, running
    # run_task stores no result, yet a Celery group subscribed to each member's channel
    channels = {f"celery-task-meta-{i}" for i in running}
    assert not [c for c in commands if c.startswith("SUBSCRIBE") and set(c.split()) & channels]
    assert [r.status for r in handle.wait()] == [TaskStatus.SUCCESS] * 3


def test_send_task_by_name_from_a_process_without_taskplane(cluster: Any, uid: str) -> None:
    plan = {
        "id": f"by-name-{uid}",
        "strategy": "allSettled",
        "tasks": [
            {"id": "sum", "type": "function", "target": "add", "payload": {"a": 20, "b": 22}},
            {"id": "bad", "type": "function", "target": "nope"},
        ],
    }
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            CLIENT,
            cluster.settings.broker_url,
            cluster.engine.app.conf.result_backend,
            json.dumps(plan),
            cluster.settings.queue,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(out.stdout)
    assert [r["taskId"] for r in results] == ["sum", "bad"]
    assert results[0]["status"] == "success" and results[0]["result"] == 42
    assert results[1]["status"] == "failure" and results[1]["error"] == "Function nope not found"


def test_killed_worker_plan_completes_without_rerunning_recorded_tasks(
    cluster: Any, engine: ExecutionEngine, uid: str
) -> None:
    victim = cluster.start_worker()
    count = 40
    tasks = [rec(f"t{i}", cluster, f"{uid}:k{i}", ms=250) for i in range(count)]
    plan_id = f"kill-{uid}"
    handle = engine.submit({"id": plan_id, "tasks": tasks, "maxConcurrency": 12, "timeout": 90000})
    store = engine.store

    def recorded() -> set[int]:
        return {i for i, r in enumerate(store.results(plan_id, count)) if r is not None}

    wait_until(lambda: handle.status()["done"] >= 8 and victim.log() is not None, timeout_s=20)
    victim.kill()
    recorded_at_kill = recorded()
    assert 0 < len(recorded_at_kill) < count

    results = handle.wait(80)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * count
    assert recorded() == set(range(count))
    for index in recorded_at_kill:
        assert counter(cluster, f"{uid}:k{index}") == 1, f"task {index} ran again"
    assert all(1 <= counter(cluster, f"{uid}:k{i}") <= 2 for i in range(count))
    # a task taken over after its worker died is not counted as running twice (the
    # record's own count; status() caps it at the tasks not done)
    record = store.record(plan_id)
    assert record is not None and record.running == 0
    assert handle.status()["running"] == 0


def _send_early(
    engine: ExecutionEngine, cluster: Any, key: str
) -> tuple[ExecutionPlan, PlanLayout, float]:
    """Send a lone task as a client does while its run is recorded; its run is not made."""
    task = ExecutionTask.model_validate(rec("early", cluster, key))
    plan = ParallelExecutionPlan(
        id=f"task:{key}", tasks=[task], strategy=Strategy.ALL_SETTLED, timeout=30000
    )
    plan_layout, deadline = layout(plan, default_max_concurrency=1), time.time() + 30
    send_canvas(engine.app, canvas(engine.app, plan, plan_layout, deadline, sent_early=True))
    return plan, plan_layout, deadline


def test_a_task_sent_before_its_run_was_recorded_runs_once_the_run_is_there(
    cluster: Any, engine: ExecutionEngine, uid: str
) -> None:
    # a lone task's client sends its message while the run's record is written: a
    # worker can be quicker than Redis. Here the record comes after the first look.
    key = f"early-{uid}"
    with CeleryEvents(engine) as events:
        plan, plan_layout, deadline = _send_early(engine, cluster, key)
        assert wait_until(lambda: events.of_type("task-retried"), timeout_s=10)
        assert counter(cluster, key) == 0
        assert engine.store.create(plan.id, plan.tasks, plan_layout, deadline)
        [result] = PlanHandle(engine, plan.id).wait(20)
    assert (result.status, result.result) == (TaskStatus.SUCCESS, key)
    assert counter(cluster, key) == 1
    assert "run not recorded yet" in events.of_type("task-retried")[0]["exception"]


def test_a_task_whose_run_never_comes_is_dropped_after_a_few_looks(
    cluster: Any, engine: ExecutionEngine, uid: str
) -> None:
    key = f"never-{uid}"
    with CeleryEvents(engine) as events:
        plan, _, _ = _send_early(engine, cluster, key)
        assert wait_until(lambda: events.of_type("task-succeeded"), timeout_s=15)
    assert len(events.of_type("task-retried")) == RUN_AWAIT_LOOKS
    assert counter(cluster, key) == 0
    assert engine.store.record(plan.id) is None  # nothing recorded for a run nobody made
