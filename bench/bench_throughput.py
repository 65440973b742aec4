"""Throughput: what events and tracking cost, and how agent work scales with workers.

Usage::

    python -m bench.bench_throughput [--tasks 2000] [--rounds 3]

Each figure is measured in one run against its own baseline:

1. *tasks* no-op function tasks in one plan, events on vs off (goal: events
   cost ≤ 10 %), with a bare Celery group of the same size for reference;
2. *tasks* agent tasks against a local HTTP agent (a separate process),
   tracking on vs off (goal: tracking costs ≤ 10 %);
3. 240 agent calls that each take 50 ms, on 1 and then 3 workers of 8 threads.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.harness import ROOT, cluster, configure, median_of
from taskplane.devtools import redis_server
from tests.agents import HttpAgentServer


def plan(tasks: list[dict[str, Any]], concurrency: int = 64) -> dict[str, Any]:
    return {
        "id": f"tp-{uuid.uuid4().hex}",
        "strategy": "allSettled",
        "maxConcurrency": concurrency,
        "timeout": 600000,
        "tasks": tasks,
    }


def noop_tasks(count: int) -> list[dict[str, Any]]:
    return [{"id": f"t{i}", "type": "function", "target": "noop"} for i in range(count)]


def agent_tasks(count: int, agent_id: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"a{i}",
            "type": "agent",
            "target": agent_id,
            "payload": {"i": i},
            "metadata": {"cache": False},
        }
        for i in range(count)
    ]


def events_cost(env: dict[str, str], count: int, rounds: int) -> dict[str, float]:
    from celery import group

    from bench import baseline

    figures = {}
    for label, enabled in (("events on", "true"), ("events off", "false")):
        with cluster(env, TASKPLANE_EVENTS_ENABLED=enabled) as (engine, _):
            figures[label] = median_of(
                lambda: engine.execute_parallel(plan(noop_tasks(count))), rounds
            )
            if enabled == "true":
                figures["bare group"] = median_of(
                    lambda: (
                        group(baseline.noop.s() for _ in range(count))
                        .apply_async()
                        .get(timeout=300)
                    ),
                    rounds,
                )
    return figures


def tracking_cost(env: dict[str, str], count: int, rounds: int) -> dict[str, float]:
    port = redis_server.free_port()
    agent = subprocess.Popen(
        [sys.executable, "-m", "examples.agents.http_agent", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    figures = {}
    try:
        for label, enabled in (("tracking on", "true"), ("tracking off", "false")):
            with cluster(env, TASKPLANE_TRACKING_ENABLED=enabled) as (engine, _):
                deadline = time.monotonic() + 10
                while not engine.register_agent("bench", f"http://127.0.0.1:{port}").healthy:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the benchmark agent did not start")
                    time.sleep(0.1)
                figures[label] = median_of(
                    lambda: engine.execute_parallel(plan(agent_tasks(count, "bench"))), rounds
                )
    finally:
        agent.terminate()
        agent.wait(timeout=5)
    return figures


def scaling(env: dict[str, str], rounds: int) -> dict[str, float]:
    figures = {}
    with HttpAgentServer(mode="slow", delay_ms=50) as agent:
        for workers in (1, 3):
            with cluster(env, workers=workers, threads=8) as (engine, _):
                engine.register_agent("slow", agent.endpoint)
                figures[f"{workers} worker(s)"] = median_of(
                    lambda: engine.execute_parallel(plan(agent_tasks(240, "slow"), 240)), rounds
                )
    return figures


def run(count: int, rounds: int) -> dict[str, dict[str, float]]:
    env = configure()
    return {
        "events": events_cost(env, count, rounds),
        "tracking": tracking_cost(env, count, rounds),
        "scaling": scaling(env, rounds),
    }


def table(results: dict[str, dict[str, float]], count: int) -> str:
    ev, tr, sc = results["events"], results["tracking"], results["scaling"]
    ev_cost = ev["events on"] / ev["events off"] - 1
    tr_cost = tr["tracking on"] / tr["tracking off"] - 1
    speedup = sc["1 worker(s)"] / sc["3 worker(s)"]
    rows = [
        "| benchmark | measured | baseline (same run) | ratio | goal | met |",
        "|---|--:|--:|--:|--:|:-:|",
        f"| {count} no-op tasks, events on vs off | {ev['events on'] * 1000:.0f} ms "
        f"| {ev['events off'] * 1000:.0f} ms (off) | {1 + ev_cost:.2f}× | ≤ 1.10× "
        f"| {'yes' if ev_cost <= 0.10 else 'no'} |",
        f"| {count} no-op tasks vs bare group().get() | {ev['events on'] * 1000:.0f} ms "
        f"| {ev['bare group'] * 1000:.0f} ms | {ev['events on'] / ev['bare group']:.2f}× | — | — |",
        f"| {count} agent tasks, tracking on vs off | {tr['tracking on'] * 1000:.0f} ms "
        f"| {tr['tracking off'] * 1000:.0f} ms (off) | {1 + tr_cost:.2f}× | ≤ 1.10× "
        f"| {'yes' if tr_cost <= 0.10 else 'no'} |",
        f"| 240 × 50 ms agent calls, 3 workers vs 1 (8 threads each) "
        f"| {sc['3 worker(s)'] * 1000:.0f} ms | {sc['1 worker(s)'] * 1000:.0f} ms (1 worker) "
        f"| {speedup:.2f}× faster | grows with workers | {'yes' if speedup > 1.5 else 'no'} |",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.time()
    print(table(run(args.tasks, args.rounds), args.tasks))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
