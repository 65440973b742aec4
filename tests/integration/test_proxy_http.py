"""The agent proxy against real HTTP agents, with its state in the real Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from taskplane.config import CircuitBreakerConfig, RateLimitConfig, Settings
from taskplane.contract import CallContext
from taskplane.devtools.redis_server import free_port
from taskplane.errors import (
    CircuitOpenError,
    ClientError,
    InvalidReplyError,
    NotFoundError,
    TaskTimeoutError,
    TransportError,
    UpstreamError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy import AgentProxy, build_agent_proxy
from tests.agents import HttpAgentServer

pytestmark = pytest.mark.integration

CALL = CallContext(timeout_s=2.0, idempotency_key="plan-1:t1")


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "key_prefix": "tp-it",
        "circuit_breaker": CircuitBreakerConfig(
            failure_threshold=3, reset_timeout=300, monitoring_period=2000
        ),
        "rate_limit": RateLimitConfig(max_requests=10_000, window_ms=1000),
    }
    return Settings(**{**base, **overrides})


@pytest.fixture
def events() -> list[tuple[str, dict[str, Any]]]:
    return []


@pytest.fixture
def proxy(
    redis_client: redis.Redis, events: list[tuple[str, dict[str, Any]]]
) -> Iterator[AgentProxy]:
    built = build_agent_proxy(settings(), redis_client, emit=lambda t, d: events.append((t, d)))
    yield built
    built.close()


@pytest.fixture
def agent() -> Iterator[HttpAgentServer]:
    with HttpAgentServer() as server:
        yield server


def task(payload: dict[str, Any] | None = None, target: str = "a1") -> ExecutionTask:
    return ExecutionTask(id="t1", type="agent", target=target, payload=payload or {"q": "x"})


def test_round_trip_with_headers(proxy: AgentProxy, agent: HttpAgentServer) -> None:
    info = proxy.register("a1", agent.endpoint, capabilities=["echo"])
    assert info.healthy is True
    payload = {"data": {"nested": {"list": [1, 2.5, None, True, "s"]}}, "task": "echo"}
    outcome = proxy(task(payload), CALL)
    assert outcome.result == {"echo": payload} and outcome.confidence == 0.9
    assert outcome.metadata == {"reasoning": "echoed", "agentId": "a1", "protocol": "http"}
    headers = agent.requests[0]["headers"]
    assert headers["Idempotency-Key"] == "plan-1:t1" and headers["X-Taskplane-Task-Id"] == "t1"
    assert agent.requests[0]["path"] == "/analyze"


def test_unknown_agent(proxy: AgentProxy) -> None:
    with pytest.raises(NotFoundError, match="Agent nobody not found"):
        proxy(task(target="nobody"), CALL)


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("fail", UpstreamError, "HTTP 500"),
        ("unavailable", UpstreamError, "HTTP 503"),
        ("reject", ClientError, "HTTP 400"),
        ("bad_json", InvalidReplyError, "invalid JSON"),
        ("no_confidence", InvalidReplyError, "no 'confidence'"),
        ("huge", InvalidReplyError, "larger than"),
    ],
)
def test_bad_answers_are_classified(
    proxy: AgentProxy, agent: HttpAgentServer, mode: str, error: type, match: str
) -> None:
    proxy.register("a1", agent.endpoint)
    agent.mode = mode
    with pytest.raises(error, match=match):
        proxy(task(), CALL)


def test_429_carries_retry_after(proxy: AgentProxy, agent: HttpAgentServer) -> None:
    proxy.register("a1", agent.endpoint)
    agent.mode, agent.retry_after = "throttle", "2"
    with pytest.raises(UpstreamError) as caught:
        proxy(task(), CALL)
    assert (caught.value.status, caught.value.retry_after_s) == (429, 2.0)


def test_a_hanging_agent_times_out_at_the_call_timeout(
    proxy: AgentProxy, agent: HttpAgentServer
) -> None:
    proxy.register("a1", agent.endpoint)
    agent.mode = "hang"
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError):
        proxy(task(), CallContext(timeout_s=0.3))
    assert 0.25 <= time.monotonic() - started < 1.5


def test_a_closed_port_is_a_transport_error_and_registers_unhealthy(proxy: AgentProxy) -> None:
    info = proxy.register("a1", f"http://127.0.0.1:{free_port()}", health_timeout_s=0.5)
    assert info.healthy is False and "unreachable" in info.health_message
    assert proxy.list_agents()[0].healthy is False
    with pytest.raises(TransportError):
        proxy(task(), CALL)


def test_breaker_opens_fails_fast_and_closes_after_a_good_trial(
    proxy: AgentProxy, agent: HttpAgentServer, events: list[tuple[str, dict[str, Any]]]
) -> None:
    proxy.register("a1", agent.endpoint)
    agent.mode = "fail"
    for _ in range(3):
        with pytest.raises(UpstreamError):
            proxy(task(), CALL)
    assert events == [("circuit:open", {"agentId": "a1", "failures": 3})]
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            proxy(task(), CALL)
    assert agent.calls == 3
    agent.mode = "ok"
    time.sleep(0.35)  # reset_timeout is 300 ms
    assert proxy(task(), CALL).confidence == 0.9
    assert events[-1] == ("circuit:close", {"agentId": "a1"})
    assert proxy.breaker.state("a1") == "closed"


def test_failures_spread_beyond_the_window_do_not_open(
    redis_client: redis.Redis, agent: HttpAgentServer
) -> None:
    config = CircuitBreakerConfig(failure_threshold=3, reset_timeout=300, monitoring_period=200)
    proxy = build_agent_proxy(
        settings(circuit_breaker=config), redis_client, emit=lambda t, d: None
    )
    try:
        proxy.register("a1", agent.endpoint)
        agent.mode = "fail"
        for _ in range(5):
            with pytest.raises(UpstreamError):
                proxy(task(), CALL)
            time.sleep(0.11)  # at most two failures in any 200 ms window
        assert proxy.breaker.state("a1") == "closed" and agent.calls == 5
    finally:
        proxy.close()


def test_32_concurrent_50ms_calls_run_side_by_side(proxy: AgentProxy) -> None:
    with HttpAgentServer("slow", delay_ms=50) as slow:
        proxy.register("a1", slow.endpoint)
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda _: proxy(task(), CALL), range(32)))  # warm the pool
            started = time.perf_counter()
            outcomes = list(pool.map(lambda _: proxy(task(), CALL), range(32)))
            elapsed = time.perf_counter() - started
    assert len(outcomes) == 32 and all(o.confidence == 0.9 for o in outcomes)
    assert slow.max_in_flight >= 16  # side by side (one at a time would be 1), on a busy machine
    assert elapsed < 0.5, f"32 concurrent 50 ms calls took {elapsed * 1000:.0f} ms"
