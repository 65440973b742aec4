"""What metrics and traces cost: one plan of no-op tasks, each on vs both off, in one run.

Usage::

    python -m bench.bench_metrics [--tasks 1000] [--rounds 2]   # about three minutes

The worker serves ``/metrics`` (scraped once per round, as Prometheus would),
or traces through the OpenTelemetry SDK (batch processor, an exporter that
drops the spans; the client traces too, so the plan's context travels in every
message), or neither; a bare Celery group of the same size is the reference.
Tracing runs last: an SDK provider, once installed, stays for the process.
Goal: each costs ≤ 5 %.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import median

import httpx

from bench.bench_throughput import noop_tasks, plan
from bench.harness import cluster, configure, median_of
from taskplane.devtools import redis_server


def run(count: int, rounds: int) -> dict[str, float]:
    env = configure()  # before bench.baseline builds its app from the environment
    from celery import group

    from bench import baseline

    port = redis_server.free_port()
    figures = {}
    for label, extra in (
        ("metrics off", {}),
        ("metrics on", {"TASKPLANE_METRICS_PORT": str(port)}),
        ("tracing on", {"BENCH_TRACING": "noop"}),
    ):
        if label == "tracing on":
            baseline.install_noop_tracing()
        with cluster(env, **extra) as (engine, procs):
            cpu: list[float] = []

            def one_plan(scrape: bool = label == "metrics on", cpu: list[float] = cpu) -> None:
                before = cpu_s(procs[0].pid)
                engine.execute_parallel(plan(noop_tasks(count)))
                cpu.append(cpu_s(procs[0].pid) - before)
                if scrape:
                    httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).raise_for_status()

            figures[label] = median_of(one_plan, rounds)
            figures[f"{label} cpu"] = median(cpu[1:])  # the warm-up call left out
            if label == "metrics off":
                figures["bare group"] = median_of(
                    lambda: (
                        group(baseline.noop.s() for _ in range(count))
                        .apply_async()
                        .get(timeout=300)
                    ),
                    rounds,
                )
    return figures


def cpu_s(pid: int) -> float:
    """CPU seconds process *pid* has used (user + system), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(figures: dict[str, float], count: int) -> str:
    off, bare = figures["metrics off"], figures["bare group"]
    rows = []
    for label in ("metrics on", "tracing on"):
        on = figures[label]
        ratio = on / off
        rows.append(
            f"| {count} no-op tasks, {label} vs both off | {on * 1000:.0f} ms "
            f"| {off * 1000:.0f} ms (off) | {ratio:.2f}× | ≤ 1.05× "
            f"| {'yes' if ratio <= 1.05 else 'no'} |"
        )
    for label in ("metrics on", "tracing on"):  # what other load on the machine leaves alone
        on, base = figures[f"{label} cpu"], figures["metrics off cpu"]
        rows.append(
            f"| worker CPU per plan, {label} vs both off | {on * 1000:.0f} ms "
            f"| {base * 1000:.0f} ms (off) | {on / base:.2f}× | — | — |"
        )
    return "\n".join(
        [
            "| benchmark | measured | baseline (same run) | ratio | goal | met |",
            "|---|--:|--:|--:|--:|:-:|",
            *rows,
            f"| {count} no-op tasks (metrics off) vs bare group().get() | {off * 1000:.0f} ms "
            f"| {bare * 1000:.0f} ms | {off / bare:.2f}× | — | — |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.time()
    print(table(run(args.tasks, args.rounds), args.tasks))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
