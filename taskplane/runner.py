"""The task runner: one task in, one result envelope out.

:class:`TaskRunner` is pure domain logic. It takes its handlers (one per task
type), cache, hooks and clock as arguments, so it runs the same in a Celery
worker and in a unit test with a fake clock. It never raises for a task's
outcome: every error becomes an :class:`ExecutionResult`.

It never waits either. :meth:`TaskRunner.step` makes at most one attempt and
answers with the final envelope or a :class:`Reschedule` — "try again in
*delay_s*, as this :class:`Attempt`" — for a retry after backoff or
``Retry-After``, or for a rate-limit slot booked in the future. In a worker
the Celery task turns that into Celery's own retry with a countdown, so no
worker slot is held while the task waits; :meth:`TaskRunner.run` loops over
steps with the injected ``sleep`` for callers that may block (the client).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from taskplane.aliases import Clock, Sleep
from taskplane.config import RetryConfig
from taskplane.contract import (
    BudgetGuard,
    BudgetRefusal,
    CallContext,
    Handler,
    Outcome,
    RunContext,
    envelope,
    target_metadata,
)
from taskplane.errors import (
    RETRYABLE_ERRORS,
    CircuitOpenError,
    ExecutionError,
    NotFoundError,
    RateLimitedError,
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
#: A delivery this close to its ``not_before`` goes ahead rather than waiting again (s).
EARLY_TOLERANCE_S = 0.01


@dataclass(frozen=True)
class Attempt:
    """Where a task's run stands between two deliveries of it.

    Carried in the Celery message (:meth:`to_json`), so it survives a
    reschedule and a redelivery: a message redelivered because its worker
    died mid-call makes the same attempt again, not a new one.

    Attributes:
        number: The attempt to make: 1 for the first call, 2 for the first retry, …
        started: Epoch seconds of the first delivery (None before it): ``executionTime``
            counts from here, and ``task:started`` is announced only then.
        not_before: Epoch seconds before which no call is made (a backoff or a
            booked slot that a capped countdown reached early).
        slot_reserved: A rate-limit slot is booked for this attempt at ``not_before``.
    """

    number: int = 1
    started: float | None = None
    not_before: float | None = None
    slot_reserved: bool = False

    def to_json(self) -> dict[str, Any]:
        """The attempt as message JSON."""
        return {
            "n": self.number,
            "started": self.started,
            "notBefore": self.not_before,
            "slot": self.slot_reserved,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Attempt:
        """Read :meth:`to_json`'s output back (a first delivery carries none)."""
        if not data:
            return cls()
        return cls(
            number=max(int(data.get("n") or 1), 1),
            started=_float_or_none(data.get("started")),
            not_before=_float_or_none(data.get("notBefore")),
            slot_reserved=bool(data.get("slot")),
        )


@dataclass(frozen=True)
class Reschedule:
    """A task is not finished: deliver it again *delay_s* from now, as *attempt*.

    Attributes:
        delay_s: Seconds to wait (the countdown of the Celery retry).
        attempt: The state the next delivery starts from.
        reason: ``retry`` (a failed attempt, backoff), ``rate-limit`` (a booked
            slot; not an attempt), ``budget`` (the plan budget's reservations in
            flight leave no room yet; not an attempt) or ``early`` (a capped
            countdown came back early).
        error: What failed, for a ``retry`` (the worker logs it).
    """

    delay_s: float
    attempt: Attempt
    reason: str
    error: str = ""


class TaskCache(Protocol):
    """The runner's view of the result cache; it never raises (a failing cache is a miss)."""

    def lookup(self, task: ExecutionTask) -> ExecutionResult | None:
        """Return a cached envelope for *task*, or None."""

    def store(self, task: ExecutionTask, result: ExecutionResult) -> None:
        """Offer a finished envelope to the cache (it decides whether to keep it)."""


#: How long a call waits for a plan budget's reservations in flight to settle (s).
BUDGET_WAIT_S = 0.25


def cacheable(task: ExecutionTask) -> bool:
    """Agent and pattern tasks are cached unless opted out; others only if opted in."""
    if task.metadata.cache is False:
        return False
    if task.type in (TaskType.AGENT, TaskType.PATTERN):
        return True
    return task.metadata.cache is True


def readdressed(hit: ExecutionResult, task: ExecutionTask, ctx: RunContext) -> ExecutionResult:
    """A cached envelope *hit* re-addressed to *task* and the run of *ctx*."""
    meta = {**hit.metadata, **target_metadata(task), "cached": True, "attempts": 0}
    meta["worker"] = ctx.worker
    meta.pop("planId", None)  # the run that stored it, not this one
    if ctx.plan_id:
        meta["planId"] = ctx.plan_id
    return hit.model_copy(update={"task_id": task.id, "metadata": meta, "retries": 0})


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
        sleep: Waits between steps in :meth:`run` only (never on a worker).
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
        """Run *task* to its final envelope, waiting in this thread between steps.

        For callers that may block (the client, tests); workers call :meth:`step`.
        The envelope is this run's outcome, recorded nowhere else: ``on_finished``
        is told of it here.
        """
        ctx = ctx or RunContext()
        attempt = Attempt()
        while True:
            step = self.step(task, ctx, attempt)
            if isinstance(step, ExecutionResult):
                self.hooks.on_finished(task, ctx, step)
                return step
            self.sleep(step.delay_s)
            attempt = step.attempt

    def step(
        self, task: ExecutionTask, ctx: RunContext, attempt: Attempt | None = None
    ) -> ExecutionResult | Reschedule:
        """Take *task* one step on: its final envelope, or when and how to come back.

        The first step announces the task and consults the cache (:meth:`begin`);
        every step makes at most one call. Never raises for the task's outcome,
        never waits. The caller records the envelope and tells ``on_finished``
        once it is the recorded outcome (:meth:`run` does for itself).
        """
        attempt = attempt or Attempt()
        now = self.clock()
        if attempt.started is None:
            hit = self.begin(task, ctx)
            if hit is not None:
                return hit
            attempt = replace(attempt, started=now)
        if attempt.not_before is not None and attempt.not_before - now > EARLY_TOLERANCE_S:
            return Reschedule(attempt.not_before - now, attempt, "early")
        step = self._attempt(task, ctx, attempt)
        if isinstance(step, ExecutionResult):
            self.remember(task, step)
        return step

    def begin(
        self, task: ExecutionTask, ctx: RunContext, *, announce_miss: bool = True
    ) -> ExecutionResult | None:
        """Start *task*: announce it and answer it from the cache when it can be.

        The one cache-hit path: ``on_started``, the lookup, ``on_cache_hit``.
        Returns the cached envelope re-addressed to this task and run, or None
        when the task must run. *announce_miss* False announces the start only
        on a hit (a client that hands a miss on to a worker, which announces it).
        """
        if announce_miss:
            self.hooks.on_started(task, ctx)
        hit = self.cache.lookup(task) if self.cache is not None and cacheable(task) else None
        if hit is None:
            return None
        hit = readdressed(hit, task, ctx)
        if not announce_miss:
            self.hooks.on_started(task, ctx)
        self.hooks.on_cache_hit(task, ctx, hit)
        return hit

    def remember(self, task: ExecutionTask, result: ExecutionResult) -> None:
        """Offer *task*'s finished *result* to the cache (successes only; it decides the rest)."""
        if result.ok and self.cache is not None and cacheable(task):
            self.cache.store(task, result)

    def _attempt(
        self, task: ExecutionTask, ctx: RunContext, attempt: Attempt
    ) -> ExecutionResult | Reschedule:
        handler = self.handlers.get(task.type)
        max_retries = (
            task.metadata.retries if task.metadata.retries is not None else self.retry.max_retries
        )
        timeout_s = (task.metadata.timeout or self.default_timeout_ms) / 1000.0
        idempotency_key = task.metadata.idempotency_key or f"{ctx.plan_id or '-'}:{task.id}"
        number = attempt.number
        started = attempt.started if attempt.started is not None else self.clock()

        def finish(
            status: TaskStatus, error: str | None, *, called: bool = True
        ) -> ExecutionResult:
            made = number if called else number - 1  # calls made, this one included
            return envelope(
                task,
                status,
                error=error,
                retries=max(made - 1, 0),
                attempts=made,
                execution_time_ms=(self.clock() - started) * 1000.0,
                ctx=ctx,
            )

        if handler is None:
            error = f"task type {task.type.value!r} is not available"
            return finish(TaskStatus.FAILURE, error, called=False)
        if number > 1 and ctx.is_cancelled():
            return finish(TaskStatus.CANCELLED, "plan cancelled", called=False)
        budget = timeout_s
        if ctx.deadline is not None:
            budget = min(budget, ctx.deadline - self.clock())
            if budget <= 0:
                return finish(TaskStatus.TIMEOUT, "plan deadline passed", called=False)
        hold = None
        if ctx.budget is not None and task.type is TaskType.AGENT:
            hold = ctx.budget.reserve(task)
            if isinstance(hold, BudgetRefusal) and hold.wait:
                now = self.clock()
                if ctx.deadline is not None and now + BUDGET_WAIT_S >= ctx.deadline:
                    error = "plan deadline passed waiting for the plan budget"
                    return finish(TaskStatus.TIMEOUT, error, called=False)
                later = replace(attempt, not_before=now + BUDGET_WAIT_S)
                return Reschedule(BUDGET_WAIT_S, later, "budget")
            if isinstance(hold, BudgetRefusal):
                return finish(TaskStatus.CANCELLED, hold.error, called=False)
        call = CallContext(
            timeout_s=budget,
            attempt=number,
            plan_id=ctx.plan_id,
            idempotency_key=idempotency_key,
            lineage=ctx.lineage,
            deadline=ctx.deadline,
            slot_reserved=attempt.slot_reserved,
            is_cancelled=ctx.is_cancelled,
        )
        try:
            outcome = _call(handler, task, call, ctx.budget, hold)
        except TaskCancelledError as exc:
            return finish(TaskStatus.CANCELLED, str(exc) or "plan cancelled")
        except RateLimitedError as exc:
            if not exc.reserved:
                error = f"{_describe(exc)} (no slot before the deadline)"
                return finish(TaskStatus.TIMEOUT, error, called=False)
            wait_s = max(exc.wait_s, 0.0)
            booked = replace(attempt, not_before=self.clock() + wait_s, slot_reserved=True)
            return Reschedule(wait_s, booked, "rate-limit")
        except RETRYABLE_ERRORS as exc:
            error = _describe(exc)
            if number > max_retries:
                timed_out = isinstance(exc, TaskTimeoutError)
                return finish(TaskStatus.TIMEOUT if timed_out else TaskStatus.FAILURE, error)
            delay_s = self.retry_delay_s(number, exc)
            now = self.clock()
            if ctx.deadline is not None and now + delay_s >= ctx.deadline:
                return finish(TaskStatus.TIMEOUT, f"{error} (no time left to retry)")
            self.hooks.on_retrying(
                task, ctx, attempt=number, delay_ms=delay_s * 1000.0, error=error
            )
            again = Attempt(number + 1, started, not_before=now + delay_s)
            return Reschedule(delay_s, again, "retry", error)
        except ExecutionError as exc:
            return finish(TaskStatus.FAILURE, _describe(exc))
        except Exception as exc:
            log.exception("handler for task %s raised unexpectedly", task.id)
            return finish(TaskStatus.FAILURE, f"internal error: {type(exc).__name__}: {exc}")
        meta = target_metadata(task)
        meta.update(outcome.metadata)
        meta.update(cached=False, attempts=number, worker=ctx.worker)
        if ctx.plan_id:
            meta["planId"] = ctx.plan_id
        return ExecutionResult(
            task_id=task.id,
            status=TaskStatus.SUCCESS,
            result=outcome.result,
            confidence=outcome.confidence,
            retries=number - 1,
            execution_time=(self.clock() - started) * 1000.0,
            metadata=meta,
        )

    def retry_delay_s(self, retry: int, exc: BaseException) -> float:
        """Wait before retry number *retry* after *exc*: the backoff, or ``Retry-After`` if longer.

        A hint is capped at :data:`MAX_RETRY_AFTER_S`; one that is not a finite
        number of seconds is ignored.
        """
        delay_s = self.retry.delay_ms(retry) / 1000.0
        hint = exc.retry_after_s if isinstance(exc, UpstreamError) else None
        if hint is not None and math.isfinite(hint):
            delay_s = max(delay_s, min(max(hint, 0.0), MAX_RETRY_AFTER_S))
        return delay_s


def _call(
    handler: Handler,
    task: ExecutionTask,
    call: CallContext,
    budget: BudgetGuard | None,
    hold: Any,
) -> Outcome:
    """Make the call; settle its plan-budget *hold* (if any) when it ends."""
    if budget is None or hold is None:
        return handler(task, call)
    try:
        outcome = handler(task, call)
    except BaseException as exc:
        called = not isinstance(exc, RateLimitedError | CircuitOpenError)
        budget.settle(hold, tokens=0, called=called)
        raise
    budget.settle(hold, tokens=tokens_used(outcome.metadata.get("usage")), called=True)
    return outcome


def tokens_used(usage: Any) -> int | None:
    """Input plus output tokens of a result's ``metadata.usage``, if it has them."""
    if not isinstance(usage, dict):
        return None
    counts = [usage.get("inputTokens", 0), usage.get("outputTokens", 0)]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return None
    return sum(counts)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _describe(exc: BaseException) -> str:
    text = redact_credentials(str(exc))
    if isinstance(exc, NotFoundError):
        return text
    return text or type(exc).__name__
