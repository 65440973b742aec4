"""Redis restarted while a 200-task plan runs: the plan ends within its deadline.

Redis is the broker, the plan store and everything else, so this is the
worst outage a taskplane cluster sees. The private server keeps an
append-only file (``appendfsync always``), as a production Redis should, and
comes back on the same port with the same data.

What happens (and what the test checks):

* a worker that has tasks in flight when the broker connection drops exits
  with code 1 (Celery's consumer raises ``AttributeError`` while closing the
  dead connection — an upstream bug, see RELIABILITY.md); a supervisor (here
  :class:`~tests.reliability.support.Supervisor`, in production
  ``restart: unless-stopped`` or systemd) starts it again;
* tasks that were in flight stay in the broker's unacked index and come back
  after the visibility timeout; those whose outcome was recorded before the
  outage replay it instead of running again;
* the plan completes with every task successful, well before its deadline,
  and the waiting client never sees an error.
"""

from __future__ import annotations

import time
import uuid

import pytest

from taskplane import TaskStatus
from taskplane.errors import BackendError, PlanFailedError
from tests.reliability.conftest import SHORT, fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import Supervisor, record_figures, running_cluster, wait_until

TASKS = 200
TASK_MS = 150
CONCURRENCY = 8
PLAN_TIMEOUT_MS = 90_000
#: Results recorded before Redis goes down.
RESTART_AFTER = 40
DOWN_S = 2.0
#: The plan must end this soon after its deadline at the latest (client wake-up slack).
DEADLINE_SLACK_S = 6.0

MODES = ["crash"] if SHORT else ["shutdown", "crash"]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", MODES)
def test_plan_survives_a_redis_restart(mode: str) -> None:
    server = PrivateRedis(fresh_dir(f"redis-restart-{mode}"))
    with server, running_cluster(server, workers=2, name=f"rs{mode[0]}") as cluster:
        state = server.client(1)
        plan_id = f"restart-{mode}-{uuid.uuid4().hex[:6]}"
        tasks = [
            {
                "id": f"t{i}",
                "type": "function",
                "target": "tests.record",
                "payload": {"redis_url": cluster.state_url, "key": f"{plan_id}:{i}", "ms": TASK_MS},
            }
            for i in range(TASKS)
        ]
        with Supervisor(cluster) as supervisor:
            started = time.monotonic()
            handle = cluster.engine.submit(
                {
                    "id": plan_id,
                    "strategy": "allSettled",
                    "maxConcurrency": CONCURRENCY,
                    "timeout": PLAN_TIMEOUT_MS,
                    "tasks": tasks,
                }
            )
            results_key = f"taskplane:plan:{plan_id}:results"
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

    statuses = {s.value: sum(r.status is s for r in results) for s in TaskStatus}
    record_figures(
        f"redis_restart_{mode}",
        {
            "tasks": TASKS,
            "task_ms": TASK_MS,
            "max_concurrency": CONCURRENCY,
            "recorded_before_restart": len(before),
            "restart_at_s": round(restart_at, 2),
            "redis_down_s": round(down_s, 2),
            "plan_elapsed_s": round(elapsed_s, 2),
            "plan_deadline_s": PLAN_TIMEOUT_MS / 1000,
            "outcome": outcome,
            "statuses": statuses,
            "tasks_run_twice": sum(c == 2 for c in calls),
            "tasks_run_more": sum(c > 2 for c in calls),
            "client_backend_errors": len(client_errors),
            "worker_exits": [
                {"worker": e.name, "code": e.returncode, "at_s": round(e.after_s, 1)} for e in exits
            ],
        },
    )
    assert elapsed_s < PLAN_TIMEOUT_MS / 1000 + DEADLINE_SLACK_S, "the plan hung past its deadline"
    assert outcome == "completed"
    assert len(results) == TASKS
    assert statuses["success"] == TASKS, (statuses, [r.error for r in results if not r.ok][:3])
    # outcomes recorded before the outage are replayed, never run again
    assert all(calls[int(index)] == 1 for index in before)
    assert all(1 <= c <= 2 for c in calls), "a task ran more than twice or never"
