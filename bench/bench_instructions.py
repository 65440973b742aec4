"""What metrics and traces cost a worker, counted in instructions rather than timed.

Usage::

    python -m bench.bench_instructions [--tasks 300]   # about ten minutes

On a shared two-core machine the wall time of one plan moves by ±25 % from
round to round with nothing else running (see "Prometheus metrics and
OpenTelemetry traces" in bench/RESULTS.md), so a 5 % cost cannot be timed
there. The instructions a process executes do not depend on what else runs:
each configuration's worker (``off``, ``metrics``, ``tracing``, as in
``bench.bench_metrics``) runs under ``valgrind --tool=callgrind`` with
counting off; after a warm-up plan, counting is switched on, one client sends
its plan of N no-op tasks (after a warm-up plan of its own, counted too), and
the count is dumped. Everything the worker process does meanwhile is counted:
the consumer, the tasks, Celery's events, taskplane's events, the span
processor's thread, the ``/metrics`` server and its scrape. A no-op task's
cost is all overhead, so this is the worst case; the worker on one core is
held to it, so its wall time follows this count. Needs valgrind.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import redis

from bench.bench_metrics import GOAL, WARMUP_TASKS, config_worker, one_client
from bench.harness import STATE, configure
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import wait_ready

#: The configurations compared (``off`` is the reference).
CONFIGS = ("off", "metrics", "tracing")
#: A worker under valgrind starts about ten times slower than without.
READY_TIMEOUT_S = 240.0


def count(env: dict[str, str], name: str, tasks: int, port: int) -> int:
    """Instructions a worker of configuration *name* executes for one client's plans."""
    from bench import baseline

    out = STATE / "callgrind" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for url in (env["TASKPLANE_REDIS_URL"], env["TASKPLANE_BROKER_URL"]):
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()
    wrapper = (
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/callgrind.out",
    )
    worker = config_worker(env, name, port, wrapper=wrapper)
    try:
        wait_ready([worker], baseline.app.control.ping, timeout_s=READY_TIMEOUT_S)
        one_client(env, name, port, worker.pid, WARMUP_TASKS)
        control(worker.pid, "--instr=on")
        one_client(env, name, port, worker.pid, tasks)
        if name == "metrics":  # the scrape Prometheus would make
            httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=60).raise_for_status()
        control(worker.pid, "--dump")
        control(worker.pid, "--instr=off")
        return dumped(out)
    finally:
        worker.stop()


def control(pid: int, option: str) -> None:
    """Tell the callgrind of process *pid* to do *option* (it answers when it next runs)."""
    subprocess.run(
        ["callgrind_control", option, str(pid)], check=True, capture_output=True, timeout=120
    )


def dumped(out: Path) -> int:
    """The instruction total of the one dump callgrind wrote into *out* on request."""
    for _ in range(100):  # the dump is written by the worker, a moment after the request
        for path in sorted(out.glob("callgrind.out.*")):
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1])
        time.sleep(0.1)
    raise RuntimeError(f"callgrind wrote no dump into {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_instructions needs valgrind (apt install valgrind)")
    started = time.time()
    env = configure()
    port = redis_server.free_port()
    counted = {name: count(env, name, args.tasks, port) for name in CONFIGS}
    per_plan = args.tasks + WARMUP_TASKS  # the client's warm-up plan is counted too
    off = counted["off"]
    print("| worker | instructions | per task | vs off | goal | met |")
    print("|---|--:|--:|--:|--:|:-:|")
    for name in CONFIGS:
        ratio = counted[name] / off
        met = "—" if name == "off" else ("yes" if ratio <= GOAL else "no")
        goal = "—" if name == "off" else f"≤ {GOAL:.2f}×"
        print(
            f"| {name} | {counted[name] / 1e6:.1f} M | {counted[name] / per_plan / 1e3:.0f} k "
            f"| {ratio:.3f}× | {goal} | {met} |"
        )
    print(f"\n({time.time() - started:.0f} s; {per_plan} tasks counted per worker)")


if __name__ == "__main__":
    main()
