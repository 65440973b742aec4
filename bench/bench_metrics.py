"""What metrics and traces cost: one plan of no-op tasks, each on vs both off, in one run.

Usage::

    python -m bench.bench_metrics [--tasks 1000] [--rounds 5]   # about four minutes

Four workers run side by side, each on its own queue: one serving
``/metrics`` (scraped after each of its plans, as Prometheus would), one
tracing through the OpenTelemetry SDK (batch processor, an exporter that drops
the spans), one with neither, and one more with neither for a bare Celery
group of the same size, the reference. Each round runs one plan on each, in an order that rotates
from round to round, so a drift of the machine over the run lands on every
configuration alike; the first round is a warm-up and is left out. Each plan
is sent from a fresh client process of its configuration (the tracing client
traces too, so the plan's context travels in every message; an SDK provider,
once installed, stays for its process). Only one worker has work at a time.
Goal: each costs ≤ 5 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

import httpx
import redis

from bench.bench_throughput import noop_tasks, plan
from bench.harness import ROOT, STATE, configure
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready

#: The configurations compared, and what their workers (and clients) add to the settings.
CONFIGS = ("off", "metrics", "tracing", "bare")
#: Tasks of the warm-up plan each client sends before the timed one.
WARMUP_TASKS = 20
GOAL = 1.05


def worker_env(env: dict[str, str], name: str, metrics_port: int) -> dict[str, str]:
    """The settings of configuration *name*'s worker (bare Celery's has neither feature on)."""
    queue = {"TASKPLANE_QUEUE": f"bench-{name}"}
    if name == "metrics":
        return {**env, **queue, "TASKPLANE_METRICS_PORT": str(metrics_port)}
    if name == "tracing":
        return {**env, **queue, "BENCH_TRACING": "noop"}
    return {**env, **queue}


def config_worker(
    env: dict[str, str], name: str, metrics_port: int, *, wrapper: tuple[str, ...] = ()
) -> WorkerProcess:
    """A 32-slot gevent worker of configuration *name*, run under *wrapper* if given."""
    return start_worker(
        worker_env(env, name, metrics_port),
        concurrency=32,
        name=f"bench-{name}",
        log_dir=STATE / "logs",
        root=ROOT,
        app_module="bench.baseline",
        wrapper=wrapper,
    )


def run(count: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    env = configure()
    from bench import baseline

    for url in (env["TASKPLANE_REDIS_URL"], env["TASKPLANE_BROKER_URL"]):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    port = redis_server.free_port()
    workers = {name: config_worker(env, name, port) for name in CONFIGS}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    try:
        wait_ready(list(workers.values()), baseline.app.control.ping)
        for round_no in range(rounds + 1):
            shift = round_no % len(CONFIGS)
            for name in CONFIGS[shift:] + CONFIGS[:shift]:
                worker = workers[name]
                figures = one_client(env, name, port, worker.pid, count)
                if name == "metrics":
                    httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).raise_for_status()
                if round_no:  # the first round warms every worker up
                    samples[name].append(figures)
    finally:
        for worker in workers.values():
            worker.stop()
    return samples


def one_client(env: dict[str, str], name: str, port: int, pid: int, count: int) -> dict[str, float]:
    """One timed plan (or bare group) of configuration *name*, from a fresh process."""
    args = [sys.executable, "-m", "bench.bench_metrics", "--one", name, "--tasks", str(count)]
    args += ["--worker-pid", str(pid)]
    done = subprocess.run(
        args,
        # the client's own settings: its queue, and tracing for the tracing configuration
        env={
            **{k: v for k, v in os.environ.items() if k != "TASKPLANE_METRICS_PORT"},
            **{
                k: v
                for k, v in worker_env(env, name, port).items()
                if k != "TASKPLANE_METRICS_PORT"
            },
            "PYTHONPATH": str(ROOT),
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def client_main(name: str, count: int, worker_pid: int) -> None:
    """In the client process: a warm-up, then the timed plan; prints its figures as JSON."""
    from celery import group

    from bench import baseline  # traces this process when BENCH_TRACING says so
    from taskplane import ExecutionEngine, Settings

    def bare(size: int) -> None:
        group(baseline.noop.s() for _ in range(size)).apply_async().get(timeout=300)

    engine = ExecutionEngine(Settings(), app=baseline.app)
    try:

        def one(size: int) -> None:
            if name == "bare":
                bare(size)
            else:
                engine.execute_parallel(plan(noop_tasks(size)))

        one(WARMUP_TASKS)
        cpu_before = cpu_s(worker_pid)
        started = time.perf_counter()
        one(count)
        wall = time.perf_counter() - started
        cpu = cpu_s(worker_pid) - cpu_before
    finally:
        engine.close()
    print(json.dumps({"wall": wall, "cpu": cpu}))


def cpu_s(pid: int) -> float:
    """CPU seconds process *pid* has used (user + system), from ``/proc``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def table(samples: dict[str, list[dict[str, float]]], count: int) -> str:
    def mid(name: str, what: str) -> float:
        return median(s[what] for s in samples[name])

    off, bare = mid("off", "wall"), mid("bare", "wall")
    rows = []
    for label in ("metrics", "tracing"):
        on = mid(label, "wall")
        ratio = on / off
        rows.append(
            f"| {count} no-op tasks, {label} on vs both off | {on * 1000:.0f} ms "
            f"| {off * 1000:.0f} ms (off) | {ratio:.2f}× | ≤ {GOAL:.2f}× "
            f"| {'yes' if ratio <= GOAL else 'no'} |"
        )
    for label in ("metrics", "tracing"):  # what other load on the machine leaves alone
        on, base = mid(label, "cpu"), mid("off", "cpu")
        rows.append(
            f"| worker CPU per plan, {label} on vs both off | {on * 1000:.0f} ms "
            f"| {base * 1000:.0f} ms (off) | {on / base:.2f}× | — | — |"
        )
    per_round = " / ".join(
        f"{m['wall'] / o['wall']:.2f}, {t['wall'] / o['wall']:.2f}"
        for m, t, o in zip(samples["metrics"], samples["tracing"], samples["off"], strict=True)
    )
    return "\n".join(
        [
            "| benchmark | measured | baseline (same run) | ratio | goal | met |",
            "|---|--:|--:|--:|--:|:-:|",
            *rows,
            f"| {count} no-op tasks (both off) vs bare group().get() | {off * 1000:.0f} ms "
            f"| {bare * 1000:.0f} ms | {off / bare:.2f}× | — | — |",
            "",
            f"Per round, metrics and tracing on vs off (wall): {per_round}; "
            f"{len(samples['off'])} rounds.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-pid", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        client_main(args.one, args.tasks, args.worker_pid)
        return
    started = time.time()
    load = os.getloadavg()[0]
    print(table(run(args.tasks, args.rounds), args.tasks))
    print(f"\n({time.time() - started:.0f} s; load average {load:.2f} at the start)")


if __name__ == "__main__":
    main()
