"""The per-process runtime of a worker: clients, pools, stores and the task runner.

Built once per process, after any fork, on first use (:func:`runtime_for`),
from the settings of the Celery app; closed on worker shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from taskplane.budget import RedisBudgetBackend
from taskplane.cache import RedisResultCache, RunnerCache
from taskplane.config import Settings
from taskplane.events import EventBus, EventHooks, RedisEventBus
from taskplane.executor import Handler, TaskRunner
from taskplane.functions import import_function_modules, registry
from taskplane.hooks import HookChain
from taskplane.http_task import HttpTaskHandler, UrlGuard
from taskplane.models import TaskType
from taskplane.observability import call_spans, tracing
from taskplane.observability.metrics import MetricsHooks, WorkerMetrics
from taskplane.patterns import FilePatternEngine, PatternHandler, load_pattern_executor
from taskplane.plan import RedisRunStore, RunStore
from taskplane.plan.dispatch import Dispatch
from taskplane.plan.members import MemberRunner
from taskplane.plan.recorder import PlanRecorder
from taskplane.proxy import AgentProxy, build_agent_proxy
from taskplane.proxy.policy import AgentPolicy
from taskplane.redisio import WriteBehind, cluster_client, is_cluster, is_cluster_url
from taskplane.tracking import ConfidenceTracker, TrackingRecorder, build_tracker
from taskplane.tracking.recorder import TrackingHooks

log = logging.getLogger(__name__)

#: Longest a Redis command may take; blocking waits are sliced well below it.
SOCKET_TIMEOUT_S = 15.0
#: Timeout of the clients on every agent call's path (breaker, limiter).
FAST_TIMEOUT_S = 1.0
#: Redis connections of a worker beyond one per task slot (event publisher, tracking).
REDIS_SPARE_CONNECTIONS = 10
#: How long a command of a non-*fast* client keeps retrying while Redis is unreachable
#: (a restart: stop, start, loading the append-only file), in seconds.
REDIS_OUTAGE_S = 15.0
#: Backoff between those retries: 0.1 s, doubling, at most 1 s.
OUTAGE_BACKOFF_BASE_S = 0.05
OUTAGE_BACKOFF_CAP_S = 1.0


def outage_retry(outage_s: float = REDIS_OUTAGE_S) -> Retry:
    """A redis-py retry policy that rides through *outage_s* seconds of Redis being away.

    Connection errors (refused, closed, ``LOADING`` while Redis reads its
    append-only file) are retried with an exponential backoff (capped at
    :data:`OUTAGE_BACKOFF_CAP_S`) until the backoffs add up to *outage_s*;
    then the error is raised. A timeout is not retried: it already took
    :data:`SOCKET_TIMEOUT_S`. Every script the plan store sends is safe to
    repeat (each state change is guarded by ``HSETNX`` or a lease owned by
    the task), which is what makes retrying them sound.
    """
    backoff = ExponentialBackoff(cap=OUTAGE_BACKOFF_CAP_S, base=OUTAGE_BACKOFF_BASE_S)
    retries, waited = 0, 0.0
    while waited < outage_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries, supported_errors=(redis.ConnectionError,))


def redis_client(
    url: str, *, fast: bool = False, max_connections: int | None = None
) -> redis.Redis:
    """A Redis client for taskplane's own keys (strings, not bytes).

    *fast* clients (breakers, limiters: on every agent call) give up within
    about a second and do not retry, so an outage degrades calls quickly.
    The others (plan store, events, cache, the client's waits) retry a lost
    connection for :data:`REDIS_OUTAGE_S` (:func:`outage_retry`): a task in
    flight when Redis restarts pauses until it is back, then records its
    outcome and enqueues its successor, instead of failing and losing its
    broker message (acknowledged as failed, so never delivered again).
    *max_connections* bounds the pool, and a caller past the bound waits for a
    free connection (as long as a command may take) instead of failing: a
    worker passes one per task slot, since redis-py's own default pool (100
    connections, failing past them) is too small for a thousand greenlets.
    A ``redis+cluster://`` *url* makes a Redis Cluster client (its pools bounded per node).
    """
    if fast:
        options: dict[str, Any] = {
            "socket_connect_timeout": FAST_TIMEOUT_S,
            "socket_timeout": FAST_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),
        }
    else:
        options = {
            "socket_connect_timeout": 5,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "health_check_interval": 30,
            "retry": outage_retry(),
        }
    if is_cluster_url(url):  # the cluster client retries, and follows slot moves, itself
        retry = options.pop("retry")
        client = cluster_client(
            url, retry=retry, max_connections=max_connections, decode_responses=True, **options
        )
        return cast(redis.Redis, client)
    if max_connections is None:
        return redis.Redis.from_url(url, decode_responses=True, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=options["socket_timeout"],
        decode_responses=True,
        **options,
    )
    return redis.Redis(connection_pool=pool)


@dataclass
class WorkerRuntime:
    """Everything a worker process shares between its task slots (greenlets or threads)."""

    settings: Settings
    redis: redis.Redis
    store: RunStore
    runner: TaskRunner
    plans: PlanRecorder
    members: MemberRunner
    hooks: HookChain
    http: httpx.Client
    worker: str
    bus: EventBus | None = None
    proxy: AgentProxy | None = None
    tracker: ConfidenceTracker | None = None
    recorder: TrackingRecorder | None = None
    metrics: WorkerMetrics | None = None
    closers: list[Callable[[], Any]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        dispatch: Dispatch,
        worker: str = "",
    ) -> WorkerRuntime:
        """Build the runtime for *settings*; *dispatch* is Celery's."""
        import_function_modules(settings.function_modules)
        # one connection per task slot at most, plus the background publishers'
        connections = settings.worker_concurrency + REDIS_SPARE_CONNECTIONS
        client = redis_client(settings.redis_url, max_connections=connections)
        bus: RedisEventBus | None = None
        hooks = HookChain()
        if settings.events_enabled:
            bus = RedisEventBus(
                client,
                prefix=settings.key_prefix,
                stream_maxlen=settings.events_stream_maxlen,
                background=True,
            )
            hooks.add(EventHooks(bus, worker=worker))
        # as many connections as calls in flight: one per task slot
        pool = settings.worker_concurrency
        http = httpx.Client(
            limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
            timeout=settings.default_timeout / 1000.0,
            event_hooks={"request": [tracing.inject_httpx]},
        )
        fast = redis_client(settings.redis_url, fast=True, max_connections=connections)
        # token windows and plan budgets are settled after each call without holding it up
        settles = WriteBehind(fast, name="taskplane-settle")
        proxy = build_agent_proxy(
            settings, fast, emit=hooks.emit, http_pool_size=pool, settle_behind=settles
        )
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
        patterns: FilePatternEngine | None = FilePatternEngine(settings.patterns_dir)
        if settings.pattern_executor:  # a control plane runs patterns; the call waits for it
            handlers[TaskType.PATTERN] = PatternHandler(
                load_pattern_executor(settings.pattern_executor)
            )
            patterns = None
        cache = RunnerCache(
            RedisResultCache(client, settings.cache, prefix=settings.key_prefix),
            capabilities_of=proxy.capabilities_of,
        )
        if tracing.active():  # spans for calls, events for refusals, retries and cache hits
            call_spans.trace_transports(proxy.transports)
            handlers = {kind: call_spans.traced_handler(kind, h) for kind, h in handlers.items()}
            hooks.add(call_spans.TracingHooks())
        metrics: WorkerMetrics | None = None
        if settings.metrics_port is not None:
            metrics = WorkerMetrics(breaker_redis=fast, prefix=settings.key_prefix)
            handlers = {kind: metrics.measure(handler) for kind, handler in handlers.items()}
        runner = TaskRunner(
            handlers,
            retry=settings.retry_config,
            default_timeout_ms=settings.default_timeout,
            cache=cache if settings.cache.enabled else None,
            hooks=hooks,
        )
        # the store writes each recorded outcome's task:completed/task:failed itself
        store = RedisRunStore(
            client,
            prefix=settings.key_prefix,
            retention_s=settings.plan_retention_s,
            events=bus,
            cluster=is_cluster(client),
        )
        plans = PlanRecorder(
            store, dispatch, hooks=hooks, patterns=patterns, remember=runner.remember
        )
        members = MemberRunner(
            plans,
            runner,
            patterns=patterns,
            budgets=RedisBudgetBackend(client, prefix=settings.key_prefix, behind=settles),
        )
        runtime = cls(
            settings, client, store, runner, plans, members, hooks, http, worker, bus, proxy
        )
        runtime.closers += [client.close, fast.close, http.close, proxy.close]
        if metrics is not None and settings.metrics_port is not None:
            hooks.add(MetricsHooks(metrics, uses_cache=runner.uses_cache))
            plans.on_plan_end = lambda record: metrics.plan_ended(record, now=time.time())
            runtime.metrics = metrics
            if metrics.serve(settings.metrics_port):
                runtime.closers.append(metrics.close)
        if bus is not None:
            runtime.closers.append(bus.close)
        if settings.tracking_enabled:
            runtime.tracker = build_tracker(settings, emit=hooks.emit)
            runtime.recorder = TrackingRecorder(runtime.tracker)
            hooks.add(TrackingHooks(runtime.recorder))
            runtime.closers += [runtime.tracker.close, runtime.recorder.close]
        runtime.closers.append(settles.close)  # first: its replies publish events
        return runtime

    def agent_policies(self, agent_ids: Iterable[str]) -> Mapping[str, AgentPolicy]:
        """The registered policies of *agent_ids* (for plans this worker submits)."""
        if self.proxy is None:
            return {}
        return self.proxy.registry.policies(agent_ids)

    def close(self) -> None:
        """Flush and close everything the runtime opened."""
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception:
                log.exception("closing %r failed", closer)


_lock = threading.Lock()
_runtimes: dict[tuple[int, int], WorkerRuntime] = {}


def runtime_for(key: int, factory: Callable[[], WorkerRuntime]) -> WorkerRuntime:
    """The runtime of this process for *key* (an app's id), built by *factory* once."""
    slot = (os.getpid(), key)
    runtime = _runtimes.get(slot)
    if runtime is None:
        with _lock:
            runtime = _runtimes.get(slot)
            if runtime is None:
                runtime = factory()
                _runtimes[slot] = runtime
    return runtime


def close_runtimes() -> None:
    """Close every runtime of this process (worker shutdown)."""
    with _lock:
        for slot, runtime in list(_runtimes.items()):
            if slot[0] == os.getpid():
                runtime.close()
                del _runtimes[slot]
