"""Plan semantics that need no broker: ordering, windows and how a plan ends.

The same rules run in two places: :mod:`taskplane.planstore` applies them
atomically in Redis as each task finishes (Lua), and :func:`plan_outcome`
reads them back from the recorded results when a caller collects them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from taskplane.models import (
    ExecutionPlan,
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    Strategy,
    TaskStatus,
)

#: ``weighted`` stops at the first result at least this confident.
WEIGHTED_CONFIDENCE_TARGET = 0.8


class Mode(StrEnum):
    """How a plan's tasks are put on the broker."""

    WINDOW = "window"  # a Celery group of the first N; each finishing task enqueues the next
    CHAIN = "chain"  # a Celery chain, one after another


class PlanState(StrEnum):
    """Where a plan run is."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class PlanLayout:
    """How a validated plan runs: its rule, its dispatch mode and its task order.

    Attributes:
        rule: ``all``, ``allSettled``, ``race``, ``weighted`` or ``sequential``.
        mode: Window (parallel) or chain (sequential, weighted).
        order: Task indexes in dispatch order.
        window: How many tasks may be in flight at once.
        continue_on_error: Sequential plans only.
    """

    rule: str
    mode: Mode
    order: tuple[int, ...]
    window: int
    continue_on_error: bool = False


def layout(plan: ExecutionPlan, *, default_max_concurrency: int) -> PlanLayout:
    """Work out how *plan* runs."""
    count = len(plan.tasks)
    if isinstance(plan, ParallelExecutionPlan):
        if plan.strategy is Strategy.WEIGHTED:
            return PlanLayout("weighted", Mode.CHAIN, weighted_order(plan.tasks), 1)
        window = min(plan.max_concurrency or default_max_concurrency, max(count, 1))
        return PlanLayout(plan.strategy.value, Mode.WINDOW, tuple(range(count)), window)
    return PlanLayout(
        "sequential",
        Mode.CHAIN,
        tuple(range(count)),
        1,
        continue_on_error=plan.continue_on_error,
    )


def weighted_order(tasks: list[ExecutionTask]) -> tuple[int, ...]:
    """Task indexes by ``metadata.priority``, highest first; ties keep plan order."""
    return tuple(sorted(range(len(tasks)), key=lambda i: (-tasks[i].metadata.priority, i)))


def plan_outcome(
    rule: str,
    results: list[ExecutionResult | None],
    *,
    continue_on_error: bool = False,
    order: tuple[int, ...] = (),
    winner: int | None = None,
) -> tuple[bool, list[ExecutionResult], str]:
    """Decide what a finished plan returns.

    Args:
        rule: The plan's rule (see :class:`PlanLayout`).
        results: Every task's envelope in task order (None for a task with none).
        continue_on_error: Sequential plans only.
        order: Dispatch order (``weighted`` returns what ran in this order).
        winner: Index of the task that won a ``race``, as recorded.

    Returns:
        ``(ok, returned, reason)``: whether the plan succeeded, the results the
        caller gets on success, and why it failed otherwise.
    """
    done = [r for r in results if r is not None]
    if rule == "race":
        first = results[winner] if winner is not None else None
        if first is None or not first.ok:
            first = next((r for r in done if r.ok), None)
        if first is not None:
            return True, [first], ""
        return False, done, "race: no task succeeded"
    if rule == "weighted":
        ordered = [results[i] for i in order] if order else results
        ran = [r for r in ordered if r is not None and r.status is not TaskStatus.CANCELLED]
        if any(r.ok for r in ran):
            return True, ran, ""
        return False, done, "weighted: no task succeeded"
    if rule == "allSettled" or (rule == "sequential" and continue_on_error):
        return True, done, ""
    # Name the task that failed, not a sibling cancelled because of it.
    failed = (r for r in done if not r.ok and r.status is not TaskStatus.CANCELLED)
    bad = next(failed, None) or next((r for r in done if not r.ok), None)
    if bad is None and len(done) == len(results):
        return True, done, ""
    if bad is None:
        return False, done, "plan ended before every task finished"
    return False, done, f"task {bad.task_id} ended {bad.status.value}: {bad.error}"


@dataclass(frozen=True)
class Dispatched:
    """What the plan store knows of one dispatched task: outcome recorded, lease held."""

    index: int
    has_result: bool
    leased: bool


def lost_messages(sent: Sequence[Dispatched]) -> list[int]:
    """Indexes of dispatched tasks (in dispatch order) whose broker message was lost.

    A task with neither an outcome nor a lease has not started — but a
    message still queued behind others has not started either, so that alone
    is no loss. The broker delivers a plan's messages in the order they were
    sent: a task is lost when a task sent *after* it has started (holds a
    lease or has an outcome), or when none of the plan's tasks is running at
    all, so nothing of the plan is left in flight to wait for.
    """
    if not any(task.leased for task in sent):
        return [task.index for task in sent if not task.has_result]
    last_started = max(
        (position for position, task in enumerate(sent) if task.leased or task.has_result),
    )
    return [task.index for task in sent[:last_started] if not task.has_result and not task.leased]
