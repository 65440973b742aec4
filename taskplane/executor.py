"""The task runner: one task in, one result envelope out.

:class:`TaskRunner` is pure domain logic. It takes its handlers (one per task
type), cache, hooks, clock and sleep as arguments, so it runs the same in a
Celery worker and in a unit test with a fake clock. It never raises for a
task's outcome: every error becomes an :class:`ExecutionResult`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskplane.config import RetryConfig
from taskplane.errors import (
    RETRYABLE_ERRORS,
    ExecutionError,
    NotFoundError,
    TaskCancelledError,
    TaskTimeoutError,
    UpstreamError,
)
from taskplane.hooks import ExecutionHooks, HookChain
from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    TaskStatus,
    TaskType,
    redact_credentials,
)

log = logging.getLogger(__name__)

#: Longest wait a target's ``Retry-After`` can ask for, in seconds.
MAX_RETRY_AFTER_S = 60.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the attempt it is making.

    Attributes:
        timeout_s: Budget for this one call, in seconds (already capped by the plan deadline).
        attempt: 1 for the first call, 2 for the first retry, …
        plan_id: The plan this task belongs to, if any.
        idempotency_key: Sent to targets that understand one (same on every attempt).
        lineage: Names of the patterns this task is nested in, outermost first.
        is_cancelled: Reads the plan's cancel flag; a transport that follows a long
            remote task (A2A) polls it to cancel the remote side in time.
    """

    timeout_s: float
    attempt: int = 1
    plan_id: str | None = None
    idempotency_key: str = ""
    lineage: tuple[str, ...] = ()
    is_cancelled: Callable[[], bool] = lambda: False


@dataclass
class Outcome:
    """What a handler returns on success."""

    result: Any
    confidence: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class Handler(Protocol):
    """Runs one attempt at a task of one type; raises an ``ExecutionError`` on failure."""

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome: ...


class TaskCache(Protocol):
    """The runner's view of the result cache."""

    def lookup(self, task: ExecutionTask) -> ExecutionResult | None:
        """Return a cached envelope for *task*, or None."""

    def store(self, task: ExecutionTask, result: ExecutionResult) -> None:
        """Offer a finished envelope to the cache (it decides whether to keep it)."""


@dataclass
class RunContext:
    """Where a task runs: its plan, its deadline, how to see a cancel.

    Attributes:
        plan_id: The plan's id, or None for a lone task.
        deadline: Epoch seconds after which the task comes back ``timeout``.
        worker: Name of the worker running it (goes into ``metadata.worker``).
        is_cancelled: Reads the plan's cancel flag; checked before every attempt.
        lineage: Enclosing pattern names, for nested patterns.
    """

    plan_id: str | None = None
    deadline: float | None = None
    worker: str = ""
    is_cancelled: Callable[[], bool] = lambda: False
    lineage: tuple[str, ...] = ()


def target_metadata(task: ExecutionTask) -> dict[str, Any]:
    """The metadata every envelope of *task* carries, whatever its outcome."""
    meta: dict[str, Any] = {
        "target": redact_credentials(task.target),
        "taskType": task.type.value,
    }
    if task.type is TaskType.AGENT:
        meta["agentId"] = task.target
    if task.type is TaskType.PATTERN:
        meta["pattern"] = task.metadata.pattern or task.target
    elif task.metadata.pattern:
        meta["pattern"] = task.metadata.pattern
    return meta


def cacheable(task: ExecutionTask) -> bool:
    """Agent and pattern tasks are cached unless opted out; others only if opted in."""
    if task.metadata.cache is False:
        return False
    if task.type in (TaskType.AGENT, TaskType.PATTERN):
        return True
    return task.metadata.cache is True


def cached_result(cache: TaskCache, task: ExecutionTask, ctx: RunContext) -> ExecutionResult | None:
    """*task*'s cached envelope, re-addressed to this task and run; None on a miss.

    A cache that fails is logged and counts as a miss.
    """
    try:
        hit = cache.lookup(task)
    except Exception:
        log.warning("cache lookup failed for task %s; treating as a miss", task.id, exc_info=True)
        return None
    if hit is None:
        return None
    meta = {**hit.metadata, **target_metadata(task), "cached": True, "attempts": 0}
    meta["worker"] = ctx.worker
    meta.pop("planId", None)  # the run that stored it, not this one
    if ctx.plan_id:
        meta["planId"] = ctx.plan_id
    return hit.model_copy(update={"task_id": task.id, "metadata": meta, "retries": 0})


def envelope(
    task: ExecutionTask,
    status: TaskStatus,
    *,
    error: str | None = None,
    retries: int = 0,
    attempts: int = 0,
    execution_time_ms: float = 0.0,
    ctx: RunContext | None = None,
) -> ExecutionResult:
    """Build a result envelope for an outcome that produced no value."""
    meta = target_metadata(task)
    meta.update(cached=False, attempts=attempts)
    if ctx is not None:
        meta["worker"] = ctx.worker
        if ctx.plan_id:
            meta["planId"] = ctx.plan_id
    return ExecutionResult(
        task_id=task.id,
        status=status,
        error=error,
        retries=retries,
        execution_time=execution_time_ms,
        metadata=meta,
    )


class TaskRunner:
    """Runs tasks through their handler with retries, cache, hooks and deadlines.

    Args:
        handlers: One handler per task type; a missing type fails the task clearly.
        retry: Backoff settings (one retry layer only: handlers do not retry).
        default_timeout_ms: Per-call timeout when a task gives none.
        cache: Optional result cache; consulted for agent and pattern tasks,
            and for other types only when ``metadata.cache`` is true.
        hooks: Listeners for retries, cache hits and finished tasks.
        clock: Wall clock in epoch seconds (plan deadlines are shared across hosts).
        sleep: Waits between attempts.
    """

    def __init__(
        self,
        handlers: Mapping[TaskType, Handler],
        *,
        retry: RetryConfig | None = None,
        default_timeout_ms: int = 30000,
        cache: TaskCache | None = None,
        hooks: ExecutionHooks | None = None,
        clock: Clock = time.time,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.handlers = dict(handlers)
        self.retry = retry or RetryConfig()
        self.default_timeout_ms = default_timeout_ms
        self.cache = cache
        # Always through a chain, so a raising listener never breaks the task.
        self.hooks: ExecutionHooks = HookChain([] if hooks is None else [hooks])
        if isinstance(hooks, HookChain):
            self.hooks = hooks
        self.clock = clock
        self.sleep = sleep

    def uses_cache(self, task: ExecutionTask) -> bool:
        """Whether this runner consults its cache for *task* (see :func:`cacheable`)."""
        return self.cache is not None and cacheable(task)

    def run(self, task: ExecutionTask, ctx: RunContext | None = None) -> ExecutionResult:
        """Run *task* to its final envelope; never raises for the task's outcome."""
        ctx = ctx or RunContext()
        started = self.clock()
        self.hooks.on_started(task, ctx)
        if self.cache is not None and self.uses_cache(task):
            hit = self._cached(task, ctx)
            if hit is not None:
                self.hooks.on_cache_hit(task, ctx, hit)
                self.hooks.on_finished(task, ctx, hit)
                return hit
        result = self._attempts(task, ctx, started)
        if result.ok and self.cache is not None and self.uses_cache(task):
            try:
                self.cache.store(task, result)
            except Exception:
                log.warning("cache store failed for task %s", task.id, exc_info=True)
        self.hooks.on_finished(task, ctx, result)
        return result

    def _cached(self, task: ExecutionTask, ctx: RunContext) -> ExecutionResult | None:
        assert self.cache is not None
        return cached_result(self.cache, task, ctx)

    def _attempts(self, task: ExecutionTask, ctx: RunContext, started: float) -> ExecutionResult:
        handler = self.handlers.get(task.type)
        max_retries = (
            task.metadata.retries if task.metadata.retries is not None else self.retry.max_retries
        )
        timeout_s = (task.metadata.timeout or self.default_timeout_ms) / 1000.0
        idempotency_key = task.metadata.idempotency_key or f"{ctx.plan_id or '-'}:{task.id}"
        attempt = 0

        def finish(status: TaskStatus, error: str | None) -> ExecutionResult:
            return envelope(
                task,
                status,
                error=error,
                retries=max(attempt - 1, 0),
                attempts=attempt,
                execution_time_ms=(self.clock() - started) * 1000.0,
                ctx=ctx,
            )

        if handler is None:
            return finish(TaskStatus.FAILURE, f"task type {task.type.value!r} is not available")
        while True:
            if attempt > 0 and ctx.is_cancelled():
                return finish(TaskStatus.CANCELLED, "plan cancelled")
            budget = timeout_s
            if ctx.deadline is not None:
                budget = min(budget, ctx.deadline - self.clock())
                if budget <= 0:
                    return finish(TaskStatus.TIMEOUT, "plan deadline passed")
            attempt += 1
            call = CallContext(
                timeout_s=budget,
                attempt=attempt,
                plan_id=ctx.plan_id,
                idempotency_key=idempotency_key,
                lineage=ctx.lineage,
                is_cancelled=ctx.is_cancelled,
            )
            try:
                outcome = handler(task, call)
            except TaskCancelledError as exc:
                return finish(TaskStatus.CANCELLED, str(exc) or "plan cancelled")
            except RETRYABLE_ERRORS as exc:
                error = _describe(exc)
                timed_out = isinstance(exc, TaskTimeoutError)
                if attempt > max_retries:
                    return finish(TaskStatus.TIMEOUT if timed_out else TaskStatus.FAILURE, error)
                delay_ms = self.retry.delay_ms(attempt)
                if isinstance(exc, UpstreamError) and exc.retry_after_s is not None:
                    hinted_ms = min(exc.retry_after_s, MAX_RETRY_AFTER_S) * 1000.0
                    delay_ms = max(delay_ms, hinted_ms)
                if ctx.deadline is not None and self.clock() + delay_ms / 1000.0 >= ctx.deadline:
                    return finish(TaskStatus.TIMEOUT, f"{error} (no time left to retry)")
                self.hooks.on_retrying(task, ctx, attempt=attempt, delay_ms=delay_ms, error=error)
                self.sleep(delay_ms / 1000.0)
                continue
            except ExecutionError as exc:
                return finish(TaskStatus.FAILURE, _describe(exc))
            except Exception as exc:
                log.exception("handler for task %s raised unexpectedly", task.id)
                return finish(TaskStatus.FAILURE, f"internal error: {type(exc).__name__}: {exc}")
            meta = target_metadata(task)
            meta.update(outcome.metadata)
            meta.update(cached=False, attempts=attempt, worker=ctx.worker)
            if ctx.plan_id:
                meta["planId"] = ctx.plan_id
            return ExecutionResult(
                task_id=task.id,
                status=TaskStatus.SUCCESS,
                result=outcome.result,
                confidence=outcome.confidence,
                retries=attempt - 1,
                execution_time=(self.clock() - started) * 1000.0,
                metadata=meta,
            )


def _describe(exc: BaseException) -> str:
    text = redact_credentials(str(exc))
    if isinstance(exc, NotFoundError):
        return text
    return text or type(exc).__name__
