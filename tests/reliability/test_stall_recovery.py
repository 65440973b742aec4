"""A broker message lost on purpose: the waiting client sends it again.

A window plan's four messages are put on the broker while no worker runs;
one of them is then removed from the queue, as a broker that loses a write
or a worker that dies between taking a window slot and enqueueing would.
A worker starts and runs the other three; the plan then makes no progress,
and once it has stalled for longer than a redelivery (visibility timeout plus
two sweeps plus 5 s) the waiting client finds the task that was sent but
never started while nothing of the plan runs, and sends it again.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from taskplane import TaskStatus
from taskplane.devtools.cluster import wait_ready
from tests.reliability.conftest import fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import record_figures, running_cluster

VISIBILITY_S = 10
TASKS = 4
LOST = 1


def plan_index(message: bytes) -> tuple[str, int] | None:
    """(plan id, task index) of a raw ``run_task`` message on the Redis broker."""
    headers = json.loads(message)["headers"]
    if headers.get("task") != "taskplane.run_task":
        return None
    kwargs = json.loads(headers["kwargsrepr"])
    return kwargs["plan_id"], kwargs["index"]


@pytest.mark.timeout(150)
def test_a_lost_message_is_sent_again_by_the_waiting_client() -> None:
    server = PrivateRedis(fresh_dir("redis-stall"))
    with (
        server,
        running_cluster(
            server,
            workers=0,
            name="stall",
            TASKPLANE_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
            TASKPLANE_DEFAULT_TIMEOUT="3000",
        ) as cluster,
    ):
        plan_id = f"stall-{uuid.uuid4().hex[:8]}"
        tasks = [
            {
                "id": f"t{i}",
                "type": "function",
                "target": "tests.record",
                "payload": {"redis_url": cluster.state_url, "key": f"{plan_id}:{i}"},
            }
            for i in range(TASKS)
        ]
        handle = cluster.engine.submit(
            {"id": plan_id, "maxConcurrency": TASKS, "timeout": 90_000, "tasks": tasks}
        )
        broker = server.client(0)
        try:
            messages = broker.lrange("taskplane", 0, -1)
            lost = [m for m in messages if plan_index(m) == (plan_id, LOST)]
            assert len(messages) == TASKS and len(lost) == 1
            assert broker.lrem("taskplane", 1, lost[0]) == 1
        finally:
            broker.close()
        started = time.monotonic()
        wait_ready([cluster.start_worker("stall0")], cluster.engine.app.control.ping)
        results = handle.wait(60)
        elapsed = time.monotonic() - started
        assert [r.status for r in results] == [TaskStatus.SUCCESS] * TASKS
        state = server.client(1)
        try:
            calls = [int(state.get(f"{plan_id}:{i}:calls") or 0) for i in range(TASKS)]
        finally:
            state.close()
        assert calls == [1] * TASKS
        stall_s = cluster.engine.stall_s
        assert elapsed >= stall_s  # resent only after a stall longer than a redelivery
    record_figures(
        "stall_recovery_lost_message",
        {"stall_s": stall_s, "plan_finished_after_s": round(elapsed, 1), "calls": calls},
    )
