"""Shared benchmark plumbing: a Redis, worker processes with given settings, an engine.

Benchmark workers run ``bench.baseline``: taskplane's app plus bare Celery
tasks, so a figure and its raw-Celery baseline share one worker and pool.
Call :func:`configure` before importing ``bench.baseline``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Any

import redis

from taskplane import ExecutionEngine, Settings
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".run" / "bench"
BROKER_DB, STATE_DB = 11, 12


def configure(**extra: str) -> dict[str, str]:
    """Find or start Redis and put the benchmark settings in this process's environment."""
    wanted = os.environ.get("TASKPLANE_REDIS_URL", "redis://127.0.0.1:6379/0")
    base = redis_server.ensure(STATE, redis_server.with_db(wanted, 0))
    env = {
        "TASKPLANE_REDIS_URL": redis_server.with_db(base, STATE_DB),
        "TASKPLANE_BROKER_URL": redis_server.with_db(base, BROKER_DB),
        "TASKPLANE_FUNCTION_MODULES": "examples.functions",
        "TASKPLANE_DATABASE_URL": f"sqlite:///{STATE / 'tracking.db'}",
        # benchmarks measure the data plane, not the default 100-per-minute agent limit
        "TASKPLANE_RATE_LIMIT__MAX_REQUESTS": "100000000",
        **extra,
    }
    os.environ.update(env)
    return env


@contextmanager
def cluster(
    env: dict[str, str], *, workers: int = 1, threads: int = 32, **overrides: str
) -> Iterator[tuple[ExecutionEngine, list[WorkerProcess]]]:
    """Fresh databases, *workers* worker processes, and an engine on the same app."""
    from bench import baseline

    for url in (env["TASKPLANE_REDIS_URL"], env["TASKPLANE_BROKER_URL"]):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    worker_env = {**env, **overrides}
    procs = [
        start_worker(
            worker_env,
            concurrency=threads,
            name=f"bench{i}",
            log_dir=STATE / "logs",
            root=ROOT,
            app_module="bench.baseline",
        )
        for i in range(workers)
    ]
    settings = Settings(
        redis_url=env["TASKPLANE_REDIS_URL"],
        broker_url=env["TASKPLANE_BROKER_URL"],
        database_url=env["TASKPLANE_DATABASE_URL"],
    )
    engine = ExecutionEngine(settings, app=baseline.app)
    try:
        wait_ready(procs, engine.app.control.ping)
        yield engine, procs
    finally:
        engine.close()
        for proc in procs:
            proc.stop()


def timed(fn: Callable[[], Any]) -> float:
    """Wall time of one call, in seconds."""
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def median_of(fn: Callable[[], Any], rounds: int) -> float:
    """Median wall time of *rounds* calls, after one warm-up call."""
    fn()
    return median(timed(fn) for _ in range(rounds))


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def machine() -> str:
    """A one-line description of this machine."""
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
