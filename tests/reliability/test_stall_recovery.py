"""Stalls triggered on purpose, with short settings, and how each is recovered.

**A lost broker message** (the waiting client sends it again).
A window plan's four messages are put on the broker while no worker runs;
one of them is then removed from the queue, as a broker that loses a write
or a worker that dies between taking a window slot and enqueueing would.
A worker starts and runs the other three; the plan then makes no progress,
and once it has stalled for longer than a redelivery (visibility timeout plus
two sweeps plus 5 s) the waiting client finds the task that was sent but
never started while nothing of the plan runs, and sends it again.

**A worker SIGKILLed while it runs a task** (lease takeover). The message
was not acknowledged (``acks_late``), so once the visibility timeout passes
the broker gives it back, flagged redelivered, to another worker; that
delivery takes over the task's lease (the dead run's ``running`` count is
reused, not added to) and runs it again. The outcome is recorded once, with
one ``task:completed`` event.

**Orphaned window tasks.** A worker records a task's outcome, which claims
the next window slot for a successor, and dies before enqueueing it. Played
here by the test itself through the plan store, for tasks 0 and 1 of a
window of 2, so the successors 2 and 3 are claimed but never sent. Task 0's
message comes back (as a dead worker's unacknowledged message does): the
rerun finds the outcome recorded, runs nothing, and resends successor 2.
Task 1's message is gone as well: nothing reruns it, so successor 3 is an
orphan — dispatched, never started, while tasks sent after it have run —
and the waiting client resends it after a stall.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

import pytest

from taskplane import ExecutionResult, TaskStatus
from taskplane.devtools.cluster import wait_ready
from taskplane.keys import plan_key
from tests.reliability.conftest import fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import Cluster, Outcomes, record_figures, running_cluster
from tests.support import wait_until

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


def record_task(cluster: Cluster, plan_id: str, index: int, ms: float = 0) -> dict[str, Any]:
    return {
        "id": f"t{index}",
        "type": "function",
        "target": "tests.record",
        "payload": {"redis_url": cluster.state_url, "key": f"{plan_id}:{index}", "ms": ms},
    }


def calls_of(server: PrivateRedis, plan_id: str, count: int) -> list[int]:
    state = server.client(1)
    try:
        return [int(state.get(f"{plan_id}:{i}:calls") or 0) for i in range(count)]
    finally:
        state.close()


LONG_TASK_MS = 3000


@pytest.mark.timeout(150)
def test_a_killed_workers_task_is_taken_over_by_its_redelivery_and_recorded_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = PrivateRedis(fresh_dir("redis-takeover"))
    with (
        server,
        running_cluster(
            server,
            workers=1,
            name="takeover",
            TASKPLANE_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
            TASKPLANE_DEFAULT_TIMEOUT="4000",
        ) as cluster,
    ):
        plan_id = f"takeover-{uuid.uuid4().hex[:8]}"
        outcomes = Outcomes(plan_id)
        cluster.engine.on("*", outcomes)
        tasks = [record_task(cluster, plan_id, 0, ms=LONG_TASK_MS)]
        tasks += [record_task(cluster, plan_id, i) for i in (1, 2)]
        handle = cluster.engine.submit(
            {"id": plan_id, "maxConcurrency": 3, "timeout": 90_000, "tasks": tasks}
        )
        state = server.client(1)
        lease_key = plan_key("taskplane", plan_id, "lease:0")
        try:
            # task 0 runs (3 s), tasks 1 and 2 are recorded already
            assert wait_until(
                lambda: (
                    calls_of(server, plan_id, 1) == [1]
                    and state.hlen(plan_key("taskplane", plan_id, "results")) == 2
                ),
                timeout_s=30,
            )
            killed_at = time.monotonic()
            cluster.workers[0].kill()  # mid-run: task 0 sleeps 3 s, unacknowledged
            lease_ttl_at_kill = state.ttl(lease_key)
            owner = state.get(lease_key)
            meta_at_kill = state.hgetall(plan_key("taskplane", plan_id, "meta"))
            with caplog.at_level(logging.WARNING, logger="taskplane.plan.recorder"):
                replacement = cluster.start_worker("takeover1")
                wait_ready([replacement], cluster.engine.app.control.ping)
                assert wait_until(lambda: calls_of(server, plan_id, 1) == [2], timeout_s=60)
                redelivered_s = time.monotonic() - killed_at
                results = handle.wait(60)
            recovered_s = time.monotonic() - killed_at
            meta = state.hgetall(plan_key("taskplane", plan_id, "meta"))
            recorded = state.xlen(plan_key("taskplane", plan_id, "order"))
        finally:
            state.close()
        assert wait_until(lambda: len(outcomes.by_task) == 3, timeout_s=5)
        time.sleep(0.3)
        calls = calls_of(server, plan_id, 3)
    figures = {
        "visibility_timeout_s": VISIBILITY_S,
        "lease_ttl_at_kill_s": lease_ttl_at_kill,
        "killed_to_redelivered_start_s": round(redelivered_s, 1),
        "killed_to_plan_finished_s": round(recovered_s, 1),
        "resent_by_the_client": [r.getMessage() for r in caplog.records],
        "calls": calls,
        "outcomes_recorded": recorded,
        "events_per_task": outcomes.by_task,
        "running_at_kill": int(meta_at_kill.get("running", -1)),
        "running_at_end": int(meta["running"]),
    }
    record_figures("stall_recovery_lease_takeover", figures)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 3
    assert owner, "task 0 held no lease while it ran"
    assert figures["resent_by_the_client"] == [], "the broker's redelivery must do it"
    assert calls[0] == 2, "the killed run and the redelivered one"
    assert calls[1:] == [1, 1]
    assert recorded == 3 and meta["done"] == "3" and meta["running"] == "0"
    assert outcomes.by_task == {"t0": 1, "t1": 1, "t2": 1}
    # the lease ends before the broker's redelivery, by construction (timeout + 5 s < visibility)
    assert recovered_s >= VISIBILITY_S - LONG_TASK_MS / 1000


@pytest.mark.timeout(150)
def test_window_tasks_orphaned_by_a_dead_enqueuer_are_sent_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    count, window = 8, 2
    server = PrivateRedis(fresh_dir("redis-orphans"))
    with (
        server,
        running_cluster(
            server,
            workers=0,
            name="orphans",
            TASKPLANE_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
            TASKPLANE_DEFAULT_TIMEOUT="3000",
        ) as cluster,
    ):
        engine = cluster.engine
        plan_id = f"orphans-{uuid.uuid4().hex[:8]}"
        outcomes = Outcomes(plan_id)
        engine.on("*", outcomes)
        tasks = [record_task(cluster, plan_id, i) for i in range(count)]
        handle = engine.submit(
            {"id": plan_id, "maxConcurrency": window, "timeout": 90_000, "tasks": tasks}
        )
        # the worker that took tasks 0 and 1: it records both outcomes, which claims
        # successors 2 and 3, and dies before enqueueing them
        claimed = []
        for index in range(window):
            assert engine.store.start(plan_id, index, owner=f"dead-{index}").action == "run"
            result = ExecutionResult(
                task_id=f"t{index}",
                status=TaskStatus.SUCCESS,
                result="recorded by the dead worker",
                metadata={"planId": plan_id, "worker": "dead-worker"},
            )
            claimed.append(engine.store.finish(plan_id, index, result, ran=True).next_index)
        assert claimed == [2, 3]
        broker = server.client(0)
        try:
            messages = broker.lrange("taskplane", 0, -1)
            assert sorted(plan_index(m)[1] for m in messages if plan_index(m)) == [0, 1]
            gone = [m for m in messages if plan_index(m) == (plan_id, 1)]
            assert broker.lrem("taskplane", 1, gone[0]) == 1  # task 1's message is lost too
        finally:
            broker.close()
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="taskplane.plan.recorder"):
            wait_ready([cluster.start_worker("orphans0")], engine.app.control.ping)
            results = handle.wait(60)
        elapsed = time.monotonic() - started
        assert wait_until(lambda: len(outcomes.by_task) == count, timeout_s=5)
        time.sleep(0.3)
        calls = calls_of(server, plan_id, count)
        stall_s = engine.stall_s
    resent = sorted(
        int(r.getMessage().split(" task ")[1].split()[0])
        for r in caplog.records
        if "lost its message" in r.getMessage()
    )
    figures = {
        "stall_s": stall_s,
        "plan_finished_after_s": round(elapsed, 1),
        "calls": calls,
        "resent_by_the_client": resent,
        "events_per_task": outcomes.by_task,
    }
    record_figures("stall_recovery_orphans", figures)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * count
    assert [r.result for r in results[:window]] == ["recorded by the dead worker"] * window
    assert calls == [0, 0] + [1] * (count - window)  # the rerun of task 0 ran nothing
    assert resent == [3]  # successor 2 was resent by task 0's rerun, 3 by the client
    assert elapsed >= stall_s
    assert outcomes.by_task == {f"t{i}": 1 for i in range(count)}
