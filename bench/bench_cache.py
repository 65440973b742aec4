"""Result cache latency against a real Redis: one get/set at a time, p50 and p99.

Usage::

    python bench/bench_cache.py --redis-url redis://127.0.0.1:6379/0 --ops 2000

Writes only keys under a throw-away prefix and removes them afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from taskplane.cache import RedisResultCache
from taskplane.config import CacheConfig
from taskplane.models import ExecutionResult, TaskStatus

DEFAULT_OPS = 2000
DEFAULT_URL = "redis://127.0.0.1:6379/0"


def percentile(samples_us: list[float], fraction: float) -> float:
    ordered = sorted(samples_us)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measure(label: str, call: object, keys: list[str], *args: object) -> None:
    samples_us: list[float] = []
    for key in keys:
        started = time.perf_counter()
        call(key, *args)  # type: ignore[operator]
        samples_us.append((time.perf_counter() - started) * 1e6)
    print(
        f"{label:<10} n={len(keys):<6} p50={statistics.median(samples_us):7.0f} µs  "
        f"p99={percentile(samples_us, 0.99):7.0f} µs"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--ops", type=int, default=DEFAULT_OPS)
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    # max_entries below --ops so the timed sets include LRU eviction.
    cache = RedisResultCache(client, CacheConfig(max_entries=args.ops // 2), prefix=prefix)
    result = ExecutionResult(
        task_id="t",
        status=TaskStatus.SUCCESS,
        result={"summary": "x" * 500, "items": list(range(50))},
        confidence=0.9,
        execution_time=42.0,
        metadata={"agentId": "a1", "cached": False, "attempts": 1, "worker": "w1"},
    )
    keys = [cache.key_for("bench", {"i": i}, ["cap"]) for i in range(args.ops)]
    try:
        measure("set", cache.set, keys, result)
        measure("get hit", cache.get, keys[args.ops // 2 :])
        measure("get miss", cache.get, keys[: args.ops // 2])
        print(cache.stats())
    finally:
        cache.clear()
        client.delete(f"{prefix}:cache:seq")
        client.close()


if __name__ == "__main__":
    main()
