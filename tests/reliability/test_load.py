"""Load: 10,000 tasks queued at once across 20 plans on a two-worker cluster.

Every plan's whole window is enqueued at submission (``maxConcurrency`` =
plan size), so all 10,000 messages sit in the broker together. The test
checks that every plan returns all 500 results, that worker RSS and Redis
``used_memory`` stay bounded while it runs, and that once the plans' keys
expire (``TASKPLANE_PLAN_RETENTION_S``) Redis is back near its baseline.
``TASKPLANE_RELIABILITY_SHORT=1`` runs 2,000 tasks (20 plans of 100).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest

from taskplane import TaskStatus
from taskplane.keys import plan_key
from tests.reliability.conftest import SHORT, fresh_dir
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import record_figures, rss_kib, running_cluster
from tests.support import wait_until

PLANS = 20
PER_PLAN = 100 if SHORT else 500
#: Plan runs are kept this long after submission; long enough for the whole load.
RETENTION_S = 25 if SHORT else 70
#: Events kept in the stream; small, so the stream is full before the baseline is taken.
STREAM_MAXLEN = 1000
WARMUP_TASKS = 600
MIB = 1024 * 1024
#: What Redis may hold above its baseline once the plans have expired.
REDIS_SLACK_BYTES = 1 * MIB
#: How much a worker's RSS may grow over the whole load.
RSS_GROWTH_LIMIT_KIB = 150 * 1024


def plan(count: int, tag: str) -> dict[str, Any]:
    return {
        "id": f"load-{tag}-{uuid.uuid4().hex[:6]}",
        "strategy": "allSettled",
        "maxConcurrency": count,
        "timeout": (RETENTION_S - 5) * 1000,
        "tasks": [{"id": f"t{i}", "type": "function", "target": "noop"} for i in range(count)],
    }


class Sampler(threading.Thread):
    """Samples Redis used_memory and worker RSS twice a second; keeps the peaks."""

    def __init__(self, server: PrivateRedis, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.server, self.pids = server, pids
        self.peak_redis = 0
        self.peak_rss = dict.fromkeys(pids, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            self.peak_redis = max(self.peak_redis, self.server.used_memory())
            for pid in self.pids:
                self.peak_rss[pid] = max(self.peak_rss[pid], rss_kib(pid))


@pytest.mark.timeout(480)
def test_ten_thousand_tasks_complete_with_bounded_memory() -> None:
    server = PrivateRedis(fresh_dir("redis-load"))
    settings = {
        "TASKPLANE_PLAN_RETENTION_S": str(RETENTION_S),
        "TASKPLANE_EVENTS_STREAM_MAXLEN": str(STREAM_MAXLEN),
    }
    with server, running_cluster(server, workers=2, name="load", **settings) as cluster:
        engine, state = cluster.engine, server.client(1)
        pids = [w.pid for w in cluster.workers]
        warm = plan(WARMUP_TASKS, "warm")
        assert len(engine.execute_parallel(warm)) == WARMUP_TASKS
        for key in state.scan_iter(plan_key("taskplane", warm["id"], "*")):
            state.delete(key)
        baseline = server.used_memory()
        rss_before = {pid: rss_kib(pid) for pid in pids}

        sampler = Sampler(server, pids)
        sampler.start()
        started = time.monotonic()
        plans = [plan(PER_PLAN, str(i)) for i in range(PLANS)]
        handles = [engine.submit(p) for p in plans]
        submitted_s = time.monotonic() - started
        results = [handle.wait(timeout=RETENTION_S) for handle in handles]
        elapsed_s = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
        after_run = server.used_memory()
        rss_after = {pid: rss_kib(pid) for pid in pids}

        expired = wait_until(
            lambda: not any(True for _ in state.scan_iter("taskplane:plan:*", count=1000)),
            timeout_s=RETENTION_S + 15,
            interval_s=1.0,
        )
        expired_after_s = time.monotonic() - started
        after_expiry = server.used_memory()
        broker = server.client(0)
        leftover_messages = broker.llen("taskplane") + broker.hlen("unacked")
        broker.close()
        state.close()

    total = PLANS * PER_PLAN
    statuses = [r.status for plan_results in results for r in plan_results]
    figures = {
        "tasks": total,
        "plans": PLANS,
        "workers": 2,
        "threads_per_worker": 8,
        "submit_s": round(submitted_s, 1),
        "elapsed_s": round(elapsed_s, 1),
        "tasks_per_s": round(total / elapsed_s),
        "redis_used_memory_mib": {
            "baseline": round(baseline / MIB, 2),
            "peak": round(sampler.peak_redis / MIB, 2),
            "after_run": round(after_run / MIB, 2),
            "after_expiry": round(after_expiry / MIB, 2),
        },
        "plan_keys_expired_after_s": round(expired_after_s, 1),
        "worker_rss_mib": {
            str(i): {
                "before": round(rss_before[pid] / 1024, 1),
                "peak": round(sampler.peak_rss[pid] / 1024, 1),
                "after": round(rss_after[pid] / 1024, 1),
            }
            for i, pid in enumerate(pids)
        },
        "retention_s": RETENTION_S,
    }
    record_figures("load_short" if SHORT else "load", figures)
    assert [len(r) for r in results] == [PER_PLAN] * PLANS, "a plan lost results"
    assert statuses.count(TaskStatus.SUCCESS) == total
    assert [[r.task_id for r in rs] for rs in results] == [
        [f"t{i}" for i in range(PER_PLAN)]
    ] * PLANS
    assert leftover_messages == 0
    assert expired, "plan keys outlived their retention"
    assert after_expiry <= baseline + REDIS_SLACK_BYTES, figures["redis_used_memory_mib"]
    for pid in pids:
        assert rss_after[pid] - rss_before[pid] <= RSS_GROWTH_LIMIT_KIB, figures["worker_rss_mib"]
