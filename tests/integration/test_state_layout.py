"""What the key layout promises, on whichever Redis the suite runs (one, or a Redis Cluster).

``make test-cluster`` runs these (and the whole suite) with state on a Redis
Cluster of three masters and RabbitMQ as broker; ``make test`` on one Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from redis.crc import key_slot

from taskplane import ExecutionEngine, TaskStatus
from taskplane.events import Event
from taskplane.keys import plan_key
from tests.integration.conftest import ON_REDIS_CLUSTER
from tests.support import wait_until

pytestmark = pytest.mark.integration


def add(task_id: str, a: int) -> dict[str, Any]:
    return {"id": task_id, "type": "function", "target": "add", "payload": {"a": a, "b": 1}}


def test_every_recorded_outcome_reaches_subscribers_once(engine: ExecutionEngine, uid: str) -> None:
    plan_id = f"layout-events-{uid}"
    seen: list[Event] = []
    lock = threading.Lock()

    def handler(event: Event) -> None:
        if event["data"].get("planId") == plan_id:
            with lock:
                seen.append(event)

    engine.on("task:completed", handler)
    try:
        results = engine.execute_parallel(
            {"id": plan_id, "tasks": [add(f"t{i}", i) for i in range(5)]}
        )
        assert [r.status for r in results] == [TaskStatus.SUCCESS] * 5
        wait_until(lambda: len(seen) >= 5, timeout_s=10)
        time.sleep(0.3)  # a duplicate, were there one, would have come by now
    finally:
        engine.off("task:completed", handler)
    assert sorted(e["data"]["taskId"] for e in seen) == [f"t{i}" for i in range(5)]


def test_a_runs_keys_live_in_one_slot_and_runs_spread(engine: ExecutionEngine, uid: str) -> None:
    plan_ids = [f"layout-{uid}-{n}" for n in range(12)]
    for plan_id in plan_ids:
        engine.execute_parallel({"id": plan_id, "tasks": [add("t", 1)]})
    prefix = engine.settings.key_prefix
    for plan_id in plan_ids:
        found = list(engine.redis.scan_iter(plan_key(prefix, plan_id, "*"), count=1000))
        assert {"meta", "tasks", "results", "order", "done"} <= {k.rsplit(":", 1)[1] for k in found}
        assert len({key_slot(k.encode()) for k in found}) == 1
    if ON_REDIS_CLUSTER:  # runs are spread over the masters
        nodes = {engine.redis.get_node_from_key(plan_key(prefix, p, "meta")).name for p in plan_ids}
        assert len(nodes) > 1
