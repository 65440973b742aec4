"""The composition root: a process's parts, built once from settings for its role.

A taskplane process plays one of two roles, and :class:`Parts` is built for
it in one place:

* :meth:`Parts.for_client` — what :class:`~taskplane.engine.ExecutionEngine`
  holds: the plan store and its recorder (ends runs, collects results), the event bus, the
  result cache, the agent proxy (registry, breakers, limiters) and, once
  asked for, the tracker. Nothing connects until a part is first used.
* :meth:`Parts.for_worker` — what every task slot of one worker process
  shares: the same parts on pools sized to the slots, plus the handlers, the
  task runner, the plan member runner, the hooks (events, tracing,
  metrics, tracking) and the background senders. Built after any fork, on
  the first task (:class:`taskplane.tasks.base.TaskplaneTask`).

Either way the parts close together, in the reverse of the order they were
built (:meth:`Parts.close`). Whether the result cache is on is decided here,
once: a disabled cache is no cache for the runner. The Celery side (putting a
message on the broker, answering an ``execute_plan`` caller) comes in as a
:class:`~taskplane.plan.dispatch.Dispatch`, so this module builds no Celery
app and imports no task.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from redis import Redis

from taskplane.aliases import Clock
from taskplane.budget import RedisBudgetBackend
from taskplane.cache import RedisResultCache, RunnerCache
from taskplane.config import Settings
from taskplane.contract import Handler
from taskplane.events import EventHooks, RedisEventBus
from taskplane.functions import import_function_modules, registry
from taskplane.hooks import HookChain
from taskplane.http_task import HttpTaskHandler, UrlGuard
from taskplane.models import TaskType
from taskplane.observability import call_spans, tracing
from taskplane.observability.metrics import MetricsHooks, WorkerMetrics
from taskplane.patterns import FilePatternEngine, PatternHandler, load_pattern_executor
from taskplane.plan import RedisRunStore
from taskplane.plan.dispatch import Dispatch
from taskplane.plan.members import MemberRunner
from taskplane.plan.recorder import PlanRecorder
from taskplane.proxy import AgentProxy, build_agent_proxy
from taskplane.proxy.policy import AgentPolicy
from taskplane.redisio import is_cluster, redis_client
from taskplane.runner import TaskRunner
from taskplane.tracking import ConfidenceTracker, TrackingRecorder, build_tracker
from taskplane.tracking.recorder import TrackingHooks
from taskplane.write_behind import WriteBehind

log = logging.getLogger(__name__)

#: Redis connections of a worker beyond one per task slot (event publisher, tracking).
REDIS_SPARE_CONNECTIONS = 10


@dataclass
class Parts:
    """The built parts of one process; :meth:`close` closes every one of them.

    Attributes:
        settings: What they were built from.
        redis: The client of the plan store, events and cache (retries outages).
        fast_redis: The client on every agent call's path (breakers, limiters).
        events: The cluster's event bus.
        proxy: The agent registry, breakers, limiters and transports.
        hooks: Listeners of the runner and the plan recorder.
        results: The result cache as such (``stats()``, ``clear()``), on or off.
        cache: The runner's view of it; None when the cache is disabled.
        runner: Runs tasks (a worker's with every handler; a client's with none).
        store: Plan runs.
        plans: Records outcomes, ends runs and collects their results.
        members: A worker's runner of plan members (None on a client).
        tracker: Confidence statistics: a worker's when tracking is on, a client's
            once :meth:`tracking` opened it.
        recorder: A worker's buffered writer of tracked outcomes.
        metrics: A worker's Prometheus metrics, when it serves them.
        worker: The worker's name (``metadata.worker``); the client's is ``engine``.
    """

    settings: Settings
    redis: Redis
    fast_redis: Redis
    events: RedisEventBus
    proxy: AgentProxy
    hooks: HookChain
    results: RedisResultCache
    cache: RunnerCache | None
    runner: TaskRunner
    store: RedisRunStore
    plans: PlanRecorder
    members: MemberRunner | None = None
    tracker: ConfidenceTracker | None = None
    recorder: TrackingRecorder | None = None
    metrics: WorkerMetrics | None = None
    worker: str = ""
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def for_client(
        cls,
        settings: Settings,
        *,
        dispatch: Dispatch,
        worker: str = "engine",
        clock: Clock = time.time,
    ) -> Parts:
        """The parts of a client (:class:`~taskplane.engine.ExecutionEngine`).

        Its runner has no handlers: a client runs no task, it only answers a
        lone task from the cache (announced as *worker*). Its plan recorder
        collects results and ends runs; through *dispatch* it resends lost
        messages and answers ``execute_plan`` callers of a run it ends.
        """
        stack = ExitStack()
        client = _closing(stack, redis_client(settings.redis_url))
        fast = _closing(stack, redis_client(settings.redis_url, fast=True))
        events = RedisEventBus(
            client,
            prefix=settings.key_prefix,
            stream_maxlen=settings.events_stream_maxlen,
            clock=clock,
        )
        proxy = _closing(stack, build_agent_proxy(settings, fast, emit=events.publish, clock=clock))
        _closing(stack, events)
        hooks = HookChain()
        if settings.events_enabled:
            hooks.add(EventHooks(events, worker=worker))
        parts = cls._assemble(
            settings,
            stack,
            (client, fast, events, proxy, hooks),
            {},
            dispatch,
            worker=worker,
            clock=clock,
        )
        return parts

    @classmethod
    def for_worker(
        cls,
        settings: Settings,
        *,
        dispatch: Dispatch,
        worker: str = "",
    ) -> Parts:
        """The parts one worker process shares between its task slots.

        Build it in the process that uses it, after any fork: it opens pools
        and starts background senders. *dispatch* is the Celery side.
        """
        import_function_modules(settings.function_modules)
        stack = ExitStack()
        # one connection per task slot at most, plus the background publishers'
        connections = settings.worker_concurrency + REDIS_SPARE_CONNECTIONS
        client = _closing(stack, redis_client(settings.redis_url, max_connections=connections))
        fast = _closing(
            stack, redis_client(settings.redis_url, fast=True, max_connections=connections)
        )
        # as many HTTP connections as calls in flight: one per task slot
        pool = settings.worker_concurrency
        http = _closing(
            stack,
            httpx.Client(
                limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
                timeout=settings.default_timeout / 1000.0,
                event_hooks={"request": [tracing.inject_httpx]},
            ),
        )
        events = RedisEventBus(
            client,
            prefix=settings.key_prefix,
            stream_maxlen=settings.events_stream_maxlen,
            background=settings.events_enabled,
        )
        hooks = HookChain()
        if settings.events_enabled:
            hooks.add(EventHooks(events, worker=worker))
        # token windows and plan budgets are settled after each call without holding it up
        settles = WriteBehind(fast, name="taskplane-settle")
        proxy = build_agent_proxy(
            settings, fast, emit=hooks.emit, http_pool_size=pool, settle_behind=settles
        )
        _closing(stack, proxy)  # after the HTTP pool it calls through: closed before it
        handlers, patterns = _worker_handlers(settings, proxy, http)
        if tracing.active():  # spans for calls, events for refusals, retries and cache hits
            call_spans.trace_transports(proxy.transports)
            handlers = {kind: call_spans.traced_handler(kind, h) for kind, h in handlers.items()}
            hooks.add(call_spans.TracingHooks())
        metrics: WorkerMetrics | None = None
        if settings.metrics_port is not None:
            metrics = WorkerMetrics(breaker_redis=fast, prefix=settings.key_prefix)
            handlers = {kind: metrics.measure(handler) for kind, handler in handlers.items()}
        parts = cls._assemble(
            settings,
            stack,
            (client, fast, events, proxy, hooks),
            handlers,
            dispatch,
            patterns=patterns,
            worker=worker,
        )
        parts.members = MemberRunner(
            parts.plans,
            parts.runner,
            patterns=patterns,
            budgets=RedisBudgetBackend(client, prefix=settings.key_prefix, behind=settles),
        )
        if metrics is not None and settings.metrics_port is not None:
            hooks.add(MetricsHooks(metrics, uses_cache=parts.runner.uses_cache))
            parts.plans.on_plan_end = lambda record: metrics.plan_ended(record, now=time.time())
            parts.metrics = metrics
            if metrics.serve(settings.metrics_port):
                _closing(stack, metrics)
        _closing(stack, events)
        if settings.tracking_enabled:
            parts.tracker = _closing(stack, build_tracker(settings, emit=hooks.emit))
            parts.recorder = _closing(stack, TrackingRecorder(parts.tracker))
            hooks.add(TrackingHooks(parts.recorder))
        _closing(stack, settles)  # closed first: its replies publish events
        return parts

    @classmethod
    def _assemble(
        cls,
        settings: Settings,
        stack: ExitStack,
        given: tuple[Redis, Redis, RedisEventBus, AgentProxy, HookChain],
        handlers: Mapping[TaskType, Handler],
        dispatch: Dispatch,
        *,
        patterns: FilePatternEngine | None = None,
        worker: str,
        clock: Clock = time.time,
    ) -> Parts:
        """The parts both roles build alike around the *given* clients, bus, proxy and hooks.

        The result cache, the runner over *handlers*, the plan store and its
        recorder, sending through *dispatch*. The one place the cache's
        on/off switch is read: a disabled cache is no cache for the runner
        (``results`` still answers ``stats()``/``clear()``). The store writes
        each recorded outcome's ``task:completed``/``task:failed`` itself, on
        the bus when events are on.
        """
        client, fast, events, proxy, hooks = given
        results = RedisResultCache(client, settings.cache, prefix=settings.key_prefix)
        cache = None
        if settings.cache.enabled:
            cache = RunnerCache(results, capabilities_of=proxy.capabilities_of)
        runner = TaskRunner(
            handlers,
            retry=settings.retry_config,
            default_timeout_ms=settings.default_timeout,
            cache=cache,
            hooks=hooks,
        )
        store = RedisRunStore(
            client,
            prefix=settings.key_prefix,
            retention_s=settings.plan_retention_s,
            events=events if settings.events_enabled else None,
            clock=clock,
            cluster=is_cluster(client),
        )
        return cls(
            settings=settings,
            redis=client,
            fast_redis=fast,
            events=events,
            proxy=proxy,
            hooks=hooks,
            results=results,
            cache=cache,
            runner=runner,
            store=store,
            plans=PlanRecorder(
                store,
                dispatch,
                hooks=hooks,
                patterns=patterns,
                remember=runner.remember,
                clock=clock,
            ),
            worker=worker,
            _stack=stack,
        )

    @property
    def member_runner(self) -> MemberRunner:
        """A worker's runner of plan members.

        Raises:
            TypeError: These are a client's parts, which run no task.
        """
        if self.members is None:
            raise TypeError("a client's parts run no plan member")
        return self.members

    def tracking(self) -> ConfidenceTracker:
        """The tracker, built on the first call when none was (a client's).

        The one part a client builds late: it opens the tracking database
        (a driver, a directory), which a client that never reads statistics
        does not need.
        """
        with self._lock:
            if self.tracker is None:
                self.tracker = build_tracker(self.settings, emit=self.events.publish)
                # closed before the bus it publishes anomalies on
                _closing(self._stack, self.tracker)
            return self.tracker

    def agent_policies(self, agent_ids: Iterable[str]) -> Mapping[str, AgentPolicy]:
        """The registered policies of *agent_ids* (for plans submitted from here)."""
        return self.proxy.registry.policies(agent_ids)

    def close(self) -> None:
        """Flush and close every part, the last built first; a part that fails is logged."""
        self._stack.close()


def _closing(stack: ExitStack, part: Any) -> Any:
    """Register *part*'s ``close`` on *stack* (logged, not raised, if it fails); return *part*."""

    def close() -> None:
        try:
            part.close()
        except Exception:
            log.exception("closing %r failed", part)

    stack.callback(close)
    return part


def _worker_handlers(
    settings: Settings, proxy: AgentProxy, http: httpx.Client
) -> tuple[dict[TaskType, Handler], FilePatternEngine | None]:
    """One handler per task type, and the pattern files a worker expands (None: a control
    plane runs patterns, and the call waits for it)."""
    handlers: dict[TaskType, Handler] = {
        TaskType.AGENT: proxy,
        TaskType.FUNCTION: registry,
        TaskType.HTTP: HttpTaskHandler(
            http,
            guard=UrlGuard(
                allowed_hosts=settings.http_allowed_hosts,
                block_private=settings.http_block_private,
            ),
            max_response_bytes=settings.http_max_response_bytes,
        ),
    }
    if settings.pattern_executor:
        handlers[TaskType.PATTERN] = PatternHandler(
            load_pattern_executor(settings.pattern_executor)
        )
        return handlers, None
    return handlers, FilePatternEngine(settings.patterns_dir)
