"""The handler contract and the result envelope: what every task runs through.

A handler runs one attempt at a task of one type (:class:`Handler`): it is
given a :class:`CallContext` and returns an :class:`Outcome`, or raises an
``ExecutionError``. Every task ends in an
:class:`~taskplane.models.ExecutionResult` envelope, whatever happened
(:func:`envelope` builds one for an outcome without a value), addressed to
where it ran (:class:`RunContext`). The task runner
(:mod:`taskplane.runner`), the plan layer and every handler share these
names; none of them needs the runner itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    TaskStatus,
    TaskType,
    redact_credentials,
)


@dataclass(frozen=True)
class CallContext:
    """What a handler knows about the attempt it is making.

    Attributes:
        timeout_s: Budget for this one call, in seconds (already capped by the plan deadline).
        attempt: 1 for the first call, 2 for the first retry, …
        plan_id: The plan this task belongs to, if any.
        idempotency_key: Sent to targets that understand one (same on every attempt).
        lineage: Names of the patterns this task is nested in, outermost first.
        deadline: The plan's deadline (epoch s), if any: how far ahead a wait may reach.
        slot_reserved: A rate-limit slot was booked for this attempt; take no other.
        is_cancelled: Reads the plan's cancel flag; a transport that follows a long
            remote task (A2A) polls it to cancel the remote side in time.
    """

    timeout_s: float
    attempt: int = 1
    plan_id: str | None = None
    idempotency_key: str = ""
    lineage: tuple[str, ...] = ()
    deadline: float | None = None
    slot_reserved: bool = False
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


@dataclass(frozen=True)
class BudgetRefusal:
    """No call now: *wait* for a plan budget's reservations in flight, or it is spent (*error*)."""

    wait: bool
    error: str = ""


class BudgetGuard(Protocol):
    """The plan budget an agent call draws from (see :class:`taskplane.budget.BudgetGate`)."""

    def reserve(self, task: ExecutionTask) -> Any:
        """A hold to settle, a :class:`BudgetRefusal`, or None (the budget cannot be read)."""

    def settle(self, hold: Any, *, tokens: int | None, called: bool) -> None:
        """The call ended: settle *hold* to the *tokens* it used and whether it was made."""


@dataclass
class RunContext:
    """Where a task runs: its plan, its deadline, how to see a cancel.

    Attributes:
        plan_id: The plan's id, or None for a lone task.
        deadline: Epoch seconds after which the task comes back ``timeout``.
        worker: Name of the worker running it (goes into ``metadata.worker``).
        is_cancelled: Reads the plan's cancel flag; checked before every attempt.
        lineage: Enclosing pattern names, for nested patterns.
        budget: The plan budget agent calls draw from, if the plan has one.
    """

    plan_id: str | None = None
    deadline: float | None = None
    worker: str = ""
    is_cancelled: Callable[[], bool] = lambda: False
    lineage: tuple[str, ...] = ()
    budget: BudgetGuard | None = None


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
