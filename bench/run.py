"""Run every benchmark and rewrite bench/RESULTS.md (``make bench``).

Each benchmark measures its raw-Celery (or direct-call) baseline in the same
run, so the ratios hold on a shared, noisy machine where absolute times do not.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.harness import ROOT, STATE_DB, configure, machine
from taskplane.devtools import redis_server

RESULTS = ROOT / "bench" / "RESULTS.md"


def sections(redis_url: str, quick: bool) -> list[tuple[str, str, list[str]]]:
    rounds = "2" if quick else "5"
    return [
        (
            "Plans against bare Celery canvas",
            "One worker, 32 threads, for taskplane and the baseline alike.",
            ["-m", "bench.bench_plans", "--rounds", rounds],
        ),
        (
            "The price of a task",
            "One gevent worker (32 slots) as Celery ships it and as taskplane runs it; bare "
            "Celery and taskplane alternate on each, defaults on. Redis commands count what "
            "MONITOR sees on the benchmark's own databases.",
            ["-m", "bench.bench_overhead", "--rounds", "2" if quick else "3"]
            + (["--tasks", "500"] if quick else []),
        ),
        (
            "Events, tracking and horizontal scaling",
            "Workers restarted with the feature off for the baseline; scaling on 1 then 3 workers.",
            ["-m", "bench.bench_throughput", "--rounds", "2" if quick else "3"]
            + (["--tasks", "1000"] if quick else []),
        ),
        (
            "Prometheus metrics and OpenTelemetry traces",
            "Three workers side by side: one serving `/metrics` (scraped after each plan), one "
            "tracing through the SDK (batch processor, spans dropped), one with neither; one plan "
            "on each per round, in a rotating order.",
            ["-m", "bench.bench_metrics", "--rounds", "3" if quick else "5"]
            + (["--tasks", "500"] if quick else []),
        ),
        (
            "Metrics and traces in worker instructions",
            "Each configuration's worker under callgrind, counting what it executes for one "
            "plan of no-op tasks (needs valgrind).",
            ["-m", "bench.bench_instructions", "--tasks", "300" if quick else "1000"],
        ),
        (
            "Waiting holds no worker slot",
            "Isolation behind sick agents (8 slots, 4 calls/s per agent) and calls in flight on "
            "one `taskplane worker` against bare Celery on `-P gevent -c 1000`.",
            ["-m", "bench.bench_waiting", "--calls", "300" if quick else "1000"],
        ),
        (
            "Agent proxy overhead per call",
            "AgentProxy (registry + breaker + limiter + transport) vs a direct client call.",
            ["-m", "bench.bench_proxy", "--redis-url", redis_url]
            + (["--calls", "200"] if quick else []),
        ),
        (
            "Per-agent limits per call",
            "An agent with its own limit, a shared quota and `maxInFlight` vs one with no policy, "
            "through the same Redis-backed AgentProxy; bare httpx as the baseline.",
            ["-m", "bench.bench_policies", "--redis-url", redis_url]
            + (["--calls", "200"] if quick else []),
        ),
        (
            "Result cache operations",
            "One Lua script per operation against the same Redis.",
            ["-m", "bench.bench_cache", "--redis-url", redis_url],
        ),
        (
            "Confidence tracking store",
            "SQLite file with rollups; `get_agent_stats` over the whole history.",
            ["-m", "bench.bench_tracking"] + (["--points", "200000"] if quick else []),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds and smaller sizes")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    env = configure()
    redis_url = redis_server.with_db(env["TASKPLANE_REDIS_URL"], STATE_DB)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    parts = [
        "# Benchmark results",
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {machine()}"
        f" ({platform.system()}), commit `{commit or 'uncommitted'}`, by `make bench`.",
        "The machine is shared and noisy: read the ratios, each taken against a baseline",
        "measured in the same run, rather than the absolute times.",
        "",
    ]
    for title, note, argv in sections(redis_url, args.quick):
        print(f"== {title}", flush=True)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, timeout=1800
        )
        output = done.stdout.strip() or done.stderr.strip()[-2000:]
        print(output, flush=True)
        parts += [f"## {title}", "", note, "", output, ""]
        if done.returncode:
            parts += [
                f"(exited with {done.returncode} after {time.monotonic() - started:.0f} s)",
                "",
            ]
    args.output.write_text("\n".join(parts))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
