"""Plans against bare Celery canvas, on one worker with 32 slots (gevent, the default pool).

Usage::

    python -m bench.bench_plans [--rounds 5]

Figures (each with its raw-Celery baseline from the same run, as a ratio):

1. 1000 no-op function tasks in one parallel plan vs ``group(noop × 1000).get()``;
2. 100 tasks each waiting 100 ms on a local HTTP server (maxConcurrency 100)
   vs a bare chord of the same calls, and vs the ideal ceil(100/32) × 0.1 s;
3. one task's round trip (p50 of 200) vs ``noop.apply_async().get()``;
4. a sequential plan of 10 function tasks vs a bare chain of 10 no-ops;
5. a cache hit through the whole task path (p50) vs the raw no-op round trip.
"""

from __future__ import annotations

import argparse
import math
import time
import uuid
from typing import Any

from bench.harness import cluster, configure, median_of, percentile, timed
from tests.httpserver import HttpTestServer


def run(rounds: int) -> list[dict[str, Any]]:
    env = configure()
    from celery import chain, chord, group

    from bench import baseline

    rows: list[dict[str, Any]] = []
    with HttpTestServer() as server, cluster(env) as (engine, _workers):
        noop = baseline.noop
        http_get = baseline.http_get

        def tp_parallel_1000() -> None:
            engine.execute_parallel(
                {
                    "id": f"b1000-{uuid.uuid4().hex}",
                    "strategy": "allSettled",
                    "maxConcurrency": 1000,
                    "tasks": [
                        {"id": f"t{i}", "type": "function", "target": "noop"} for i in range(1000)
                    ],
                }
            )

        def raw_group_1000() -> None:
            group(noop.s() for _ in range(1000)).apply_async().get(timeout=120)

        tp, raw = median_of(tp_parallel_1000, rounds), median_of(raw_group_1000, rounds)
        rows.append(row("1000 no-op tasks, one parallel plan", tp, raw, "bare group().get()", 1.0))

        def tp_http_100() -> None:
            engine.execute_parallel(
                {
                    "id": f"bh-{uuid.uuid4().hex}",
                    "strategy": "allSettled",
                    "maxConcurrency": 100,
                    "tasks": [
                        {"id": f"t{i}", "type": "http", "target": f"{server.url}/sleep/100"}
                        for i in range(100)
                    ],
                }
            )

        def raw_chord_100() -> None:
            chord(http_get.s(f"{server.url}/sleep/100") for _ in range(100))(
                baseline.collect.s()
            ).get(timeout=120)

        tp, raw = median_of(tp_http_100, rounds), median_of(raw_chord_100, rounds)
        ideal = math.ceil(100 / 32) * 0.1
        rows.append(row("100 × 100 ms HTTP calls, maxConcurrency 100", tp, raw, "bare chord", 1.05))
        rows.append(
            row("100 × 100 ms HTTP calls vs ideal ceil(100/32)×0.1 s", tp, ideal, "ideal", 1.25)
        )

        task = {"id": "one", "type": "function", "target": "noop"}
        engine.execute_task(task)
        tp_samples = [timed(lambda: engine.execute_task(task)) for _ in range(200)]
        raw_samples = [timed(lambda: noop.apply_async().get(timeout=10)) for _ in range(200)]
        tp, round_trip = percentile(tp_samples, 0.5), percentile(raw_samples, 0.5)
        rows.append(row("one task round trip, p50", tp, round_trip, "apply_async().get()", 1.5))

        def tp_sequential_10() -> None:
            engine.execute_sequential(
                {
                    "id": f"bs-{uuid.uuid4().hex}",
                    "tasks": [
                        {"id": f"t{i}", "type": "function", "target": "noop"} for i in range(10)
                    ],
                }
            )

        def raw_chain_10() -> None:
            chain(noop.s() for _ in range(10)).apply_async().get(timeout=30)

        tp, raw = median_of(tp_sequential_10, rounds * 4), median_of(raw_chain_10, rounds * 4)
        rows.append(row("sequential plan of 10 tasks", tp, raw, "bare chain", 1.5))

        cached = {
            "id": "hit",
            "type": "function",
            "target": "add",
            "payload": {"a": 1, "b": 2},
            "metadata": {"cache": True},
        }
        engine.execute_task(cached)
        tp_samples = [timed(lambda: engine.execute_task(cached)) for _ in range(200)]
        assert engine.execute_task(cached).metadata["cached"] is True
        tp = percentile(tp_samples, 0.5)
        rows.append(
            row(
                "cache hit through the task path, p50",
                tp,
                round_trip,
                "raw no-op round trip p50",
                1.3,
            )
        )
    return rows


def row(name: str, value_s: float, baseline_s: float, baseline: str, goal: float) -> dict[str, Any]:
    ratio = value_s / baseline_s
    return {
        "name": name,
        "taskplane_ms": value_s * 1000,
        "baseline": baseline,
        "baseline_ms": baseline_s * 1000,
        "ratio": ratio,
        "goal": goal,
        "met": ratio <= goal,
    }


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| benchmark | taskplane (ms) | baseline | baseline (ms) | ratio | goal | met |",
        "|---|--:|---|--:|--:|--:|:-:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['taskplane_ms']:.1f} | {r['baseline']} | {r['baseline_ms']:.1f} "
            f"| {r['ratio']:.2f}× | ≤ {r['goal']}× | {'yes' if r['met'] else 'no'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    started = time.time()
    rows = run(args.rounds)
    print(table(rows))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
