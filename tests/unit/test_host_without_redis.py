"""What a worker host decides when it cannot reach Redis: which parts fail open, which closed.

Every part here is the real Redis-backed one, on a client aimed at a port
nothing listens on (refused at once, as an unreachable Redis is after its
timeout); the agent is in memory and counts its calls. The table and the
reasons are in RELIABILITY.md §10:

* closed — the plan store (no lease, no run) and the agent registry (no
  endpoint, no call): the attempt raises ``BackendError``;
* open — breaker, rate limiter, in-flight cap and result cache: the call
  an attempt already holds goes ahead, unlimited and uncounted.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis

from taskplane.cache import RedisResultCache, RunnerCache
from taskplane.config import CacheConfig, CircuitBreakerConfig, RateLimitConfig
from taskplane.contract import CallContext
from taskplane.devtools.redis_server import free_port
from taskplane.errors import RETRYABLE_ERRORS, BackendError, UpstreamError
from taskplane.models import ExecutionTask, TaskType
from taskplane.plan import RedisRunStore
from taskplane.plan.members import MemberRunner
from taskplane.plan.recorder import PlanRecorder
from taskplane.proxy import AgentProxy, CircuitBreaker, InMemoryTransport, RateLimiter
from taskplane.proxy.inflight import InFlightLimiter, RedisInFlightBackend
from taskplane.proxy.limiter import RedisLimiterBackend
from taskplane.proxy.registry import InMemoryAgentRegistry, RedisAgentRegistry
from taskplane.redisio import redis_client
from taskplane.runner import TaskRunner
from tests.unit.test_plan_members import ListDispatch

ENDPOINT = "http://agent.test"


class Agent:
    """An in-memory agent: counts its calls, fails on cue."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self, payload: dict[str, Any], call: CallContext) -> dict[str, Any]:
        self.calls += 1
        if self.failing:
            raise UpstreamError("agent answered HTTP 503", 503)
        return {"value": payload, "confidence": 0.9}


@pytest.fixture
def unreachable() -> redis.Redis:
    """A worker's fast client (1 s timeouts, no retries) for a Redis that is not there."""
    return redis_client(f"redis://127.0.0.1:{free_port()}/0", fast=True)


def proxy_without_redis(
    client: redis.Redis, agent: Agent, *, registry_in_redis: bool = False
) -> AgentProxy:
    """A proxy whose breaker, limiter and in-flight cap live in the unreachable Redis.

    The agent allows one call per minute and one in flight, and the breaker
    opens after two failures, so each limit would refuse the second call.
    """
    registry = RedisAgentRegistry(client) if registry_in_redis else InMemoryAgentRegistry()
    transport = InMemoryTransport({ENDPOINT: agent})
    proxy = AgentProxy(
        registry,
        http_transport=transport,
        grpc_transport=transport,
        breaker=CircuitBreaker.with_redis(client, CircuitBreakerConfig(failure_threshold=2)),
        limiter=RateLimiter(RedisLimiterBackend(client), RateLimitConfig(max_requests=1)),
        inflight=InFlightLimiter(RedisInFlightBackend(client)),
    )
    if not registry_in_redis:  # the agent as registered before Redis went away
        proxy.register(
            "a1", ENDPOINT, policy={"maxRequests": 1, "maxInFlight": 1}, check_health=False
        )
    return proxy


def agent_task(index: int = 0) -> ExecutionTask:
    return ExecutionTask(id=f"t{index}", type="agent", target="a1", payload={"n": index})


CALL = CallContext(timeout_s=5.0, idempotency_key="k")


def test_limits_and_the_breaker_fail_open(unreachable: redis.Redis, caplog: Any) -> None:
    agent = Agent()
    proxy = proxy_without_redis(unreachable, agent)
    for index in range(3):  # over the rate limit and the in-flight cap: all go
        proxy(agent_task(index), CALL)
    agent.failing = True
    for index in range(3, 6):  # past the failure threshold: nothing counted, nothing opens
        with pytest.raises(UpstreamError):
            proxy(agent_task(index), CALL)
    assert agent.calls == 6
    for part in ("circuit breaker storage", "rate limiter backend", "in-flight cap backend"):
        assert f"{part} unreachable, failing open" in caplog.text


def test_an_agent_the_registry_cannot_be_asked_about_is_not_called(
    unreachable: redis.Redis,
) -> None:
    agent = Agent()
    proxy = proxy_without_redis(unreachable, agent, registry_in_redis=True)
    with pytest.raises(BackendError) as raised:
        proxy(agent_task(), CALL)
    assert isinstance(raised.value, RETRYABLE_ERRORS)  # the attempt is retried, later or elsewhere
    assert agent.calls == 0


def test_the_cache_is_a_miss_and_the_agent_is_called(unreachable: redis.Redis) -> None:
    agent = Agent()
    proxy = proxy_without_redis(unreachable, agent)
    cache = RunnerCache(
        RedisResultCache(unreachable, CacheConfig()), capabilities_of=proxy.capabilities_of
    )
    runner = TaskRunner({TaskType.AGENT: proxy}, cache=cache)
    for _ in range(2):  # the first result is not kept: the second call is made too
        assert runner.run(agent_task()).ok
    assert agent.calls == 2


def test_a_task_takes_no_step_without_the_plan_store(unreachable: redis.Redis) -> None:
    agent = Agent()
    runner = TaskRunner({TaskType.AGENT: proxy_without_redis(unreachable, agent)})
    dispatch = ListDispatch()
    members = MemberRunner(PlanRecorder(RedisRunStore(unreachable), dispatch), runner)
    with pytest.raises(BackendError, match="plan store"):
        members.run_member("p1", 0, agent_task().to_json_dict(), owner="celery-task-id")
    assert agent.calls == 0 and not dispatch.queue
