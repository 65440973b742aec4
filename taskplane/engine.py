"""ExecutionEngine: the client-side facade of taskplane.

It validates plans, records and enqueues them on Celery, and waits for their
results without polling: every plan run signals its end once, through Redis.
It holds the client's parts (:meth:`taskplane.parts.Parts.for_client`), built
once; nothing connects until the first call that needs a connection.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from celery import Celery

from taskplane.aliases import Clock
from taskplane.cache import RedisResultCache
from taskplane.config import Settings, load_settings
from taskplane.contract import Handler, RunContext
from taskplane.errors import PlanFailedError, ValidationError
from taskplane.events import EventHandler, RedisEventBus, Subscription
from taskplane.handle import PlanHandle
from taskplane.models import (
    ExecutionPlan,
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    SequentialExecutionPlan,
    Strategy,
    TaskType,
    parse_plan,
    parse_task,
)
from taskplane.observability import tracing
from taskplane.parts import Parts
from taskplane.patterns import PatternExecutionResult, PatternExecutor, PatternHandler
from taskplane.plan import RedisRunStore
from taskplane.plan.waiter import PlanWaiter
from taskplane.proxy import AgentInfo, AgentProxy, Quota
from taskplane.proxy.policy import (
    AgentPolicy,
    PolicyLookup,
    make_policy,
    task_with_agent_defaults,
)
from taskplane.runner import TaskRunner
from taskplane.tasks.app import create_app
from taskplane.tasks.canvas import submit_plan
from taskplane.tasks.dispatch import CeleryDispatch
from taskplane.tracking import ConfidenceTracker

#: ``metadata.worker`` of a lone task answered from the cache by the client itself.
CLIENT_WORKER = "engine"
#: Extra time a lone task's plan gets beyond its longest possible run, in ms.
TASK_DEADLINE_MARGIN_MS = 2000


class ExecutionEngine:
    """Run tasks and plans on a taskplane cluster.

    Args:
        settings: Options; read from the environment when omitted.
        app: The Celery app to send through; built from *settings* when omitted.
        clock: Epoch seconds (plan deadlines are shared with the workers).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        app: Celery | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.settings = settings or load_settings()
        self.app = app or create_app(self.settings)
        self.clock = clock
        #: Every part the client uses, built once (nothing connects yet), closed by :meth:`close`.
        self.parts = Parts.for_client(
            self.settings,
            dispatch=CeleryDispatch(self.app),
            worker=CLIENT_WORKER,
            clock=clock,
        )
        #: This client's side of its runs: deadlines, lost messages, results.
        self.waiter = PlanWaiter(
            self.parts.plans,
            stall_s=self.stall_s,
            server_started_at=self.server_started_at,
            clock=clock,
        )
        self._pattern_executor: PatternExecutor | None = None
        self._subscriptions: list[tuple[str, EventHandler, Subscription]] = []

    # -- plumbing ---------------------------------------------------------

    @property
    def stall_s(self) -> float:
        """How long a plan may make no progress before its lost messages are resent.

        Longer than the broker's redelivery (visibility timeout plus a sweep),
        so only messages the broker itself lost are sent again.
        """
        s = self.settings
        return s.effective_visibility_timeout_s + 2 * s.redelivery_sweep_s + 5

    @property
    def redis(self) -> Any:
        """The engine's Redis client."""
        return self.parts.redis

    @property
    def store(self) -> RedisRunStore:
        """Plan runs in Redis."""
        return self.parts.store

    @property
    def events(self) -> RedisEventBus:
        """The cluster's event bus (publish, ``recent``, ``subscribe``)."""
        return self.parts.events

    @property
    def cache(self) -> RedisResultCache:
        """The cluster's result cache (``stats()``, ``clear()``)."""
        return self.parts.results

    @property
    def proxy(self) -> AgentProxy:
        """The agent registry, breakers and limiters, as every worker sees them."""
        return self.parts.proxy

    def register_agent(
        self,
        agent_id: str,
        endpoint: str,
        protocol: str = "http",
        capabilities: list[str] | tuple[str, ...] = (),
        *,
        policy: dict[str, Any] | None = None,
        check_health: bool = True,
    ) -> AgentInfo:
        """Register (or re-register) an agent for every worker at once.

        The agent's health is checked (bounded by a short timeout); an unhealthy
        agent is still registered, with ``healthy=False`` and the reason.
        Breaker and rate-limit state survive re-registration. *policy* is
        stored with the agent (camelCase keys, e.g. ``{"model": "gpt-4o-mini",
        "apiKeyEnv": "OPENAI_API_KEY"}`` for ``protocol="openai"``, ``{"tool":
        "search"}`` for ``"mcp"``), and its own limits (``{"maxRequests": 500,
        "windowMs": 60000, "quota": "team-key"}``; unset ones fall back to the
        settings); secrets are never stored, only the name of the environment
        variable the workers read them from. Its breaker thresholds
        (``failureThreshold``, ``resetTimeout``, ``monitoringPeriod``) apply at
        the next call; its ``timeout`` and ``maxRetries`` to plans submitted
        from then on.

        Raises:
            ValidationError: The id, endpoint, protocol, capabilities or a
                ``policy.<field>`` is malformed, ``policy.quota`` names no
                registered quota, or ``policy.timeout`` outlives the broker's
                visibility timeout; nothing is registered then.
        """
        checked = make_policy(policy, protocol)
        limit_ms = self.settings.max_task_timeout_ms
        if checked.timeout is not None and limit_ms is not None and checked.timeout > limit_ms:
            message = (
                f"{checked.timeout} ms is longer than a task may run on this broker "
                f"({limit_ms} ms); raise TASKPLANE_VISIBILITY_TIMEOUT_S or shorten it"
            )
            raise ValidationError(
                f"invalid agent registration: policy.timeout: {message}",
                [{"field": "policy.timeout", "message": message}],
            )
        return self.proxy.register(
            agent_id, endpoint, protocol, capabilities, policy=checked, check_health=check_health
        )

    def register_quota(
        self,
        name: str,
        *,
        max_requests: int | None = None,
        max_tokens: int | None = None,
        window_ms: int = 60000,
    ) -> Quota:
        """Register (or change) a named limit several agents share, cluster-wide.

        It limits calls (*max_requests*), tokens (*max_tokens*) or both, per
        *window_ms*, over all the agents that name it.

        Agents draw from it by naming it in their policy (``{"quota": name}``);
        a call then needs a slot in its agent's window and in the quota's.
        Register the quota before the agents that name it.

        Raises:
            ValidationError: A bad ``quota.name``, ``quota.maxRequests``,
                ``quota.maxTokens`` or ``quota.windowMs``, or no limit at all.
        """
        return self.proxy.register_quota(
            name, max_requests=max_requests, max_tokens=max_tokens, window_ms=window_ms
        )

    def list_quotas(self) -> list[Quota]:
        """Every registered quota."""
        return self.proxy.list_quotas()

    def unregister_agent(self, agent_id: str) -> bool:
        """Remove an agent; True when it was registered."""
        return self.proxy.unregister(agent_id)

    def list_agents(self) -> list[AgentInfo]:
        """Every registered agent."""
        return self.proxy.list_agents()

    @property
    def tracker(self) -> ConfidenceTracker:
        """Confidence statistics over the tracking store (``get_agent_stats``, …)."""
        return self.parts.tracking()

    def on(
        self, event_type: str, handler: EventHandler, *, since: str | None = None
    ) -> Subscription:
        """Call *handler(event)* for every *event_type* event from any worker (``"*"``: all).

        Events are dicts ``{"type", "data", "timestamp", "id"}``, delivered in
        stream order on one background thread; ``id`` is the event's stream
        id. Every event published after this call is delivered once, across
        dropped connections, as long as it is still among the last
        ``events_stream_maxlen`` events when the subscriber reads it. A
        handler that raises is logged and keeps receiving.

        Args:
            event_type: An event name, or ``"*"`` for all.
            handler: Called with each event.
            since: An event's ``id``: start right after it (say, the last id a
                previous process handled) instead of at the next event.

        Raises:
            ValueError: *since* is not an event id.
        """
        types = None if event_type == "*" else [event_type]
        subscription = self.events.subscribe(handler, event_types=types, since=since)
        self._subscriptions.append((event_type, handler, subscription))
        return subscription

    def off(self, event_type: str, handler: EventHandler | None = None) -> None:
        """Stop delivering *event_type* to *handler* (to every handler when None)."""
        keep = []
        for entry in self._subscriptions:
            name, fn, subscription = entry
            if name == event_type and (handler is None or fn is handler):
                subscription.close()
            else:
                keep.append(entry)
        self._subscriptions = keep

    def close(self) -> None:
        """Close connections and stop background threads."""
        for _name, _fn, subscription in self._subscriptions:
            subscription.close()
        self._subscriptions = []
        self.parts.close()

    def __enter__(self) -> ExecutionEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- running ----------------------------------------------------------

    def submit(self, plan: ExecutionPlan | dict[str, Any]) -> PlanHandle:
        """Validate and enqueue *plan*; a plan id already running or finished attaches to it.

        Raises:
            ValidationError: The plan is malformed; nothing was enqueued.
            BackendError: Redis or the broker cannot be reached; nothing was enqueued.
        """
        return self._submit(parse_plan(plan), agent_policies=self._agent_policies)

    def _submit(
        self, parsed: ExecutionPlan, *, agent_policies: PolicyLookup | None, fresh_id: bool = False
    ) -> PlanHandle:
        """Enqueue a parsed plan, its agent tasks' defaults read with *agent_policies*."""
        if not parsed.tasks:
            return PlanHandle(self, parsed.id, empty=True)
        trace = tracing.start_plan(parsed)  # ended when the run's outcome is read
        try:
            created = submit_plan(
                self.app,
                self.store,
                parsed,
                self.settings,
                clock=self.clock,
                agent_policies=agent_policies,
                plan_trace=trace,
                fresh_id=fresh_id,
            )
        except Exception:
            trace.end("not enqueued", ok=False)
            raise
        return PlanHandle(self, parsed.id, trace=trace, created=created)

    def _agent_policies(self, agent_ids: Iterable[str]) -> Mapping[str, AgentPolicy]:
        return self.proxy.registry.policies(agent_ids)

    def execute_parallel(
        self, plan: ParallelExecutionPlan | dict[str, Any]
    ) -> list[ExecutionResult]:
        """Run a parallel plan and return its results (see DESIGN: strategies).

        Raises:
            PlanFailedError: The strategy's goal was not met; ``.results`` has every result.
        """
        return self.submit(parse_plan(plan, "parallel")).wait()

    def execute_sequential(
        self, plan: SequentialExecutionPlan | dict[str, Any]
    ) -> list[ExecutionResult]:
        """Run a sequential plan; task n+1 sees task n's result as ``payload.previous``.

        Raises:
            PlanFailedError: A task failed and ``continueOnError`` is false.
        """
        return self.submit(parse_plan(plan, "sequential")).wait()

    def execute_task(self, task: ExecutionTask | dict[str, Any]) -> ExecutionResult:
        """Run one task and return its envelope (a failed task does not raise).

        A task with ``metadata.idempotencyKey`` is one run per key: resending it
        returns the first run's result.
        """
        started = self.start_task(task)
        if isinstance(started, ExecutionResult):
            return started
        try:
            return started.wait()[0]
        except PlanFailedError as exc:
            return exc.results[0]

    def start_task(self, task: ExecutionTask | dict[str, Any]) -> ExecutionResult | PlanHandle:
        """Answer *task* here (cache hit, control-plane pattern) or submit it as a one-task plan.

        The first half of :meth:`execute_task`, shared with the asyncio engine.

        Raises:
            ValidationError: The task is malformed; nothing was enqueued.
        """
        parsed = parse_task(task)
        if parsed.type is TaskType.PATTERN and self._pattern_executor is not None:
            return self._run_here(parsed, PatternHandler(self._pattern_executor))
        hit = self._client_cache_hit(parsed)
        if hit is not None:
            return hit
        key = parsed.metadata.idempotency_key
        plan_id = f"task:{key}" if key else f"task:{uuid.uuid4().hex}"
        if parsed.type is TaskType.AGENT:
            parsed = task_with_agent_defaults(parsed, self._agent_policies)
        timeout_ms = parsed.metadata.timeout or self.settings.default_timeout
        longest = self.settings.retry_config.longest_run_ms(timeout_ms, parsed.metadata.retries)
        try:
            plan = ParallelExecutionPlan(
                id=plan_id,
                tasks=[parsed],
                strategy=Strategy.ALL_SETTLED,
                timeout=int(longest) + TASK_DEADLINE_MARGIN_MS,
            )
        except ValueError as exc:
            raise ValidationError(f"invalid task: {exc}") from exc
        # its agent's defaults are in already; a generated id is fresh (no run holds it)
        return self._submit(plan, agent_policies=None, fresh_id=not key)

    # -- nested patterns and the control plane ------------------------------

    def set_pattern_executor(self, executor: PatternExecutor) -> None:
        """Run ``pattern`` tasks given to :meth:`execute_task` through *executor*.

        Typically a control plane's engine wrapped in
        :class:`~taskplane.patterns.PatternExecutorAdapter`. The pattern runs
        in this process (the caller waits, no worker slot does), with the
        cache, retries and events of any task. Pattern tasks inside plans run
        on workers, from the pattern files in ``Settings.patterns_dir``.
        """
        self._pattern_executor = executor

    @property
    def pattern_executor(self) -> PatternExecutor:
        """What runs patterns for this engine: the one set, else the cluster's file patterns."""
        return self._pattern_executor or ClusterPatternExecutor(self)

    def _run_here(self, task: ExecutionTask, handler: Handler) -> ExecutionResult:
        """Run *task* in this process (a control-plane pattern), announced as a worker would."""
        parts = self.parts
        runner = TaskRunner(
            {task.type: handler},
            retry=self.settings.retry_config,
            default_timeout_ms=self.settings.default_timeout,
            cache=parts.cache,
            hooks=parts.hooks,
        )
        return runner.run(task, RunContext(worker=CLIENT_WORKER))

    def _client_cache_hit(self, task: ExecutionTask) -> ExecutionResult | None:
        """Answer a lone task from the cache without a trip through the broker.

        The hit is announced like a worker's (``task:started``, ``task:cache-hit``,
        ``task:completed``), with ``metadata.worker`` naming this client.
        """
        runner, ctx = self.parts.runner, RunContext(worker=CLIENT_WORKER)
        hit = runner.begin(task, ctx, announce_miss=False)
        if hit is not None:
            runner.hooks.on_finished(task, ctx, hit)
        return hit

    def server_started_at(self) -> float | None:
        """When the Redis server started (epoch s, this client's clock); None when unknown."""
        try:
            uptime = float(self.redis.info("server")["uptime_in_seconds"])
        except (redis.RedisError, KeyError, ValueError):
            return None
        return self.clock() - uptime


class ClusterPatternExecutor:
    """A :class:`~taskplane.patterns.PatternExecutor` that runs patterns on the cluster.

    Lets a control plane hand nested patterns to taskplane's workers.
    """

    def __init__(self, engine: ExecutionEngine) -> None:
        self.engine = engine

    def execute(
        self,
        pattern_name: str,
        input: Any,
        *,
        timeout: float | None = None,
        execution_id: str | None = None,
        parent_task_id: str | None = None,
    ) -> PatternExecutionResult:
        task: dict[str, Any] = {
            "id": parent_task_id or f"pattern-{uuid.uuid4().hex[:8]}",
            "type": "pattern",
            "target": pattern_name,
            "payload": input if isinstance(input, dict) else {"input": input},
        }
        if timeout:
            task["metadata"] = {"timeout": int(timeout)}
        result = self.engine.execute_task(task)
        return PatternExecutionResult(
            id=str(result.metadata.get("childPlanId") or execution_id or result.task_id),
            pattern_name=pattern_name,
            status="completed" if result.ok else "failed",
            result=result.result,
            error=result.error,
            confidence=result.confidence,
            execution_time=result.execution_time,
        )
