"""What per-agent limits add to a call: own request and token limits + quota + in-flight cap.

Usage::

    python -m bench.bench_policies --redis-url redis://127.0.0.1:6379/0 --calls 500

Starts one local HTTP test agent and registers it three times through a
Redis-backed :class:`~taskplane.proxy.AgentProxy`: with no policy (the
settings' rate limit only, the path every call already takes); with its own
``maxRequests`` and ``maxTokens`` and a shared quota in requests and tokens;
and with ``maxInFlight`` on top (limits far above what the run reaches, so
nothing waits; the agent reports its usage, so every call is settled). Times
N sequential calls of each, interleaved so machine noise hits all alike, plus
N direct httpx calls as the bare baseline. Writes only keys under a
throw-away prefix and removes them afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import uuid

import redis

from bench.bench_proxy import CALL, PAYLOAD, WARMUP_CALLS, row, timed_ms
from taskplane.config import RateLimitConfig, Settings
from taskplane.models import ExecutionTask
from taskplane.proxy import HttpTransport, build_agent_proxy
from tests.agents import HttpAgentServer

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CALLS = 500
#: The goal: what the limits add at p50, over a call with none.
GOAL_MS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        key_prefix=prefix, rate_limit=RateLimitConfig(max_requests=1_000_000, window_ms=60_000)
    )
    proxy = build_agent_proxy(settings, client, emit=lambda t, d: None)
    agent = HttpAgentServer().start()
    try:
        agent.usage = {"inputTokens": 200, "outputTokens": 100}
        proxy.register_quota(
            "bench-quota", max_requests=1_000_000, max_tokens=10**9, window_ms=60_000
        )
        proxy.register("bench-plain", agent.endpoint)
        limits = {
            "maxRequests": 1_000_000,
            "maxTokens": 10**9,
            "windowMs": 60_000,
            "quota": "bench-quota",
        }
        proxy.register("bench-limited", agent.endpoint, policy=limits)
        proxy.register("bench-capped", agent.endpoint, policy={**limits, "maxInFlight": 1000})
        http = proxy.transports["http"]
        assert isinstance(http, HttpTransport)
        plain = ExecutionTask(id="b", type="agent", target="bench-plain", payload=PAYLOAD)
        limited = ExecutionTask(id="b", type="agent", target="bench-limited", payload=PAYLOAD)
        capped = ExecutionTask(id="b", type="agent", target="bench-capped", payload=PAYLOAD)
        headers = {"Idempotency-Key": "bench", "X-Taskplane-Task-Id": "b"}
        url = f"{agent.endpoint}/analyze"

        def direct() -> object:
            return http.client.post(url, json=PAYLOAD, headers=headers, timeout=5.0).json()

        steps = (
            direct,
            lambda: proxy(plain, CALL),
            lambda: proxy(limited, CALL),
            lambda: proxy(capped, CALL),
        )
        for _ in range(WARMUP_CALLS):
            for step in steps:
                step()
        samples: list[list[float]] = [[] for _ in steps]
        for _ in range(args.calls):
            for kept, step in zip(samples, steps, strict=True):
                kept.append(timed_ms(step))
    finally:
        proxy.close()
        agent.stop()
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()

    print("| path                         |     n | p50 (ms) | p95 (ms) |")
    print("|------------------------------|------:|---------:|---------:|")
    print(row("HTTP direct (httpx)", samples[0]))
    print(row("proxy, no policy", samples[1]))
    print(row("proxy, token limit + quota", samples[2]))
    print(row("  ... + maxInFlight", samples[3]))
    direct_p50, plain_p50, limited_p50, capped_p50 = (statistics.median(s) for s in samples)
    print()
    print(
        f"token limit + quota added at p50: {limited_p50 - plain_p50:.3f} ms over no policy "
        f"(goal <= {GOAL_MS} ms); with maxInFlight too: {capped_p50 - plain_p50:.3f} ms; "
        f"the proxy with no policy adds {plain_p50 - direct_p50:.3f} ms over bare httpx"
    )


if __name__ == "__main__":
    main()
