"""Waiting holds no worker slot: isolation behind sick agents, and calls in flight per worker.

Usage::

    python -m bench.bench_waiting [--calls 1000] [--rounds 1]

Figures (each against a baseline measured in the same run):

1. **Isolation.** One worker with 8 slots and a limit of 4 calls/s per agent.
   Behind a backlog of 16 tasks to an agent that answers 503, then to one
   that answers 429 with ``Retry-After: 5``, then to one that is only
   rate-limited, a 3-task plan to a healthy 50 ms agent. The figure is the
   time that plan took, against the same plan with no backlog.
2. **Capacity.** 1000 agent calls of 2 s in one plan (``maxConcurrency``
   1000) on one worker started by ``taskplane worker`` with default settings,
   against bare Celery tasks making the same HTTP calls on
   ``celery worker -P gevent -c 1000`` (same broker, same agent), and against
   the ideal 2 s; HTTP and gRPC agents; the most calls the agent saw at once,
   and the worker's memory growth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import redis
from celery import group

from bench.harness import ROOT, STATE, cluster, configure
from taskplane import ExecutionEngine, Settings, TaskStatus
from taskplane.devtools.cluster import WorkerProcess, wait_ready, worker_env
from tests.agents import HttpAgentServer

#: Slots of the isolation worker, and the per-agent limit it runs with.
ISOLATION_SLOTS, ISOLATION_RPS = 8, 4


def agent_task(task_id: str, agent_id: str) -> dict[str, Any]:
    return {
        "id": task_id,
        "type": "agent",
        "target": agent_id,
        "payload": {"n": task_id, "nonce": uuid.uuid4().hex},
        "metadata": {"cache": False},
    }


def healthy_plan_s(engine: ExecutionEngine, endpoint: str) -> float:
    """One 3-task plan to the healthy agent, under a fresh id (its own rate-limit window)."""
    agent_id = f"healthy-{uuid.uuid4().hex[:8]}"
    engine.register_agent(agent_id, endpoint)
    started = time.perf_counter()
    results = engine.execute_parallel(
        {"id": f"h-{uuid.uuid4().hex}", "tasks": [agent_task(f"h{i}", agent_id) for i in range(3)]}
    )
    assert all(r.status is TaskStatus.SUCCESS for r in results), [r.error for r in results]
    return time.perf_counter() - started


def isolation() -> list[dict[str, Any]]:
    env = configure(
        TASKPLANE_RATE_LIMIT__MAX_REQUESTS=str(ISOLATION_RPS),
        TASKPLANE_RATE_LIMIT__WINDOW_MS="1000",
    )
    rows = []
    with (
        cluster(env, threads=ISOLATION_SLOTS) as (engine, _workers),
        HttpAgentServer("slow", delay_ms=50) as healthy,
    ):
        healthy_plan_s(engine, healthy.endpoint)  # warm: connections, registry
        alone = [healthy_plan_s(engine, healthy.endpoint) for _ in range(3)]
        cases = [
            ("answers 503", "unavailable", "1"),
            ("answers 429, Retry-After: 5", "throttle", "5"),
        ]
        cases.append((f"rate-limited to {ISOLATION_RPS}/s", "ok", "1"))
        for label, mode, retry_after in cases:
            with HttpAgentServer(mode) as sick:
                sick.retry_after = retry_after
                sick_id = f"sick-{uuid.uuid4().hex[:6]}"
                engine.register_agent(sick_id, sick.endpoint)
                backlog = engine.submit(
                    {
                        "id": f"b-{uuid.uuid4().hex}",
                        "strategy": "allSettled",
                        "maxConcurrency": 16,
                        "timeout": 60000,
                        "tasks": [agent_task(f"s{i}", sick_id) for i in range(16)],
                    }
                )
                deadline = time.monotonic() + 10
                while sick.calls < min(16, ISOLATION_SLOTS) and time.monotonic() < deadline:
                    time.sleep(0.01)
                behind = healthy_plan_s(engine, healthy.endpoint)
                backlog.cancel()
            rows.append(
                {
                    "case": f"3-task plan behind 16 tasks to an agent that {label}",
                    "ms": behind * 1000,
                }
            )
        alone += [healthy_plan_s(engine, healthy.endpoint) for _ in range(3)]
    typical = statistics.median(alone)
    for row in rows:
        row["alone_ms"] = typical * 1000
        row["added_ms"] = row["ms"] - typical * 1000
    return rows


# -- capacity ------------------------------------------------------------------------------


@contextmanager
def slow_agents(delay_ms: float) -> Iterator[dict[str, int]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.slow_agents", "--delay-ms", str(delay_ms)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env=worker_env({}, root=ROOT),
    )
    try:
        assert proc.stdout is not None
        yield json.loads(proc.stdout.readline())
    finally:
        proc.terminate()
        proc.wait(10)


def start(argv: list[str], env: dict[str, str], name: str) -> WorkerProcess:
    log_path = STATE / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            argv,
            env=worker_env(env, root=ROOT),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return WorkerProcess(name, proc, log_path, env)


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(
    agent_url: str, run: Any, worker: WorkerProcess, calls: int, timeout_s: float = 300.0
) -> dict[str, float]:
    """Wall time until the agent answered *calls* calls, peak in flight, worker RSS growth."""
    httpx.post(f"{agent_url}/reset")
    before = rss_mb(worker.pid)
    peak = before
    cpu_before = cpu_s(worker.pid)
    started, started_at = time.perf_counter(), time.time()
    waiter = run()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = httpx.get(f"{agent_url}/stats").json()
        peak = max(peak, rss_mb(worker.pid))
        if stats["calls"] >= calls and stats["inFlight"] == 0:
            break
        time.sleep(0.05)
    wall = time.perf_counter() - started
    cpu = cpu_s(worker.pid) - cpu_before
    waiter()
    return {
        "s": wall,
        "in_flight": stats["maxInFlight"],
        "rss_growth_mb": peak - before,
        "cpu_ms_per_call": cpu * 1000.0 / calls,
        "first_call_s": stats["firstArrival"] - started_at,
        "last_call_s": stats["lastArrival"] - started_at,
    }


#: The bare-Celery worker of the capacity baseline.
BARE_WORKER = [
    sys.executable,
    *("-m", "celery", "-A", "bench.baseline", "worker", "-P", "gevent", "-c", "1000"),
    *("-n", "bare@%h", "--loglevel", "WARNING"),
]


def capacity(calls: int, rounds: int) -> list[dict[str, Any]]:
    env = configure()
    for url in (env["TASKPLANE_REDIS_URL"], env["TASKPLANE_BROKER_URL"]):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    from bench import baseline

    settings = Settings(
        redis_url=env["TASKPLANE_REDIS_URL"],
        broker_url=env["TASKPLANE_BROKER_URL"],
        database_url=env["TASKPLANE_DATABASE_URL"],
    )
    engine = ExecutionEngine(settings, app=baseline.app)
    rows: list[dict[str, Any]] = []
    try:
        with slow_agents(2000) as ports:
            http_url = f"http://127.0.0.1:{ports['http']}"
            engine.register_agent("slow-http", http_url)
            engine.register_agent("slow-grpc", f"127.0.0.1:{ports['grpc']}", protocol="grpc")
            # each worker runs the HTTP plan twice: first on a fresh process ("cold": pools,
            # connections and greenlets are created), then again ("warm", a worker's usual state)
            runs: dict[str, list[dict[str, float]]] = {
                key: [] for key in ("http-cold", "http", "grpc", "bare-cold", "bare")
            }
            for _ in range(rounds):
                worker = start(
                    [sys.executable, "-m", "taskplane.cli", "worker", "--name", "cap@%h"],
                    env,
                    "cap",
                )
                try:
                    wait_ready([worker], engine.app.control.ping, timeout_s=60)
                    for key in ("http-cold", "http", "grpc"):
                        agent = f"slow-{key.split('-')[0]}"
                        runner = plan_runner(engine, agent, calls)
                        runs[key].append(measure(http_url, runner, worker, calls))
                finally:
                    worker.stop()
                bare = start(BARE_WORKER, env, "bare")
                try:
                    wait_ready([bare], engine.app.control.ping, timeout_s=60)
                    for key in ("bare-cold", "bare"):
                        runs[key].append(
                            measure(http_url, bare_runner(http_url, calls), bare, calls)
                        )
                finally:
                    bare.stop()
        best = {key: min(found, key=lambda r: r["s"]) for key, found in runs.items()}
        for key, title in (
            ("http", "HTTP agent calls, warm worker"),
            ("grpc", "gRPC agent calls, warm worker"),
            ("http-cold", "HTTP agent calls, fresh worker"),
        ):
            mine, bare_run = best[key], best["bare-cold" if key.endswith("cold") else "bare"]
            rows.append(
                {
                    "case": f"{calls} × 2 s {title}",
                    "s": mine["s"],
                    "bare_s": bare_run["s"],
                    "ratio": mine["s"] / bare_run["s"],
                    "ideal_ratio": mine["s"] / 2.0,
                    "in_flight": mine["in_flight"],
                    "bare_in_flight": bare_run["in_flight"],
                    "cpu_ms": mine["cpu_ms_per_call"],
                    "bare_cpu_ms": bare_run["cpu_ms_per_call"],
                    "rss_growth_mb": mine["rss_growth_mb"],
                    "bare_rss_growth_mb": bare_run["rss_growth_mb"],
                }
            )
    finally:
        engine.close()
    return rows


def plan_runner(engine: ExecutionEngine, agent_id: str, calls: int) -> Any:
    def run() -> Any:
        handle = engine.submit(
            {
                "id": f"cap-{uuid.uuid4().hex}",
                "strategy": "allSettled",
                "maxConcurrency": calls,
                "timeout": 300000,
                "tasks": [agent_task(f"c{i}", agent_id) for i in range(calls)],
            }
        )

        def wait() -> None:
            results = handle.wait(300)
            failed = [r.error for r in results if r.status is not TaskStatus.SUCCESS]
            assert not failed, failed[:3]

        return wait

    return run


def bare_runner(agent_url: str, calls: int) -> Any:
    from bench import baseline

    def run() -> Any:
        result = group(baseline.agent_call.s(agent_url, i) for i in range(calls)).apply_async()
        return lambda: result.get(timeout=300)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    iso = isolation()
    print("| case | healthy plan (ms) | alone, same run (ms) | added (ms) | goal | met |")
    print("|---|--:|--:|--:|--:|:-:|")
    for row in iso:
        met = "yes" if row["added_ms"] <= 300 else "no"
        print(
            f"| {row['case']} | {row['ms']:.0f} | {row['alone_ms']:.0f} | "
            f"{row['added_ms']:+.0f} | ≤ +300 | {met} |"
        )
    print()
    cap = capacity(args.calls, args.rounds)
    print(
        "| case | taskplane (s) | bare Celery gevent -c 1000 (s) | ratio | vs ideal 2 s | "
        "in flight (bare) | worker CPU per call ms (bare) | worker RSS growth MB (bare) | "
        "goal | met |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|")
    for row in cap:
        met = "yes" if row["ratio"] <= 1.0 and row["rss_growth_mb"] <= 200 else "no"
        print(
            f"| {row['case']} | {row['s']:.1f} | {row['bare_s']:.1f} | {row['ratio']:.2f}× | "
            f"{row['ideal_ratio']:.2f}× | {row['in_flight']} ({row['bare_in_flight']}) | "
            f"{row['cpu_ms']:.1f} ({row['bare_cpu_ms']:.1f}) | "
            f"{row['rss_growth_mb']:.0f} ({row['bare_rss_growth_mb']:.0f}) | "
            f"≤ 1.0× bare, ≤ 200 MB | {met} |"
        )


if __name__ == "__main__":
    main()
