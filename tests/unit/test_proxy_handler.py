"""AgentProxy as a task-runner handler, wired with in-memory parts and a fake clock."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest

from taskplane.config import CircuitBreakerConfig, RateLimitConfig, RetryConfig
from taskplane.contract import CallContext
from taskplane.errors import (
    CircuitOpenError,
    NotFoundError,
    RateLimitedError,
    UpstreamError,
    ValidationError,
)
from taskplane.models import ExecutionTask, TaskStatus, TaskType
from taskplane.proxy import (
    QUOTA_CACHE_S,
    AgentProxy,
    CircuitBreaker,
    InMemoryAgentRegistry,
    InMemoryTransport,
    Quota,
)
from taskplane.proxy.breaker_storage import STATE_CLOSED, STATE_OPEN
from taskplane.proxy.limiter import RateLimiter
from taskplane.runner import TaskRunner

ENDPOINT = "http://agent.test:1"


@dataclass
class FakeTime:
    now: float = 1_700_000_000.0
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class Agent:
    """An in-memory agent that fails on cue and counts its calls."""

    failing: bool = False
    calls: int = 0
    payloads: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, payload: dict[str, Any], call: CallContext) -> dict[str, Any]:
        self.calls += 1
        self.payloads.append(payload)
        if self.failing:
            raise UpstreamError("agent answered HTTP 503", 503)
        return {"value": {"seen": payload}, "confidence": 0.85, "reasoning": "because"}


@dataclass
class Rig:
    proxy: AgentProxy
    agent: Agent
    time: FakeTime
    events: list[tuple[str, dict[str, Any]]]


@pytest.fixture
def rig() -> Rig:
    time = FakeTime()
    agent = Agent()
    events: list[tuple[str, dict[str, Any]]] = []
    transport = InMemoryTransport({ENDPOINT: agent})
    proxy = AgentProxy(
        InMemoryAgentRegistry(),
        http_transport=transport,
        grpc_transport=transport,
        breaker=CircuitBreaker(
            CircuitBreakerConfig(failure_threshold=2, reset_timeout=10_000),
            emit=lambda t, d: events.append((t, d)),
            clock=time.clock,
        ),
        limiter=RateLimiter(
            config=RateLimitConfig(max_requests=2, window_ms=1000),
            clock=time.clock,
        ),
        clock=time.clock,
    )
    proxy.register("a1", ENDPOINT, capabilities=["z", "a"])
    return Rig(proxy, agent, time, events)


def task(target: str = "a1", payload: dict[str, Any] | None = None) -> ExecutionTask:
    return ExecutionTask(id="t1", type="agent", target=target, payload=payload or {"q": 1})


CALL = CallContext(timeout_s=5.0, idempotency_key="k")


def test_a_call_reaches_the_agent_and_says_which(rig: Rig) -> None:
    outcome = rig.proxy(task(payload={"text": "hi"}), CALL)
    assert outcome.result == {"seen": {"text": "hi"}} and outcome.confidence == 0.85
    assert outcome.metadata == {"reasoning": "because", "agentId": "a1", "protocol": "http"}


def test_an_unknown_agent_is_not_found(rig: Rig) -> None:
    with pytest.raises(NotFoundError, match=r"^Agent ghost not found$"):
        rig.proxy(task("ghost"), CALL)


def test_an_open_circuit_fails_fast_without_calling_or_using_a_rate_slot(rig: Rig) -> None:
    rig.agent.failing = True
    for _ in range(2):
        with pytest.raises(UpstreamError):
            rig.proxy(task(), CALL)
        rig.time.now += 1  # keep the limiter out of this
    assert rig.events == [("circuit:open", {"agentId": "a1", "failures": 2})]
    for _ in range(5):
        with pytest.raises(CircuitOpenError):
            rig.proxy(task(), CALL)
    assert rig.agent.calls == 2


def test_a_rate_limited_call_books_its_slot_and_makes_the_call_then(rig: Rig) -> None:
    for _ in range(2):
        rig.proxy(task(), CALL)
    with pytest.raises(RateLimitedError) as limited:
        rig.proxy(task(), CALL)
    assert limited.value.reserved and limited.value.wait_s == pytest.approx(1.0)
    assert rig.agent.calls == 2 and rig.time.slept == []  # nothing waited in this thread
    rig.time.now += limited.value.wait_s
    booked = CallContext(timeout_s=5.0, idempotency_key="k", slot_reserved=True)
    rig.proxy(task(), booked)  # the rescheduled attempt uses the slot it booked
    rig.proxy(task(), CALL)  # the window (2 per s) now holds the booked call and this one
    assert rig.agent.calls == 4
    with pytest.raises(RateLimitedError):
        rig.proxy(task(), CALL)


def test_a_rate_limit_slot_past_the_deadline_frees_the_half_open_trial(rig: Rig) -> None:
    rig.agent.failing = True
    for _ in range(2):
        with pytest.raises(UpstreamError):
            rig.proxy(task(), CALL)
    rig.time.now += 10
    for _ in range(2):
        rig.proxy.limiter.reserve("a1", deadline=rig.time.now + 5)
    with pytest.raises(RateLimitedError, match="after the deadline") as limited:
        rig.proxy(task(), CallContext(timeout_s=0.5, deadline=rig.time.now + 0.5))
    assert not limited.value.reserved
    rig.agent.failing = False
    rig.time.now += 1.1
    rig.proxy(task(), CALL)  # this caller became the trial, and closed the circuit
    assert rig.proxy.breaker.state("a1") == STATE_CLOSED


def test_re_registering_keeps_breaker_and_limiter_state(rig: Rig) -> None:
    rig.agent.failing = True
    for _ in range(2):
        with pytest.raises(UpstreamError):
            rig.proxy(task(), CALL)
    rig.proxy.register("a1", ENDPOINT, capabilities=["new"])
    assert rig.proxy.breaker.state("a1") == STATE_OPEN
    assert rig.proxy.capabilities_of("a1") == ["new"]


def test_an_unreachable_agent_is_registered_and_says_so(rig: Rig, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING):
        info = rig.proxy.register("down", "http://nowhere.test:9")
    assert info.healthy is False and "unreachable" in info.health_message
    assert "health check failed" in caplog.text
    assert [a.agent_id for a in rig.proxy.list_agents()] == ["a1", "down"]
    unchecked = rig.proxy.register("later", "http://nowhere.test:9", check_health=False)
    assert unchecked.healthy is None


def test_health_capabilities_and_unregister(rig: Rig) -> None:
    assert rig.proxy.health("a1").healthy is True
    assert rig.proxy.capabilities_of("a1") == ["a", "z"]
    assert rig.proxy.capabilities_of("ghost") == []
    assert rig.proxy.unregister("a1") is True
    with pytest.raises(NotFoundError):
        rig.proxy.health("a1")


def test_the_task_runner_retries_what_the_proxy_raises(rig: Rig) -> None:
    rig.agent.failing = True
    runner = TaskRunner(
        {TaskType.AGENT: rig.proxy},
        retry=RetryConfig(max_retries=1, initial_delay=100),
        clock=rig.time.clock,
        sleep=rig.time.sleep,
    )
    result = runner.run(task())
    assert result.status is TaskStatus.FAILURE and result.retries == 1
    assert rig.agent.calls == 2
    assert result.metadata["agentId"] == "a1"


def test_an_agent_policy_limit_and_its_quota_apply_to_calls(rig: Rig) -> None:
    rig.proxy.register_quota("team", max_requests=3, window_ms=1000)
    rig.proxy.register("q1", ENDPOINT, policy={"maxRequests": 5, "quota": "team"})
    rig.proxy.register("q2", ENDPOINT, policy={"quota": "team"})
    rig.proxy(task("q1"), CALL)
    rig.proxy(task("q1"), CALL)
    rig.proxy(task("q2"), CALL)
    with pytest.raises(RateLimitedError, match="quota team") as limited:
        rig.proxy(task("q1"), CALL)
    assert limited.value.reserved
    rig.proxy(task("a1"), CALL)  # not on the quota: unaffected
    assert rig.agent.calls == 4


def test_an_unknown_quota_registers_nothing(rig: Rig) -> None:
    with pytest.raises(ValidationError, match=r"policy\.quota") as refused:
        rig.proxy.register("q9", ENDPOINT, policy={"quota": "nobody"})
    assert refused.value.errors[0]["field"] == "policy.quota"
    assert [a.agent_id for a in rig.proxy.list_agents()] == ["a1"]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"maxRequests": 0}, "policy.maxRequests"),
        ({"maxRequests": -5}, "policy.maxRequests"),
        ({"maxRequests": 10**12}, "policy.maxRequests"),
        ({"windowMs": 0}, "policy.windowMs"),
        ({"windowMs": 10**10}, "policy.windowMs"),
        ({"quota": "no spaces"}, "policy.quota"),
        ({"maxInFlight": 0}, "policy.maxInFlight"),
        ({"maxInFlight": 10**9}, "policy.maxInFlight"),
    ],
)
def test_bad_policy_limits_name_the_field(rig: Rig, policy: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        rig.proxy.register("bad", ENDPOINT, policy=policy)
    assert refused.value.errors[0]["field"] == field
    assert rig.proxy.registry.get("bad") is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "team", "max_requests": 0}, "quota.maxRequests"),
        ({"name": "team", "max_requests": 5, "window_ms": -1}, "quota.windowMs"),
        ({"name": "", "max_requests": 5}, "quota.name"),
    ],
)
def test_bad_quotas_name_the_field(rig: Rig, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        rig.proxy.register_quota(**kwargs)
    assert refused.value.errors[0]["field"] == field
    assert rig.proxy.list_quotas() == []


def test_max_in_flight_reschedules_a_call_beyond_the_cap_and_frees_its_lease(rig: Rig) -> None:
    seen: list[int] = []

    def busy(payload: dict[str, Any], call: CallContext) -> dict[str, Any]:
        held = rig.proxy.inflight.backend.held("capped")  # type: ignore[attr-defined]
        seen.append(held)
        if len(seen) == 1:  # a second call arrives while the first is in flight
            with pytest.raises(RateLimitedError, match="maxInFlight") as full:
                rig.proxy(task("capped"), CALL)
            assert full.value.reserved
        return {"value": 1, "confidence": 0.9}

    rig.proxy.transports["http"] = InMemoryTransport({"http://capped.test:1": busy})
    rig.proxy.register(
        "capped", "http://capped.test:1", policy={"maxInFlight": 1, "maxRequests": 10}
    )
    rig.proxy(task("capped"), CALL)
    rig.proxy(task("capped"), CALL)  # the lease came back when the first call ended
    assert seen == [1, 1]
    assert rig.proxy.breaker.state("capped") == STATE_CLOSED


def test_a_failing_call_gives_its_lease_back(rig: Rig) -> None:
    rig.proxy.register("capped", ENDPOINT, policy={"maxInFlight": 1})
    rig.agent.failing = True
    with pytest.raises(UpstreamError):
        rig.proxy(task("capped"), CALL)
    rig.agent.failing = False
    rig.time.now += 1
    rig.proxy(task("capped"), CALL)


def test_a_quota_changed_elsewhere_holds_within_the_cache_period(rig: Rig) -> None:
    rig.proxy.register_quota("team", max_requests=1, window_ms=1000)
    rig.proxy.register("q1", ENDPOINT, policy={"maxRequests": 100, "quota": "team"})
    rig.proxy(task("q1"), CALL)
    # another process raises the quota: this one reads it again within QUOTA_CACHE_S
    rig.proxy.registry.register_quota(Quota(name="team", max_requests=50, window_ms=1000))
    with pytest.raises(RateLimitedError):
        rig.proxy(task("q1"), CALL)
    rig.time.now += QUOTA_CACHE_S
    rig.proxy(task("q1"), CallContext(timeout_s=5.0, idempotency_key="k2"))


def test_a_call_reserves_its_estimate_and_settles_to_the_usage_it_reports(rig: Rig) -> None:
    def reporting(payload: dict[str, Any], call: CallContext) -> dict[str, Any]:
        return {"value": 1, "confidence": 0.9, "usage": {"inputTokens": 50, "outputTokens": 50}}

    rig.proxy.transports["http"] = InMemoryTransport({"http://tok.test:1": reporting})
    policy = {"maxRequests": 100, "maxTokens": 1000, "windowMs": 1000}
    rig.proxy.register("tok", "http://tok.test:1", policy=policy)

    def run(estimate: int | None, key: str) -> None:
        meta = {"estimatedTokens": estimate} if estimate is not None else {}
        work = ExecutionTask(id=key, type="agent", target="tok", payload={}, metadata=meta)
        rig.proxy(work, CallContext(timeout_s=5.0, idempotency_key=key))

    run(900, "big")  # reserves 900, settles to 100
    for i in range(8):  # the mean is 100 now: eight more fit in the window
        run(None, f"k{i}")
    with pytest.raises(RateLimitedError):
        run(200, "over")  # 900 used + 200 > 1000


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ({"maxTokens": 0}, "policy.maxTokens"),
        ({"maxTokens": -100}, "policy.maxTokens"),
        ({"estimatedTokens": 0}, "policy.estimatedTokens"),
        ({"maxTokens": 10**15}, "policy.maxTokens"),
    ],
)
def test_bad_token_limits_name_the_field(rig: Rig, policy: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        rig.proxy.register("bad", ENDPOINT, policy=policy)
    assert refused.value.errors[0]["field"] == field


def test_a_quota_must_limit_something(rig: Rig) -> None:
    with pytest.raises(ValidationError) as refused:
        rig.proxy.register_quota("team")
    assert refused.value.errors[0]["field"] == "quota"
    assert rig.proxy.register_quota("team", max_tokens=5000).max_requests is None
