"""How a validated plan runs: its rule, how its tasks go on the broker, in what order."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from taskplane.models import ExecutionPlan, ExecutionTask, ParallelExecutionPlan, Strategy
from taskplane.plan.rules import AllSettled, Rule, Sequential, Weighted, rule_named


class Mode(StrEnum):
    """How a plan's tasks are put on the broker."""

    WINDOW = "window"  # the first N as single messages; each finishing task enqueues the next
    CHAIN = "chain"  # a Celery chain, one after another


@dataclass(frozen=True)
class PlanLayout:
    """How a validated plan runs: its rule, its dispatch mode and its task order.

    Attributes:
        rule: How the plan ends and what it returns (:mod:`taskplane.plan.rules`).
        mode: Window (parallel) or chain (sequential, weighted).
        order: Task indexes in dispatch order.
        window: How many tasks may be in flight at once.
    """

    rule: Rule
    mode: Mode
    order: tuple[int, ...]
    window: int


def layout(plan: ExecutionPlan, *, default_max_concurrency: int) -> PlanLayout:
    """Work out how *plan* runs."""
    count = len(plan.tasks)
    if isinstance(plan, ParallelExecutionPlan):
        if plan.strategy is Strategy.WEIGHTED:
            return PlanLayout(Weighted(), Mode.CHAIN, weighted_order(plan.tasks), 1)
        window = min(plan.max_concurrency or default_max_concurrency, max(count, 1))
        return PlanLayout(rule_named(plan.strategy.value), Mode.WINDOW, tuple(range(count)), window)
    rule = Sequential(continue_on_error=plan.continue_on_error)
    return PlanLayout(rule, Mode.CHAIN, tuple(range(count)), 1)


def weighted_order(tasks: list[ExecutionTask]) -> tuple[int, ...]:
    """Task indexes by ``metadata.priority``, highest first; ties keep plan order."""
    return tuple(sorted(range(len(tasks)), key=lambda i: (-tasks[i].metadata.priority, i)))


def layout_for_empty() -> PlanLayout:
    """The layout of a plan with no tasks (a pattern whose template has none)."""
    return PlanLayout(AllSettled(), Mode.WINDOW, (), 0)
