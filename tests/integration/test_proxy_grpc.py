"""The agent proxy against real gRPC agents (parallax.confidence.ConfidenceAgent)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from taskplane.config import RateLimitConfig, Settings
from taskplane.contract import CallContext
from taskplane.devtools.redis_server import free_port
from taskplane.errors import (
    ClientError,
    InvalidReplyError,
    TaskTimeoutError,
    UpstreamError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy import AgentProxy, GrpcTransport, build_agent_proxy
from tests.agents import GrpcAgentServer

pytestmark = pytest.mark.integration

CALL = CallContext(timeout_s=2.0, idempotency_key="plan-1:t1")


@pytest.fixture
def proxy(redis_client: redis.Redis) -> Iterator[AgentProxy]:
    settings = Settings(
        key_prefix="tp-it", rate_limit=RateLimitConfig(max_requests=10_000, window_ms=1000)
    )
    built = build_agent_proxy(settings, redis_client, emit=lambda t, d: None)
    yield built
    built.close()


@pytest.fixture
def agent(proxy: AgentProxy) -> Iterator[GrpcAgentServer]:
    with GrpcAgentServer() as server:
        proxy.register("g1", server.endpoint, protocol="grpc", capabilities=["echo"])
        yield server


def task(payload: dict[str, Any], pattern: str | None = None) -> ExecutionTask:
    metadata = {"pattern": pattern} if pattern else {}
    return ExecutionTask(id="t1", type="agent", target="g1", payload=payload, metadata=metadata)


def test_struct_data_arrives_intact(proxy: AgentProxy, agent: GrpcAgentServer) -> None:
    data = {
        "nested": {"deeper": {"list": [1, 2.5, "three", None, True, False, {"k": "v"}]}},
        "number": 42,
        "flag": False,
        "nothing": None,
        "text": "héllo",
    }
    payload = {"task": "summarise", "data": data, "context": {"user": "u1"}}
    outcome = proxy(task(payload, pattern="review"), CALL)
    echo = outcome.result["echo"]
    assert echo["data"] == data  # Struct numbers are doubles: 42 == 42.0
    assert echo["task_description"] == "summarise" and echo["task_id"] == "t1"
    assert echo["pattern_name"] == "review" and echo["context"] == {"user": "u1"}
    assert 0 < echo["timeout_ms"] <= 2000
    assert echo["metadata"]["idempotency-key"] == "plan-1:t1"
    assert echo["metadata"]["x-taskplane-task-id"] == "t1"
    assert outcome.confidence == 0.9
    assert outcome.metadata["uncertainties"] == ["none really"]
    assert (outcome.metadata["agentId"], outcome.metadata["protocol"]) == ("g1", "grpc")


def test_reported_usage_settles_the_agents_token_window(
    proxy: AgentProxy, redis_client: redis.Redis
) -> None:
    with GrpcAgentServer() as server:
        server.usage = {"prompt_tokens": 250, "completion_tokens": 50}
        proxy.register(
            "g-tok", server.endpoint, protocol="grpc", policy={"maxTokens": 5000, "windowMs": 60000}
        )
        call = ExecutionTask(
            id="t1", type="agent", target="g-tok", metadata={"estimatedTokens": 2000}
        )
        outcome = proxy(call, CALL)
        windows = proxy.limiter.windows("g-tok", proxy.agent("g-tok").policy)
        tokens = next(w for w in windows if w.counts_tokens)
        booked = redis_client.hget(f"tp-it:{tokens.key}:amounts", "total")
    assert outcome.metadata["usage"] == {"inputTokens": 250, "outputTokens": 50}
    assert float(booked or 0) == 300.0  # the 2000-token estimate was settled to what the agent used


def test_the_whole_payload_is_data_when_there_is_no_data_field(
    proxy: AgentProxy, agent: GrpcAgentServer
) -> None:
    echo = proxy(task({"description": "d", "items": [1, 2]}), CALL).result["echo"]
    assert echo["data"] == {"description": "d", "items": [1, 2]}
    assert echo["task_description"] == "d"


@pytest.mark.parametrize(
    ("mode", "error", "match"),
    [
        ("fail", UpstreamError, "INTERNAL"),
        ("unavailable", UpstreamError, "UNAVAILABLE"),
        ("throttle", UpstreamError, "RESOURCE_EXHAUSTED"),
        ("reject", ClientError, "INVALID_ARGUMENT"),
        ("bad_json", InvalidReplyError, "value_json is not JSON"),
        ("no_confidence", InvalidReplyError, "within 0..1"),
    ],
)
def test_bad_answers_are_classified(
    proxy: AgentProxy, agent: GrpcAgentServer, mode: str, error: type, match: str
) -> None:
    agent.mode = mode
    with pytest.raises(error, match=match):
        proxy(task({"q": 1}), CALL)


def test_a_hanging_agent_hits_the_deadline(proxy: AgentProxy, agent: GrpcAgentServer) -> None:
    agent.mode = "hang"
    started = time.monotonic()
    with pytest.raises(TaskTimeoutError, match="DEADLINE_EXCEEDED"):
        proxy(task({"q": 1}), CallContext(timeout_s=0.3))
    assert time.monotonic() - started < 1.5


def test_health_and_capabilities(proxy: AgentProxy, agent: GrpcAgentServer) -> None:
    assert proxy.health("g1").healthy is True
    agent.healthy = False
    report = proxy.health("g1")
    assert (report.healthy, report.status) == (False, "degraded")
    info = proxy.register("g2", agent.endpoint, protocol="grpc")
    assert info.healthy is False and info.health_message.startswith("degraded")
    grpc_transport = proxy.transports["grpc"]
    assert isinstance(grpc_transport, GrpcTransport)
    assert grpc_transport.capabilities(info, timeout_s=1.0) == ["echo"]


def test_an_unreachable_grpc_agent_is_registered_unhealthy(proxy: AgentProxy) -> None:
    info = proxy.register("g3", f"127.0.0.1:{free_port()}", protocol="grpc", health_timeout_s=0.5)
    assert info.healthy is False and "UNAVAILABLE" in info.health_message


def test_32_concurrent_50ms_calls_share_one_channel(proxy: AgentProxy) -> None:
    with GrpcAgentServer("slow", delay_ms=50) as slow:
        proxy.register("g1", slow.endpoint, protocol="grpc")
        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(lambda _: proxy(task({"q": 1}), CALL), range(32)))
            started = time.perf_counter()
            outcomes = list(pool.map(lambda _: proxy(task({"q": 1}), CALL), range(32)))
            elapsed = time.perf_counter() - started
    assert len(outcomes) == 32 and slow.max_in_flight >= 24
    assert elapsed < 0.5, f"32 concurrent 50 ms calls took {elapsed * 1000:.0f} ms"
