"""The same plans with state on one Redis and on a Redis Cluster, in one run.

Usage::

    python -m bench.bench_cluster [--rounds 3] [--cluster-ports 7104,7105,7106]

Three deployments, one worker process each (gevent, 100 slots), started in turn:

1. one Redis: state and broker (the default);
2. one Redis for state, RabbitMQ as broker;
3. a Redis Cluster of three masters for state (started here, on loopback), RabbitMQ as broker.

For each: a parallel plan of 1000 no-op function tasks, and a fan-out of 100
calls to a local HTTP agent (maxConcurrency 100), median wall time of
*rounds*; and the Redis commands one agent call costs, from ``INFO
commandstats`` deltas summed over every master (the state servers only;
with one Redis as broker too, its broker commands are counted as well).
RabbitMQ is ``TASKPLANE_TEST_RABBITMQ_URL`` (default guest on 127.0.0.1:5672),
on a queue of this run's own.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from bench.harness import ROOT, STATE, machine, median_of
from taskplane import ExecutionEngine, Settings
from taskplane.devtools import redis_cluster, redis_server
from taskplane.devtools.cluster import start_worker, wait_ready
from taskplane.redisio import cluster_nodes, is_cluster_url
from tests.agents import HttpAgentServer
from tests.support import rabbitmq_url

BROKER_DB, STATE_DB = 11, 12
SLOTS = 100
FAN_OUT = 100
PLAN = 1000


def masters(url: str) -> list[redis.Redis]:
    """A plain client per master of the state store (one for a single Redis)."""
    if not is_cluster_url(url):
        return [redis.Redis.from_url(url)]
    _auth, nodes = cluster_nodes(url)
    return [redis.Redis(host=host, port=port) for host, port in nodes]


def commands(url: str) -> int:
    """Commands the state store's masters have run since their stats were reset."""
    total = 0
    for client in masters(url):
        stats: dict[str, Any] = client.info("commandstats")
        total += sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config")
        client.close()
    return total


def reset_stats(url: str) -> None:
    for client in masters(url):
        client.config_resetstat()
        client.close()


@contextmanager
def deployment(name: str, env: dict[str, str]) -> Iterator[ExecutionEngine]:
    """One worker with *env* and an engine with the same settings."""
    os.environ.update(env)
    worker = start_worker(
        env, concurrency=SLOTS, name=f"bench-{name}", log_dir=STATE / "logs", root=ROOT
    )
    settings = Settings(
        redis_url=env["TASKPLANE_REDIS_URL"],
        broker_url=env["TASKPLANE_BROKER_URL"],
        database_url=env["TASKPLANE_DATABASE_URL"],
        queue=env["TASKPLANE_QUEUE"],
    )
    engine = ExecutionEngine(settings)
    try:
        wait_ready([worker], engine.app.control.ping)
        yield engine
    finally:
        engine.close()
        worker.stop()


def measure(name: str, env: dict[str, str], agent: HttpAgentServer, rounds: int) -> dict[str, Any]:
    with deployment(name, env) as engine:
        engine.register_agent("bench-agent", agent.endpoint, check_health=False)

        def plan_1000() -> None:
            tasks = [{"id": f"t{i}", "type": "function", "target": "noop"} for i in range(PLAN)]
            engine.execute_parallel(
                {"id": f"b1000-{uuid.uuid4().hex}", "strategy": "allSettled",
                 "maxConcurrency": PLAN, "tasks": tasks, "timeout": 120000}
            )  # fmt: skip

        def fan_out() -> None:
            tasks = [
                {"id": f"a{i}", "type": "agent", "target": "bench-agent", "payload": {"n": i}}
                for i in range(FAN_OUT)
            ]
            engine.execute_parallel(
                {"id": f"bf-{uuid.uuid4().hex}", "strategy": "allSettled",
                 "maxConcurrency": FAN_OUT, "tasks": tasks, "timeout": 120000}
            )  # fmt: skip

        plan_s = median_of(plan_1000, rounds)
        fan_s = median_of(fan_out, rounds)
        time.sleep(0.5)  # background publishers settle
        reset_stats(env["TASKPLANE_REDIS_URL"])
        fan_out()
        time.sleep(0.5)
        per_call = commands(env["TASKPLANE_REDIS_URL"]) / FAN_OUT
    row = {"name": name, "plan_s": plan_s, "fan_s": fan_s, "ops_per_call": per_call}
    print(row, flush=True)  # each deployment's figures as soon as they are in
    return row


def run(rounds: int, ports: list[int] | None) -> list[dict[str, Any]]:
    wanted = os.environ.get("TASKPLANE_REDIS_URL", "redis://127.0.0.1:6379/0")
    base = redis_server.ensure(STATE, redis_server.with_db(wanted, 0))
    rabbit = rabbitmq_url()
    common = {
        "TASKPLANE_FUNCTION_MODULES": "examples.functions",
        "TASKPLANE_DATABASE_URL": f"sqlite:///{STATE / 'tracking-cluster.db'}",
        "TASKPLANE_RATE_LIMIT__MAX_REQUESTS": "100000000",
        "TASKPLANE_CACHE__ENABLED": "false",  # every call reaches the agent
        "TASKPLANE_TRACKING_ENABLED": "false",
        "TASKPLANE_QUEUE": f"taskplane-bench-{uuid.uuid4().hex[:8]}",
    }
    single_state = redis_server.with_db(base, STATE_DB)
    for db in (STATE_DB, BROKER_DB):
        client = redis.Redis.from_url(redis_server.with_db(base, db))
        client.flushdb()
        client.close()
    cluster_dir = STATE / "redis-cluster"
    rows = []
    with HttpAgentServer() as agent:
        rows.append(
            measure(
                "one Redis (state + broker)",
                {**common, "TASKPLANE_REDIS_URL": single_state,
                 "TASKPLANE_BROKER_URL": redis_server.with_db(base, BROKER_DB)},
                agent, rounds,
            )
        )  # fmt: skip
        rows.append(
            measure(
                "one Redis + RabbitMQ",
                {**common, "TASKPLANE_REDIS_URL": single_state, "TASKPLANE_BROKER_URL": rabbit},
                agent, rounds,
            )
        )  # fmt: skip
        url = redis_cluster.start(cluster_dir, ports)
        try:
            rows.append(
                measure(
                    "Redis Cluster (3 masters) + RabbitMQ",
                    {**common, "TASKPLANE_REDIS_URL": url, "TASKPLANE_BROKER_URL": rabbit},
                    agent, rounds,
                )
            )  # fmt: skip
        finally:
            redis_cluster.stop(cluster_dir)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"| deployment | {PLAN}-task plan (s) | {FAN_OUT}-call fan-out (s) | "
        "Redis commands per agent call |",
        "|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['plan_s']:.2f} | {r['fan_s']:.2f} | {r['ops_per_call']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cluster-ports", default="", help="comma-separated; default: free")
    args = parser.parse_args()
    ports = [int(p) for p in args.cluster_ports.split(",") if p] or None
    started = time.time()
    Path(STATE).mkdir(parents=True, exist_ok=True)
    rows = run(args.rounds, ports)
    print(machine())
    print(table(rows))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
