"""Redis restarted while a 200-task plan runs: workers stay up, the plan barely slows.

Two deployments: Redis as broker and everything else (the worst outage a
taskplane cluster sees: broker, plan store, events all at once), and
RabbitMQ as broker with Redis for state (only Redis restarts). The private
server keeps an append-only file (``appendfsync always``), as a production
Redis should, and comes back on the same port with the same data; it is
stopped cleanly (``SHUTDOWN``) or killed (SIGKILL).

What the test checks (see RELIABILITY.md §1 for the figures):

* no worker exits (a :class:`~tests.reliability.support.Supervisor` would
  restart one, and counts it);
* tasks in flight pause while Redis is away and carry on when it is back:
  the plan store's client retries its connection (``redisio.outage_retry``),
  a successor's publish retries (``publish_retry_policy``), the consumer reconnects
  within about a second without freezing the tasks in flight
  (``taskplane/tasks/shims.py``);
* the plan completes, every task successful, and ends at most
  :data:`MAX_DELAY_S` later than the same plan without an outage, beyond the
  outage itself (measured on the same cluster just before);
* no outcome recorded before the outage runs again; a task in flight at the
  outage may run twice (its message or its publish delivered twice), never
  more.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from kombu import Connection

from taskplane import TaskStatus
from taskplane.errors import BackendError, PlanFailedError
from taskplane.keys import plan_key
from tests.reliability.conftest import SHORT, fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import Cluster, Supervisor, record_figures, running_cluster
from tests.support import rabbitmq_url, require_rabbitmq, wait_until

TASKS = 200
TASK_MS = 150
CONCURRENCY = 8
PLAN_TIMEOUT_MS = 90_000
#: Results recorded before Redis goes down.
RESTART_AFTER = 40
DOWN_S = 2.0
#: The plan may end this much later than without an outage, beyond the outage (s).
MAX_DELAY_S = 10.0
#: Slack past the deadline for the client to wake up (s).
DEADLINE_SLACK_S = 6.0

CASES = (
    [("redis", "crash"), ("amqp", "crash")]
    if SHORT
    else [("redis", "shutdown"), ("redis", "crash"), ("amqp", "shutdown"), ("amqp", "crash")]
)


def drop_queue(url: str, queue: str) -> None:
    """Delete this test's own queue from RabbitMQ."""
    with Connection(url, connect_timeout=2) as conn:
        conn.default_channel.queue_delete(queue)


def plan_of(plan_id: str, state_url: str) -> dict[str, Any]:
    return {
        "id": plan_id,
        "strategy": "allSettled",
        "maxConcurrency": CONCURRENCY,
        "timeout": PLAN_TIMEOUT_MS,
        "tasks": [
            {
                "id": f"t{i}",
                "type": "function",
                "target": "tests.record",
                "payload": {"redis_url": state_url, "key": f"{plan_id}:{i}", "ms": TASK_MS},
            }
            for i in range(TASKS)
        ],
    }


def baseline_s(cluster: Cluster, tag: str) -> float:
    """How long the same plan takes on this cluster without an outage (s)."""
    started = time.monotonic()
    results = cluster.engine.submit(plan_of(f"base-{tag}", cluster.state_url)).wait(timeout=120)
    assert all(r.status is TaskStatus.SUCCESS for r in results)
    return time.monotonic() - started


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("broker", "mode"), CASES)
def test_plan_rides_through_a_redis_restart(broker: str, mode: str) -> None:
    tag = f"{broker}-{mode}-{uuid.uuid4().hex[:6]}"
    extra: dict[str, str] = {}
    amqp = rabbitmq_url() if broker == "amqp" else None
    if amqp is not None:  # our own queue: other RabbitMQ users purge and consume `taskplane`
        require_rabbitmq(amqp)
        extra = {"TASKPLANE_BROKER_URL": amqp, "TASKPLANE_QUEUE": f"taskplane-restart-{tag}"}
    server = PrivateRedis(fresh_dir(f"redis-restart-{broker}-{mode}"))
    try:
        with server, running_cluster(server, workers=2, name=f"rs{broker[0]}", **extra) as cluster:
            base_s = baseline_s(cluster, tag)
            state = server.client(1)
            plan_id = f"restart-{tag}"
            with Supervisor(cluster) as supervisor:
                started = time.monotonic()
                handle = cluster.engine.submit(plan_of(plan_id, cluster.state_url))
                results_key = plan_key("taskplane", plan_id, "results")
                assert wait_until(lambda: state.hlen(results_key) >= RESTART_AFTER, timeout_s=60)
                before = set(state.hkeys(results_key))
                restart_at = time.monotonic() - started
                down_s = server.restart(down_s=DOWN_S, crash=mode == "crash")

                client_errors: list[str] = []
                outcome = "completed"
                results = []
                while time.monotonic() - started < PLAN_TIMEOUT_MS / 1000 + DEADLINE_SLACK_S:
                    try:
                        results = handle.wait(timeout=PLAN_TIMEOUT_MS / 1000 + DEADLINE_SLACK_S)
                        break
                    except BackendError as exc:  # a client may retry its wait
                        client_errors.append(str(exc))
                        time.sleep(0.5)
                    except PlanFailedError as exc:
                        outcome, results = f"failed: {exc}", list(exc.results)
                        break
                elapsed_s = time.monotonic() - started
                exits = list(supervisor.exits)

            calls = [int(state.get(f"{plan_id}:{i}:calls") or 0) for i in range(TASKS)]
            state.close()
    finally:
        if amqp is not None:
            drop_queue(amqp, extra["TASKPLANE_QUEUE"])

    delay_s = elapsed_s - base_s - down_s
    statuses = {s.value: sum(r.status is s for r in results) for s in TaskStatus}
    record_figures(
        f"redis_restart_{broker}_{mode}",
        {
            "broker": broker,
            "tasks": TASKS,
            "task_ms": TASK_MS,
            "max_concurrency": CONCURRENCY,
            "recorded_before_restart": len(before),
            "restart_at_s": round(restart_at, 2),
            "redis_down_s": round(down_s, 2),
            "baseline_s": round(base_s, 2),
            "plan_elapsed_s": round(elapsed_s, 2),
            "delay_beyond_outage_s": round(delay_s, 2),
            "outcome": outcome,
            "statuses": statuses,
            "tasks_run_twice": sum(c == 2 for c in calls),
            "tasks_run_more": sum(c > 2 for c in calls),
            "recorded_before_and_run_again": sum(calls[int(i)] != 1 for i in before),
            "client_backend_errors": len(client_errors),
            "worker_exits": [
                {"worker": e.name, "code": e.returncode, "at_s": round(e.after_s, 1)} for e in exits
            ],
        },
    )
    assert not exits, f"workers exited: {exits}"
    assert outcome == "completed"
    assert len(results) == TASKS
    assert statuses["success"] == TASKS, (statuses, [r.error for r in results if not r.ok][:3])
    # outcomes recorded before the outage are replayed, never run again
    assert all(calls[int(index)] == 1 for index in before)
    assert all(1 <= c <= 2 for c in calls), "a task ran more than twice or never"
    assert delay_s <= MAX_DELAY_S, f"plan ended {delay_s:.1f} s late beyond the outage"
