"""The agent proxy: registry, transports, circuit breaker and rate limiter in one handler.

:class:`AgentProxy` is the task runner's handler for ``agent`` tasks. One
attempt goes: registry lookup → breaker admission (fail fast when open) →
rate-limit slot (wait, bounded by the call's deadline) → transport (chosen
by the agent's ``protocol``: ``http``, ``grpc``, ``openai``, ``a2a`` or
``mcp``, bounded by what is left of the call's timeout) → breaker outcome.
Retries are not made here: the task runner retries what the transport raises.

:func:`build_agent_proxy` wires the Redis-backed parts from settings, with
pooled HTTP clients, one gRPC channel per endpoint and one event loop thread
(for the asyncio A2A and MCP SDKs) for the process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import redis

from taskplane.aliases import Clock, Emit
from taskplane.config import Settings
from taskplane.contract import CallContext, Outcome
from taskplane.errors import ExecutionError, NotFoundError, ValidationError
from taskplane.models import ExecutionTask
from taskplane.proxy.a2a import A2ATransport
from taskplane.proxy.aio import LoopThread
from taskplane.proxy.breaker import Admission, CircuitBreaker
from taskplane.proxy.grpc import GrpcTransport
from taskplane.proxy.http import HttpTransport, make_http_client
from taskplane.proxy.inflight import InFlightLimiter, RedisInFlightBackend
from taskplane.proxy.limiter import RateLimiter, RedisLimiterBackend
from taskplane.proxy.mcp import MCPTransport
from taskplane.proxy.openai import OpenAITransport
from taskplane.proxy.policy import AgentPolicy, Quota, make_quota, unknown_quota
from taskplane.proxy.registry import (
    AgentInfo,
    AgentRegistry,
    InMemoryAgentRegistry,
    RedisAgentRegistry,
    make_agent_info,
)
from taskplane.proxy.transport import AgentTransport, HealthReport, InMemoryTransport
from taskplane.runner import tokens_used
from taskplane.write_behind import WriteBehind

__all__ = [
    # The handler and its factory
    "AgentProxy",
    "build_agent_proxy",
    # Registry
    "AgentInfo",
    "AgentRegistry",
    "InMemoryAgentRegistry",
    "RedisAgentRegistry",
    # Transports
    "A2ATransport",
    "AgentTransport",
    "GrpcTransport",
    "HealthReport",
    "HttpTransport",
    "InMemoryTransport",
    "MCPTransport",
    "OpenAITransport",
    # Per-agent policy
    "AgentPolicy",
    "Quota",
    # Breaker and limiter
    "CircuitBreaker",
    "RateLimiter",
]

log = logging.getLogger(__name__)

#: Health checks at registration give up after this long (s).
DEFAULT_HEALTH_TIMEOUT_S = 2.0
#: The SDK each protocol needs beyond taskplane's own dependencies: (module, extra).
PROTOCOL_SDKS = {"a2a": ("a2a", "a2a"), "mcp": ("mcp", "mcp")}


def require_sdk(protocol: str) -> None:
    """Check that *protocol*'s SDK is installed.

    Raises:
        ValidationError: It is not; the message names the extra to install.
    """
    module, extra = PROTOCOL_SDKS.get(protocol, ("", ""))
    if module and importlib.util.find_spec(module) is None:
        raise ValidationError(
            f"protocol: {protocol!r} agents need the official SDK: pip install 'taskplane[{extra}]'"
        )


#: Connections to HTTP agents when the caller does not size the pool.
DEFAULT_HTTP_POOL_SIZE = 100
#: A process reads a quota's limits from the registry at most this often (s): a
#: changed quota holds on every worker within this long.
QUOTA_CACHE_S = 1.0
#: A half-open trial's lease is its call's timeout plus this (s).
TRIAL_LEASE_GRACE_S = 5.0


class AgentProxy:
    """Calls registered agents; a task-runner handler for ``agent`` tasks.

    Args:
        registry: Where agents are registered.
        http_transport: Calls ``protocol="http"`` agents.
        grpc_transport: Calls ``protocol="grpc"`` agents.
        transports: More transports by protocol (``openai``, ``a2a``, ``mcp``).
        breaker: Per-agent circuit breakers.
        limiter: Per-agent rate limits and shared quotas.
        inflight: Cluster-wide caps on calls in flight (policies' ``maxInFlight``);
            in this process's memory when not given.
        clock: Wall clock in epoch seconds.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        *,
        http_transport: AgentTransport,
        grpc_transport: AgentTransport,
        transports: dict[str, AgentTransport] | None = None,
        breaker: CircuitBreaker,
        limiter: RateLimiter,
        inflight: InFlightLimiter | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.registry = registry
        self.transports = {"http": http_transport, "grpc": grpc_transport, **(transports or {})}
        self.breaker = breaker
        self.limiter = limiter
        self.inflight = inflight if inflight is not None else InFlightLimiter(clock=clock)
        self.clock = clock
        self._quotas: dict[str, tuple[float, Quota | None]] = {}  # name -> (read at, quota)

    def agent(self, agent_id: str) -> AgentInfo:
        """The registered agent *agent_id*.

        Raises:
            NotFoundError: Nobody registered it.
        """
        info = self.registry.get(agent_id)
        if info is None:
            raise NotFoundError(f"Agent {agent_id} not found")
        return info

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        """Make one attempt at an ``agent`` task (``task.target`` is the agent id).

        Raises:
            RateLimitedError: No slot now (one is booked ``wait_s`` from now,
                unless that is after the deadline), or ``maxInFlight`` calls
                are in flight (try again ``wait_s`` from now).
            ExecutionError: ``NotFoundError``, ``CircuitOpenError`` or whatever
                the transport raised.
        """
        agent = self.agent(task.target)
        transport = self.transports[agent.protocol]
        admission = self.breaker.before_call(
            agent.agent_id,
            lease_s=call.timeout_s + TRIAL_LEASE_GRACE_S,
            policy=agent.policy.breaker_policy(self.breaker.policy),
        )
        horizon = call.deadline if call.deadline is not None else self.clock() + call.timeout_s
        lease: str | None = None
        # a booking for later is named after the attempt, so the rescheduled
        # attempt (another delivery) settles the tokens it reserved
        member = f"{call.idempotency_key}#{task.id}#{call.attempt}"
        policy = agent.policy
        quota = self._quota(policy.quota) if policy.quota is not None else None
        try:
            if not call.slot_reserved:
                member = self.limiter.reserve(
                    agent.agent_id,
                    deadline=horizon,
                    policy=policy,
                    quota=quota,
                    later=member,
                    estimate=estimated_tokens(task),
                )
            if agent.policy.max_in_flight is not None:
                lease = self.inflight.acquire(
                    agent.agent_id,
                    limit=agent.policy.max_in_flight,
                    lease_s=call.timeout_s + TRIAL_LEASE_GRACE_S,
                    deadline=horizon,
                )
        except BaseException:
            self.breaker.abandon(admission)
            raise
        try:
            outcome = self._send(transport, agent, task, call, call.timeout_s, admission)
        finally:
            self.inflight.release(agent.agent_id, lease)
        used = tokens_used(outcome.metadata.get("usage"))
        if used is not None:
            self.limiter.settle(
                agent.agent_id, member=member, tokens=used, policy=policy, quota=quota
            )
        outcome.metadata.update(agentId=agent.agent_id, protocol=agent.protocol)
        return outcome

    def _quota(self, name: str) -> Quota | None:
        """The quota *name*, read from the registry at most every :data:`QUOTA_CACHE_S`."""
        now = self.clock()
        cached = self._quotas.get(name)
        if cached is not None and now - cached[0] < QUOTA_CACHE_S:
            return cached[1]
        quota = self.registry.get_quota(name)
        self._quotas[name] = (now, quota)
        return quota

    def _send(
        self,
        transport: AgentTransport,
        agent: AgentInfo,
        task: ExecutionTask,
        call: CallContext,
        timeout_s: float,
        admission: Admission,
    ) -> Outcome:
        try:
            outcome = transport.send(agent, task, call, timeout_s=timeout_s)
        except ExecutionError as exc:
            self.breaker.record(admission, exc)
            raise
        except BaseException:
            self.breaker.abandon(admission)
            raise
        self.breaker.record(admission)
        return outcome

    def register(
        self,
        agent_id: str,
        endpoint: str,
        protocol: str = "http",
        capabilities: Iterable[str] = (),
        *,
        policy: AgentPolicy | dict[str, Any] | None = None,
        check_health: bool = True,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    ) -> AgentInfo:
        """Register (or re-register) an agent, checking its health first.

        An unhealthy or unreachable agent is still registered; the returned
        info says so (``healthy=False``, ``health_message``) and a warning is
        logged. Breaker and limiter state of the agent are kept. A transport
        that can describe its agent (A2A's agent card) adds what it offers to
        *capabilities*.

        Raises:
            ValidationError: A bad id, protocol, endpoint, capability or
                ``policy.<field>``; names the field.
            BackendError: The registry cannot be reached.
        """
        info = make_agent_info(
            agent_id, endpoint, protocol, capabilities, policy=policy, registered_at=self.clock()
        )
        if info.policy.quota is not None and self.registry.get_quota(info.policy.quota) is None:
            raise unknown_quota(info.policy.quota)
        require_sdk(info.protocol)
        if check_health:
            transport = self.transports[info.protocol]
            report = transport.check_health(info, timeout_s=health_timeout_s)
            if report.healthy:
                self._add_described(transport, info, health_timeout_s)
            info.healthy = report.healthy
            info.health_message = f"{report.status}: {report.message}".rstrip(": ")
            if not report.healthy:
                log.warning(
                    "registering agent %s at %s although its health check failed: %s",
                    agent_id,
                    info.endpoint,
                    info.health_message,
                )
        self.registry.register(info)
        return info

    @staticmethod
    def _add_described(transport: AgentTransport, info: AgentInfo, timeout_s: float) -> None:
        try:
            offered = transport.describe(info, timeout_s=timeout_s)
        except ExecutionError as exc:
            log.warning("cannot read what agent %s offers: %s", info.agent_id, exc)
            return
        info.capabilities.extend(cap for cap in offered if cap not in info.capabilities)

    def register_quota(
        self,
        name: str,
        *,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        window_ms: int = 60000,
    ) -> Quota:
        """Register (or change) a quota: *max_requests* calls and/or *max_tokens* tokens
        per *window_ms*, over all its agents.

        Its window (calls already started or booked) is kept. Workers read a
        quota's limits at most every :data:`QUOTA_CACHE_S`, so a change holds
        everywhere within that long.

        Raises:
            ValidationError: A bad ``quota.name``, ``quota.maxRequests`` or ``quota.windowMs``.
            BackendError: The registry cannot be reached.
        """
        quota = make_quota(
            name, max_requests=max_requests, max_tokens=max_tokens, window_ms=window_ms
        )
        self.registry.register_quota(quota)
        self._quotas.pop(name, None)
        return quota

    def list_quotas(self) -> list[Quota]:
        """Every registered quota, ordered by name."""
        return self.registry.list_quotas()

    def unregister(self, agent_id: str) -> bool:
        """Remove an agent; True if it was registered."""
        return self.registry.unregister(agent_id)

    def list_agents(self) -> list[AgentInfo]:
        """Every registered agent, ordered by id."""
        return self.registry.list()

    def health(self, agent_id: str, *, timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S) -> HealthReport:
        """Ask a registered agent for its health now.

        Raises:
            NotFoundError: Nobody registered it.
        """
        agent = self.agent(agent_id)
        return self.transports[agent.protocol].check_health(agent, timeout_s=timeout_s)

    def capabilities_of(self, agent_id: str) -> list[str]:
        """The agent's registered capabilities, sorted (``[]`` for an unknown agent)."""
        info = self.registry.get(agent_id)
        return sorted(info.capabilities) if info is not None else []

    def close(self) -> None:
        """Close the transports' pooled connections and channels."""
        for transport in self.transports.values():
            transport.close()


def estimated_tokens(task: ExecutionTask) -> int | None:
    """The task's ``metadata.estimatedTokens``, when it is a positive integer."""
    value = (task.metadata.model_extra or {}).get("estimatedTokens")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def build_agent_proxy(
    settings: Settings,
    redis_client: redis.Redis,
    *,
    emit: Emit,
    clock: Clock = time.time,
    http_pool_size: int = DEFAULT_HTTP_POOL_SIZE,
    settle_behind: WriteBehind | None = None,
) -> AgentProxy:
    """Build the process's proxy: Redis registry, breaker and limiter, pooled transports.

    Args:
        settings: ``circuit_breaker``, ``rate_limit``, ``key_prefix`` and
            ``http_max_response_bytes`` are used.
        redis_client: Shared by registry, breaker and limiter.
        emit: Receives ``circuit:open`` / ``circuit:close`` events.
        clock: Wall clock in epoch seconds.
        http_pool_size: Connections kept to HTTP agents: as many as the
            worker's calls in flight.
        settle_behind: Settles token windows behind the call (None: the
            call waits for settling).
    """
    prefix = settings.key_prefix
    max_bytes = settings.http_max_response_bytes
    loop = LoopThread()  # one event loop thread for the asyncio SDKs, started on first use
    transports: dict[str, AgentTransport] = {
        # API keys are looked up by name in this process's environment at call time.
        "openai": OpenAITransport(
            make_http_client(max_connections=http_pool_size),
            environ=os.environ,
            max_response_bytes=max_bytes,
        ),
        "mcp": MCPTransport(loop=loop),
        "a2a": A2ATransport(loop=loop),
    }
    return AgentProxy(
        RedisAgentRegistry(redis_client, prefix=prefix),
        http_transport=HttpTransport(
            make_http_client(max_connections=http_pool_size), max_response_bytes=max_bytes
        ),
        grpc_transport=GrpcTransport(max_response_bytes=max_bytes),
        transports=transports,
        breaker=CircuitBreaker.with_redis(
            redis_client, settings.circuit_breaker, prefix=prefix, emit=emit, clock=clock
        ),
        limiter=RateLimiter(
            RedisLimiterBackend(redis_client, prefix=prefix, behind=settle_behind),
            settings.rate_limit,
            clock=clock,
        ),
        inflight=InFlightLimiter(RedisInFlightBackend(redis_client, prefix=prefix), clock=clock),
        clock=clock,
    )
