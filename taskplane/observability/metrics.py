"""Prometheus metrics of a worker: what its runner saw, served on ``/metrics``.

:class:`WorkerMetrics` holds one registry per worker process. It is fed from
the runner's hook chain (:class:`MetricsHooks`: retries, cache hits, finished
envelopes, anomaly events), from a thin wrapper around each task type's
handler (:meth:`WorkerMetrics.measure`: one call, its duration, calls in
flight, booked rate-limit waits) and from the plan recorder's ``on_plan_end``
(plan runs that end on this worker). Labels are bounded: an agent's id, a
task type, an outcome, never a task or plan id. ``agent`` of a task that is
not an agent call is its type (``function``, ``http``, ``pattern``).

Breaker state is cluster-wide (Redis holds it): every worker reports the same
value, read from Redis on each scrape, so aggregate it with ``max by
(agent)``, never ``sum``.

A worker serves ``/metrics`` when ``TASKPLANE_METRICS_PORT`` is set. A port
already taken is logged as one error line naming the setting, and the worker
keeps running without metrics: refusing work over a metrics port would turn
a monitoring mistake into an outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskplane.aliases import Clock
from taskplane.errors import (
    CircuitOpenError,
    RateLimitedError,
    TaskCancelledError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.hooks import ExecutionHooks
from taskplane.keys import BREAKER, untag
from taskplane.models import ExecutionResult, ExecutionTask, TaskType
from taskplane.proxy.breaker_storage import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN

if TYPE_CHECKING:
    from taskplane.contract import CallContext, Handler, Outcome, RunContext
    from taskplane.plan.record import RunRecord

log = logging.getLogger(__name__)

#: Buckets of agent call durations (s): a cached echo to a slow model.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: Buckets of plan durations (s).
PLAN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Buckets of confidence scores.
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
#: Value of ``taskplane_breaker_state`` per breaker state.
BREAKER_STATES = {STATE_CLOSED: 0.0, STATE_HALF_OPEN: 1.0, STATE_OPEN: 2.0}
#: Call outcomes a retry can follow (the ``reason`` of ``taskplane_retries_total``).
RETRY_REASONS = frozenset({"timeout", "throttled", "upstream_error", "transport_error"})
#: Failed calls whose reason waits for its retry or end to be counted, at most.
MAX_PENDING_REASONS = 10000


def agent_label(task: ExecutionTask) -> str:
    """The ``agent`` label of *task*: its agent id, or its type for other tasks."""
    return task.target if task.type is TaskType.AGENT else task.type.value


def call_outcome(exc: BaseException | None) -> str:
    """The ``outcome`` label of one call that raised *exc* (None: it succeeded)."""
    if exc is None:
        return "success"
    for kind, name in (
        (CircuitOpenError, "circuit_open"),
        (RateLimitedError, "rate_limited"),
        (TaskCancelledError, "cancelled"),
        (TaskTimeoutError, "timeout"),
        (ThrottledError, "throttled"),
        (UpstreamError, "upstream_error"),
        (TransportError, "transport_error"),
    ):
        if isinstance(exc, kind):
            return name
    return "error"


class BreakerCollector(Collector):
    """``taskplane_breaker_state{agent}`` read from Redis on each scrape (cluster-wide)."""

    def __init__(self, client: redis.Redis, *, prefix: str) -> None:
        self.client = client
        self.prefix = f"{prefix}:{BREAKER}"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "taskplane_breaker_state",
            "Circuit breaker state per agent (0 closed, 1 half-open, 2 open), "
            "cluster-wide: every worker reports the same value, aggregate with max",
            labels=["agent"],
        )
        try:
            keys = [
                key
                for key in self.client.scan_iter(match=f"{self.prefix}*", count=500)
                if not str(key).endswith(":failures")
            ]
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hget(key, "state")
                states = pipe.execute()
        except redis.RedisError as exc:
            log.warning("breaker state for metrics unreadable: %s", exc)
            keys, states = [], []
        for key, state in zip(keys, states, strict=True):
            agent = untag(str(key)[len(self.prefix) :])
            family.add_metric([agent], BREAKER_STATES.get(str(state or STATE_CLOSED), 0.0))
        yield family


class WorkerMetrics:
    """The metrics of one worker process, in a registry of their own.

    Args:
        breaker_redis: Where breaker state is read on scrape (None: not reported).
        prefix: The settings' key prefix.
        clock: Monotonic seconds, for call durations.
    """

    def __init__(
        self,
        *,
        breaker_redis: redis.Redis | None = None,
        prefix: str = "taskplane",
        clock: Clock = time.perf_counter,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.clock = clock
        self.server: Any = None
        #: Why each task's last call failed, until its retry or its end is counted.
        self.reasons: dict[tuple[str | None, str], str] = {}
        r = self.registry
        self.calls = Counter(
            "taskplane_agent_calls",
            "Calls made to a target (one per attempt), by outcome",
            ["agent", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "taskplane_agent_call_duration_seconds",
            "Duration of one call to a target (one attempt)",
            ["agent"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "taskplane_agent_in_flight", "Calls in progress on this worker", ["agent"], registry=r
        )
        self.rate_limit_wait = Histogram(
            "taskplane_rate_limit_wait_seconds",
            "Wait booked for a rate limit slot (the task waits off the worker)",
            ["agent"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "taskplane_retries", "Retries scheduled, by reason", ["agent", "reason"], registry=r
        )
        self.cache = Counter(
            "taskplane_cache_requests", "Result cache lookups (hit, miss)", ["result"], registry=r
        )
        self.tasks = Counter(
            "taskplane_tasks", "Tasks finished, by final status", ["type", "status"], registry=r
        )
        self.confidence = Histogram(
            "taskplane_confidence",
            "Confidence of successful results that report one",
            ["agent"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "taskplane_tokens",
            "Tokens agents reported using (metadata.usage), input or output",
            ["agent", "direction"],
            registry=r,
        )
        self.plans = Counter(
            "taskplane_plans",
            "Plan runs (nested pattern runs included) that ended on this worker, by final state",
            ["strategy", "state"],
            registry=r,
        )
        self.plan_duration = Histogram(
            "taskplane_plan_duration_seconds",
            "Time from a plan's submission to its end, for runs that ended on this worker",
            ["strategy"],
            buckets=PLAN_BUCKETS,
            registry=r,
        )
        self.anomalies = Counter(
            "taskplane_anomalies",
            "Confidence anomalies this worker detected, by type",
            ["agent", "type"],
            registry=r,
        )
        if breaker_redis is not None:
            self.registry.register(BreakerCollector(breaker_redis, prefix=prefix))

    def task_done(self, task_type: str, result: ExecutionResult) -> None:
        """Count a task that finished outside the runner (a nested pattern's task)."""
        self.tasks.labels(task_type, result.status.value).inc()

    def plan_ended(self, record: RunRecord, *, now: float) -> None:
        """Count a run that ended; *now* in epoch seconds (the store's clock)."""
        strategy = record.rule.name
        self.plans.labels(strategy, record.state).inc()
        if record.created:
            self.plan_duration.labels(strategy).observe(max(now - record.created, 0.0))

    def measure(self, handler: Handler) -> Handler:
        """*handler*, counting and timing each call it makes."""
        calls, duration, in_flight, clock = self.calls, self.duration, self.in_flight, self.clock
        reasons, rate_limit_wait = self.reasons, self.rate_limit_wait

        def measured(task: ExecutionTask, call: CallContext) -> Outcome:
            agent = agent_label(task)
            gauge = in_flight.labels(agent)
            gauge.inc()
            started = clock()
            error: BaseException | None = None
            try:
                return handler(task, call)
            except BaseException as exc:
                error = exc
                raise
            finally:
                gauge.dec()
                outcome = call_outcome(error)
                if outcome not in ("circuit_open", "rate_limited"):  # no call was made
                    duration.labels(agent).observe(clock() - started)
                calls.labels(agent, outcome).inc()
                if isinstance(error, RateLimitedError) and error.reserved:
                    rate_limit_wait.labels(agent).observe(max(error.wait_s, 0.0))
                if outcome in RETRY_REASONS and len(reasons) < MAX_PENDING_REASONS:
                    reasons[(call.plan_id, task.id)] = outcome

        return measured

    def serve(self, port: int, *, addr: str = "0.0.0.0") -> bool:
        """Serve ``/metrics`` on *port*; False (and one error line) when it is taken."""
        try:
            server = start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.error(
                "TASKPLANE_METRICS_PORT=%d: cannot serve /metrics (%s); "
                "this worker runs on without metrics",
                port,
                exc.strerror or exc,
            )
            return False
        self.server = server[0] if isinstance(server, tuple) else None
        log.info("serving Prometheus metrics on port %d at /metrics", port)
        return True

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class MetricsHooks(ExecutionHooks):
    """Execution hooks that count what the runner reports into :class:`WorkerMetrics`.

    Args:
        metrics: Where the counts go.
        uses_cache: Whether the runner consults its cache for a task (a
            finished task that was not a hit was then a miss).
    """

    def __init__(
        self, metrics: WorkerMetrics, *, uses_cache: Callable[[ExecutionTask], bool]
    ) -> None:
        self.metrics = metrics
        self.uses_cache = uses_cache

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        reason = self.metrics.reasons.pop((ctx.plan_id, task.id), "error")
        self.metrics.retries.labels(agent_label(task), reason).inc()

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.metrics.cache.labels("hit").inc()

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        m = self.metrics
        self.metrics.reasons.pop((ctx.plan_id, task.id), None)
        m.task_done(task.type.value, result)
        cached = bool(result.metadata.get("cached"))
        if not cached and self.uses_cache(task):
            m.cache.labels("miss").inc()
        if cached or not result.ok:
            return
        agent = agent_label(task)
        if result.confidence is not None:
            m.confidence.labels(agent).observe(result.confidence)
        usage = result.metadata.get("usage")
        if isinstance(usage, dict):
            for field, direction in (("inputTokens", "input"), ("outputTokens", "output")):
                count = usage.get(field)
                if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                    m.tokens.labels(agent, direction).inc(count)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        if event_type == "anomaly:detected":
            agent = str(data.get("agentId") or "unknown")
            self.metrics.anomalies.labels(agent, str(data.get("type") or "unknown")).inc()
