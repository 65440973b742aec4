"""Clusters of their own, for tests whose workers need settings unlike the shared cluster's.

Each runs on its own broker and state databases (flushed first) of the test Redis,
with the shared cluster's environment plus the test's overrides::

    with small_cluster(redis_url, broker_db=7, state_db=8, env={...}, default_timeout=5000) as c:
        c.add_worker("left", slots=4)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis

from taskplane import ExecutionEngine, Settings
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from tests.integration.conftest import LOG_DIR, ROOT, cluster_env

#: Lateness allowed between a booked slot and the agent seeing the request (s): a
#: rescheduled task comes due on the worker's ETA timer and then makes its call, which on
#: a loaded two-core machine was seen 70 ms late. An unlimited backlog would land all 16
#: calls within a few milliseconds, so the check still tells a limit from none.
ARRIVAL_JITTER_S = 0.15


def agent_task(task_id: str, agent_id: str, **metadata: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "agent", "target": agent_id, "payload": {"n": task_id},
            "metadata": {"cache": False, **metadata}}  # fmt: skip


@dataclass
class SmallCluster:
    env: dict[str, str]
    engine: ExecutionEngine
    workers: list[WorkerProcess]

    def add_worker(self, name: str, slots: int, **start: Any) -> WorkerProcess:
        worker = start_worker(
            self.env, concurrency=slots, name=name, log_dir=LOG_DIR, root=ROOT, **start
        )
        wait_ready([worker], self.engine.app.control.ping)
        self.workers.append(worker)
        return worker


@contextmanager
def small_cluster(
    redis_url: str,
    *,
    broker_db: int,
    state_db: int,
    env: Mapping[str, str] | None = None,
    **settings: Any,
) -> Iterator[SmallCluster]:
    """An engine (with *settings*) and no workers yet; workers get *env* over the cluster's."""
    full_env = {
        **cluster_env(redis_url),
        "TASKPLANE_REDIS_URL": redis_server.with_db(redis_url, state_db),
        "TASKPLANE_BROKER_URL": redis_server.with_db(redis_url, broker_db),
        **(env or {}),
    }
    for db in (broker_db, state_db):
        client = redis.Redis.from_url(redis_server.with_db(redis_url, db))
        client.flushdb()
        client.close()
    engine = ExecutionEngine(
        Settings(
            redis_url=full_env["TASKPLANE_REDIS_URL"],
            broker_url=full_env["TASKPLANE_BROKER_URL"],
            database_url=full_env["TASKPLANE_DATABASE_URL"],
            **{"redelivery_sweep_s": 1, **settings},
        )
    )
    cluster = SmallCluster(full_env, engine, [])
    try:
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()
        engine.close()
