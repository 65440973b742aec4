"""The price of a task with everything on: taskplane against bare Celery, per task.

Usage::

    python -m bench.bench_overhead [--tasks 1000] [--rounds 3] [--configs default ...]
    # about five minutes for all four configurations

Defaults on throughout (taskplane's events and tracking, Celery's task events
for Flower). One gevent worker with 32 slots runs both sides; within a
configuration the sides alternate round by round, so a drift of the host lands
on all of them. Four worker configurations, each a fresh cluster:

* ``shipped``: Celery and kombu as they ship (``BENCH_SHIMS=off``): a result
  backend per greenlet, a kombu Redis client per broker command, task events
  published one by one;
* ``backend``: the shared result backend only;
* ``unbuffered``: all of taskplane's worker shims but buffered task events;
* ``default``: taskplane's worker as it runs (``taskplane/tasks/shims.py``).

Sides: a bare ``group(noop × N).get()``; the same with Celery's task events
off (``bench.noop_quiet``, ``task_send_sent_event`` off: a bare-Celery user
without Flower); an N-task parallel plan
(``maxConcurrency`` N); the plan with its first window sent as a Celery group
(how taskplane sent it before). For each: wall time, worker and client CPU per
task, and — from a separate, smaller pass under ``MONITOR`` (which slows Redis)
— the Redis commands clients sent per task and those scripts ran inside them.
One task's round trip is timed three ways, interleaved: taskplane, bare
``apply_async().get()``, and taskplane with the lone task's run recorded before
its message goes out (:func:`record_then_send`, how it was sent before the two
shared a round trip).
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from statistics import median
from typing import Any

import redis

from bench.bench_metrics import cpu_s
from bench.bench_throughput import noop_tasks, plan
from bench.harness import BROKER_DB, STATE_DB, cluster, configure, percentile, timed
from tests.httpserver import HttpTestServer

CONFIGS = {
    "shipped": "off",
    "backend": "backend",
    "unbuffered": "unbuffered",
    "default": "on",
}
MONITORED_TASKS = 100


def run(count: int, rounds: int, configs: list[str]) -> dict[str, Any]:
    env = configure()
    from celery import chord, group

    from bench import baseline
    from taskplane.tasks import canvas

    app = baseline.app
    noop = baseline.noop
    send_canvas = canvas.send_canvas

    def send_as_group(app_: Any, signatures: list[Any]) -> None:
        group(signatures).apply_async() if len(signatures) > 1 else send_canvas(app_, signatures)

    @contextmanager
    def window_as_group() -> Iterator[None]:
        canvas.send_canvas = send_as_group
        try:
            yield
        finally:
            canvas.send_canvas = send_canvas

    @contextmanager
    def task_events_off() -> Iterator[None]:
        app.conf.task_send_sent_event = False  # and the worker sends none for noop_quiet
        try:
            yield
        finally:
            app.conf.task_send_sent_event = True

    @contextmanager
    def nothing() -> Iterator[None]:
        yield

    figures: dict[str, Any] = {"configs": {}}
    with HttpTestServer() as server:
        for config in configs:
            with cluster(env, BENCH_SHIMS=CONFIGS[config]) as (engine, procs):
                worker = procs[0].pid

                def run_plan(n: int) -> None:
                    engine.execute_parallel(plan(noop_tasks(n), concurrency=n))

                def bare(n: int) -> None:
                    group(noop.s() for _ in range(n)).apply_async().get(timeout=120)

                def quiet(n: int) -> None:
                    group(baseline.noop_quiet.s() for _ in range(n)).apply_async().get(timeout=120)

                sides: list[tuple[str, Callable[[int], None], Callable[[], Any]]] = [
                    ("bare group", bare, nothing),
                    ("taskplane plan", run_plan, nothing),
                ]
                if config in ("shipped", "default"):
                    sides.append(("taskplane plan, window as a group", run_plan, window_as_group))
                if config in ("unbuffered", "default"):
                    sides.insert(1, ("bare group, task events off", quiet, task_events_off))
                samples: dict[str, list[tuple[float, float, float]]] = {s[0]: [] for s in sides}
                for _name, fn, mode in sides:  # warm-up
                    with mode():
                        fn(50)
                for _ in range(rounds):
                    for name, fn, mode in sides:
                        with mode():
                            w0, c0, t0 = cpu_s(worker), time.process_time(), time.perf_counter()
                            fn(count)
                            wall = time.perf_counter() - t0
                            samples[name].append(
                                (wall, cpu_s(worker) - w0, time.process_time() - c0)
                            )
                rows = {}
                for name, fn, mode in sides:
                    with mode():
                        trips, inner = monitored(env, lambda fn=fn: fn(MONITORED_TASKS))
                    got = samples[name]
                    rows[name] = {
                        "wall_s": median(s[0] for s in got),
                        "worker_ms": 1000 * median(s[1] for s in got) / count,
                        "client_ms": 1000 * median(s[2] for s in got) / count,
                        "trips": trips / MONITORED_TASKS,
                        "inner": inner / MONITORED_TASKS,
                    }
                if config != "backend":
                    rows.update(latency(engine, noop, server.url, chord, baseline, rounds))
                figures["configs"][config] = rows
    figures["load"] = os.getloadavg()
    return figures


@contextmanager
def record_then_send() -> Iterator[None]:
    """A lone task's run recorded before its message is sent (not in the same round trip)."""
    from taskplane.plan.redis_store import RedisRunStore
    from taskplane.plan.store import RunStore

    overlapped = RedisRunStore.create_sending
    RedisRunStore.create_sending = RunStore.create_sending  # type: ignore[method-assign]
    try:
        yield
    finally:
        RedisRunStore.create_sending = overlapped  # type: ignore[method-assign]


def latency(
    engine: Any, noop: Any, url: str, chord: Any, baseline: Any, rounds: int
) -> dict[str, Any]:
    """One task's round trip (p50, interleaved) and 100 × 100 ms HTTP calls vs a chord."""
    task = {"id": "one", "type": "function", "target": "noop"}
    engine.execute_task(task)
    noop.apply_async().get(timeout=10)
    tp: list[float] = []
    raw: list[float] = []
    recorded_first: list[float] = []

    def overlapped() -> None:
        tp.append(timed(lambda: engine.execute_task(task)))

    def sequential() -> None:
        with record_then_send():
            recorded_first.append(timed(lambda: engine.execute_task(task)))

    for i in range(150):  # the two taskplane sides take turns to come first
        first, second = (overlapped, sequential) if i % 2 else (sequential, overlapped)
        first()
        raw.append(timed(lambda: noop.apply_async().get(timeout=10)))
        second()

    def http_plan() -> None:
        calls = [{"id": f"t{i}", "type": "http", "target": f"{url}/sleep/100"} for i in range(100)]
        engine.execute_parallel(plan(calls, concurrency=100))

    def http_chord() -> None:
        chord(baseline.http_get.s(f"{url}/sleep/100") for _ in range(100))(
            baseline.collect.s()
        ).get(timeout=120)

    http_plan(), http_chord()
    plans, chords = [], []
    for _ in range(rounds):
        plans.append(timed(http_plan))
        chords.append(timed(http_chord))
    return {
        "single": (percentile(tp, 0.5), percentile(raw, 0.5)),
        "single, recorded then sent": (percentile(recorded_first, 0.5), percentile(raw, 0.5)),
        "http": (median(plans), median(chords)),
    }


def monitored(env: dict[str, str], fn: Callable[[], None]) -> tuple[int, int]:
    """Redis commands clients sent to the benchmark's databases during *fn*, and those run
    inside scripts."""
    client = redis.Redis.from_url(env["TASKPLANE_REDIS_URL"])
    seen: list[dict[str, Any]] = []
    ready, stop = threading.Event(), threading.Event()

    def watch() -> None:
        with client.monitor() as monitor:
            ready.set()
            for command in monitor.listen():
                if stop.is_set():
                    return
                seen.append(command)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    fn()
    time.sleep(0.5)  # the last acknowledgements and events
    stop.set()
    client.set("bench:monitor:stop", "1")  # one more command, so the watcher sees stop
    thread.join(5)
    client.close()
    ours = [c for c in seen if int(c.get("db", -1)) in (BROKER_DB, STATE_DB)]
    inner = sum(1 for c in ours if c.get("client_type") == "lua")
    return len(ours) - inner, inner


def table(figures: dict[str, Any], count: int) -> str:
    lines = [
        f"| worker | side | wall ({count} tasks) | vs bare group (same worker) | worker CPU/task "
        "| client CPU/task | Redis commands sent/task | + run inside scripts |",
        "|---|---|--:|--:|--:|--:|--:|--:|",
    ]
    for config, rows in figures["configs"].items():
        bare = rows["bare group"]["wall_s"]
        for name, r in rows.items():
            if name.startswith("single") or name == "http":
                continue
            lines.append(
                f"| {config} | {name} | {r['wall_s'] * 1000:.0f} ms | {r['wall_s'] / bare:.2f}× "
                f"| {r['worker_ms']:.2f} ms | {r['client_ms']:.2f} ms | {r['trips']:.1f} "
                f"| {r['inner']:.1f} |"
            )
    lines += ["", "| worker | benchmark | taskplane | bare | ratio |", "|---|---|--:|--:|--:|"]
    for config, rows in figures["configs"].items():
        for key, name, bare in (
            ("single", "one task round trip, p50", "apply_async().get()"),
            (
                "single, recorded then sent",
                "one task round trip, its run recorded before the send, p50",
                "apply_async().get()",
            ),
            ("http", "100 × 100 ms HTTP calls", "bare chord"),
        ):
            if key in rows:
                tp, raw = rows[key]
                lines.append(
                    f"| {config} | {name} vs {bare} | {tp * 1000:.1f} ms | {raw * 1000:.1f} ms "
                    f"| {tp / raw:.2f}× |"
                )
    load = figures["load"]
    lines.append(f"\nload average at the end: {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), metavar="CONFIG"
    )
    args = parser.parse_args()
    started = time.time()
    print(f"load average at the start: {os.getloadavg()[0]:.2f}")
    figures = run(args.tasks, args.rounds, args.configs)
    print(table(figures, args.tasks))
    print(f"\n({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
