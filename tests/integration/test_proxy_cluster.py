"""Breaker and limiter hold across processes: two OS processes, one Redis, one agent.

Each child process (multiprocessing, spawn) builds its own proxy with
``build_agent_proxy`` on the same Redis, waits at a barrier with the other,
then calls the agent from several threads and reports what happened. A
rate-limited call comes back at the slot it booked, as a rescheduled task does.
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from taskplane.config import CircuitBreakerConfig, RateLimitConfig, Settings
from taskplane.contract import CallContext
from taskplane.errors import CircuitOpenError, RateLimitedError, UpstreamError
from taskplane.models import ExecutionTask
from taskplane.proxy import build_agent_proxy
from tests.agents import HttpAgentServer

pytestmark = pytest.mark.integration

PROCESSES = 2
#: How long children may take to start and meet at the barrier (s).
START_TIMEOUT_S = 60.0
#: Jitter allowed between the limiter's grant and the agent seeing the request (s).
ARRIVAL_JITTER_S = 0.05


def _caller(
    redis_url: str,
    settings: dict[str, Any],
    threads: int,
    calls_per_thread: int,
    barrier: Any,
    results: Any,
) -> None:
    """Child process: build a proxy, meet the other child, call agent ``a1``."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    events: list[str] = []
    proxy = build_agent_proxy(Settings(**settings), client, emit=lambda t, d: events.append(t))

    def calls(_: int) -> list[str]:
        seen = []
        for index in range(calls_per_thread):
            task = ExecutionTask(id=f"t{index}", type="agent", target="a1", payload={})
            try:
                try:
                    proxy(task, CallContext(timeout_s=5.0))
                except RateLimitedError as limited:
                    # what a rescheduled task does: come back at the booked slot and use it
                    time.sleep(limited.wait_s)
                    proxy(task, CallContext(timeout_s=5.0, slot_reserved=True))
                seen.append("ok")
            except CircuitOpenError:
                seen.append("open")
            except Exception as exc:
                seen.append(type(exc).__name__)
        return seen

    try:
        proxy.health("a1")  # opens a pooled connection, so no call pays for a connect
        barrier.wait(timeout=START_TIMEOUT_S)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            outcomes = [o for chunk in pool.map(calls, range(threads)) for o in chunk]
        results.put({"outcomes": outcomes, "events": events})
    finally:
        proxy.close()
        client.close()


def run_children(
    redis_url: str, settings: Settings, *, threads: int, calls_per_thread: int
) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    args = (redis_url, settings.model_dump(), threads, calls_per_thread, barrier, results)
    children = [ctx.Process(target=_caller, args=args) for _ in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        reports = [results.get(timeout=START_TIMEOUT_S + 30) for _ in children]
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
    assert all(child.exitcode == 0 for child in children)
    return reports


def test_half_open_runs_exactly_one_trial_across_processes(
    redis_url: str, redis_client: redis.Redis
) -> None:
    settings = Settings(
        key_prefix="tp-it",
        circuit_breaker=CircuitBreakerConfig(
            failure_threshold=2, reset_timeout=200, monitoring_period=10_000
        ),
        rate_limit=RateLimitConfig(max_requests=10_000, window_ms=1000),
    )
    with HttpAgentServer("fail") as agent:
        proxy = build_agent_proxy(settings, redis_client, emit=lambda t, d: None)
        try:
            proxy.register("a1", agent.endpoint)
            for _ in range(2):
                with pytest.raises(UpstreamError):
                    proxy(ExecutionTask(id="t", type="agent", target="a1"), CallContext(5.0))
            assert proxy.breaker.state("a1") == "open"
            agent.reset()
            agent.mode, agent.delay_ms = "slow", 1500  # the trial stays in flight a while
            time.sleep(0.25)  # past reset_timeout: the next caller is the trial
            reports = run_children(redis_url, settings, threads=4, calls_per_thread=1)
            outcomes = sorted(o for report in reports for o in report["outcomes"])
            events = [e for report in reports for e in report["events"]]
            assert outcomes == ["ok"] + ["open"] * 7
            assert agent.calls == 1
            assert events == ["circuit:close"]
            assert proxy.breaker.state("a1") == "closed"
        finally:
            proxy.close()


def test_rate_limit_holds_across_processes(redis_url: str, redis_client: redis.Redis) -> None:
    settings = Settings(
        key_prefix="tp-it", rate_limit=RateLimitConfig(max_requests=5, window_ms=1000)
    )
    with HttpAgentServer("ok") as agent:
        proxy = build_agent_proxy(settings, redis_client, emit=lambda t, d: None)
        try:
            proxy.register("a1", agent.endpoint)
        finally:
            proxy.close()
        reports = run_children(redis_url, settings, threads=1, calls_per_thread=6)
        stamps = sorted(agent.timestamps)
    outcomes = [o for report in reports for o in report["outcomes"]]
    assert outcomes == ["ok"] * 12
    window = 1.0 - ARRIVAL_JITTER_S
    busiest = max(sum(1 for s in stamps if first <= s < first + window) for first in stamps)
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(stamps)]
    assert busiest <= 5, f"{busiest} calls reached the agent within one window; gaps {gaps}"
    assert stamps[-1] - stamps[0] >= 2.0 - ARRIVAL_JITTER_S  # 12 calls at 5/s span two windows
