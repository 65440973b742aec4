"""What the agent proxy adds to a call: breaker + limiter + transport vs a bare client call.

Usage::

    python -m bench.bench_proxy --redis-url redis://127.0.0.1:6379/0 --calls 500

Starts a local HTTP and a local gRPC test agent, then times, call by call and
interleaved (so machine noise hits both alike), N sequential calls through
:class:`~taskplane.proxy.AgentProxy` (Redis registry, breaker and limiter)
and N direct calls with the same pooled client. Prints a markdown table, the
p50 overhead, and how long 32 concurrent 50 ms calls take through one proxy.
Writes only keys under a throw-away prefix and removes them afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import redis

from taskplane.config import RateLimitConfig, Settings
from taskplane.contract import CallContext
from taskplane.models import ExecutionTask
from taskplane.proxy import AgentProxy, GrpcTransport, HttpTransport, build_agent_proxy, parallax
from taskplane.proxy.grpc import build_request
from tests.agents import GrpcAgentServer, HttpAgentServer

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CALLS = 500
WARMUP_CALLS = 50
CONCURRENT_CALLS = 32
CONCURRENT_DELAY_MS = 50
CONCURRENT_ROUNDS = 5
PAYLOAD = {"task": "summarise", "data": {"text": "the quick brown fox", "n": [1, 2, 3]}}
CALL = CallContext(timeout_s=5.0, idempotency_key="bench")


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def timed_ms(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000.0


def interleaved(
    first: Callable[[], object], second: Callable[[], object], calls: int
) -> tuple[list[float], list[float]]:
    for _ in range(WARMUP_CALLS):
        first(), second()
    a: list[float] = []
    b: list[float] = []
    for _ in range(calls):
        a.append(timed_ms(first))
        b.append(timed_ms(second))
    return a, b


def row(label: str, samples: list[float]) -> str:
    p50, p95 = statistics.median(samples), percentile(samples, 0.95)
    return f"| {label:<28} | {len(samples):>5} | {p50:8.3f} | {p95:8.3f} |"


def concurrent_ms(proxy: AgentProxy, agent_id: str) -> float:
    task = ExecutionTask(id="c", type="agent", target=agent_id, payload=PAYLOAD)
    rounds = []
    with ThreadPoolExecutor(max_workers=CONCURRENT_CALLS) as pool:
        list(pool.map(lambda _: proxy(task, CALL), range(CONCURRENT_CALLS)))
        for _ in range(CONCURRENT_ROUNDS):
            started = time.perf_counter()
            list(pool.map(lambda _: proxy(task, CALL), range(CONCURRENT_CALLS)))
            rounds.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(rounds)


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
    http_agent, grpc_agent = HttpAgentServer().start(), GrpcAgentServer().start()
    slow_agent = HttpAgentServer("slow", delay_ms=CONCURRENT_DELAY_MS).start()
    try:
        proxy.register("bench-http", http_agent.endpoint)
        proxy.register("bench-grpc", grpc_agent.endpoint, protocol="grpc")
        proxy.register("bench-slow", slow_agent.endpoint)
        http = proxy.transports["http"]
        grpc_transport = proxy.transports["grpc"]
        assert isinstance(http, HttpTransport) and isinstance(grpc_transport, GrpcTransport)
        http_task = ExecutionTask(id="b", type="agent", target="bench-http", payload=PAYLOAD)
        grpc_task = ExecutionTask(id="b", type="agent", target="bench-grpc", payload=PAYLOAD)
        headers = {"Idempotency-Key": "bench", "X-Taskplane-Task-Id": "b"}
        url = f"{http_agent.endpoint}/analyze"
        stub = grpc_transport.stub(grpc_agent.endpoint)
        request = build_request(grpc_task, timeout_s=5.0)

        def direct_http() -> object:
            return http.client.post(url, json=PAYLOAD, headers=headers, timeout=5.0).json()

        def direct_grpc() -> object:
            return stub.Analyze(request, timeout=5.0)

        http_direct, http_proxy = interleaved(
            direct_http, lambda: proxy(http_task, CALL), args.calls
        )
        grpc_direct, grpc_proxy = interleaved(
            direct_grpc, lambda: proxy(grpc_task, CALL), args.calls
        )
        stub.HealthCheck(parallax.Empty(), timeout=5.0)
        concurrent = concurrent_ms(proxy, "bench-slow")
    finally:
        proxy.close()
        for agent in (http_agent, grpc_agent, slow_agent):
            agent.stop()
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()

    print("| path                         |     n | p50 (ms) | p95 (ms) |")
    print("|------------------------------|------:|---------:|---------:|")
    print(row("HTTP direct (httpx)", http_direct))
    print(row("HTTP via AgentProxy", http_proxy))
    print(row("gRPC direct (stub)", grpc_direct))
    print(row("gRPC via AgentProxy", grpc_proxy))
    added_http = statistics.median(http_proxy) - statistics.median(http_direct)
    added_grpc = statistics.median(grpc_proxy) - statistics.median(grpc_direct)
    print()
    print(f"added at p50: HTTP {added_http:.3f} ms, gRPC {added_grpc:.3f} ms (goal <= 1 ms)")
    print(
        f"{CONCURRENT_CALLS} concurrent {CONCURRENT_DELAY_MS} ms calls through one proxy: "
        f"{concurrent:.0f} ms (median of {CONCURRENT_ROUNDS} rounds)"
    )


if __name__ == "__main__":
    main()
