"""Running plan members and collecting plan results, over a :class:`PlanStore`.

Broker-free: the Celery tasks hand in ``enqueue`` (put the next task of a
window on the broker) and ``deliver`` (store a plan's results for a waiting
``execute_plan`` call), so this module is tested without Celery.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskplane.budget import BudgetBackend, BudgetGate, BudgetOwners, exhausted_error
from taskplane.errors import ExecutionError
from taskplane.executor import (
    Attempt,
    Reschedule,
    RunContext,
    TaskRunner,
    envelope,
    target_metadata,
)
from taskplane.hooks import ExecutionHooks, HookChain
from taskplane.models import ExecutionPlan, ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.observability import tracing
from taskplane.patterns import FilePatternEngine, check_nesting, pattern_result
from taskplane.plans import Mode, PlanLayout, PlanState, plan_outcome
from taskplane.planstore import TERMINAL, PlanStore

log = logging.getLogger(__name__)

#: Puts task *index* (given as JSON) of plan *plan_id*, with the plan's deadline, on the broker.
Enqueue = Callable[[str, int, dict[str, Any], float | None], None]
#: Stores a finished plan's results (JSON) as the result of a waiting Celery task id.
Deliver = Callable[[str, list[dict[str, Any]]], None]
#: Records and enqueues a nested pattern's plan: (plan, deadline, extra meta) → created.
Submit = Callable[[ExecutionPlan, float | None, dict[str, str]], bool]
#: Told once when a run ends in this process: its meta (``rule``, ``state``, ``created``).
OnPlanEnd = Callable[[dict[str, str]], None]

#: Added to an attempt's timeout for its lease, in seconds.
LEASE_MARGIN_S = 5

_FILL = {
    PlanState.TIMEOUT.value: (TaskStatus.TIMEOUT, "plan deadline passed"),
    PlanState.CANCELLED.value: (TaskStatus.CANCELLED, "plan cancelled"),
}


@dataclass(frozen=True)
class PlanReport:
    """A finished plan as its caller sees it.

    Attributes:
        plan_id: The run.
        state: Final state (completed, failed, timeout, cancelled).
        ok: Whether the plan succeeded by its strategy.
        returned: What a successful plan returns (``race``: the winner only).
        results: Every task's envelope in task order.
        reason: Why it failed, when it did.
    """

    plan_id: str
    state: str
    ok: bool
    returned: list[ExecutionResult]
    results: list[ExecutionResult]
    reason: str


class PlanCoordinator:
    """Runs members of plans and collects their results.

    Args:
        store: Where runs live.
        runner: Runs one task to its envelope (None for a client that only collects).
        enqueue: Puts the next task of a window on the broker.
        deliver: Hands results to ``execute_plan`` callers waiting on a run.
        patterns: Pattern definitions; ``pattern`` tasks expand into their plans.
        submit: Records and enqueues a nested pattern's plan.
        hooks: Told ``on_finished`` once per outcome the store records here (the
            runner's hooks when omitted).
        budgets: Where plan budgets live (None: budgets are not enforced).
        on_plan_end: Told once of each run that ends here (the last outcome
            recorded here, or ended here by its deadline or a cancel).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: PlanStore,
        runner: TaskRunner | None,
        *,
        enqueue: Enqueue,
        deliver: Deliver | None = None,
        patterns: FilePatternEngine | None = None,
        submit: Submit | None = None,
        hooks: ExecutionHooks | None = None,
        budgets: BudgetBackend | None = None,
        on_plan_end: OnPlanEnd | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.runner = runner
        self.enqueue = enqueue
        self.deliver = deliver
        self.patterns = patterns
        self.submit = submit
        if hooks is None:
            hooks = runner.hooks if runner is not None else HookChain()
        self.hooks = hooks
        self.budgets = budgets
        self._budget_owner = BudgetOwners(lambda run: store.meta_field(run, "budget"))
        self.on_plan_end = on_plan_end
        self.clock = clock

    def run_member(
        self,
        plan_id: str,
        index: int,
        task_json: dict[str, Any],
        *,
        previous_index: int | None = None,
        deadline: float | None = None,
        worker: str = "",
        redelivered: bool = False,
        attempt: Attempt | None = None,
        owner: str = "",
    ) -> ExecutionResult | Reschedule | None:
        """Take task *index* of a plan one step on.

        Returns its recorded envelope; a :class:`Reschedule` when it must be
        delivered again later (a retry, a booked rate-limit slot) — the task
        stays leased to *owner* meanwhile; or None when an earlier run's
        outcome stands (or a nested pattern's run will finish it).

        *redelivered* says the broker handed this message out before (its
        worker died), so this run takes over the task. *owner* is the Celery
        task id, the same for every delivery and retry of one message.
        """
        task = ExecutionTask.model_validate(task_json)
        decision = self.store.start(
            plan_id,
            index,
            previous_index,
            lease_s=self.lease_s(task, deadline),
            redelivered=redelivered,
            owner=owner,
        )
        log.debug("plan %s task %s: %s", plan_id, index, decision.action)
        if decision.action == "recorded":
            log.info("plan %s task %s already recorded; not running it again", plan_id, task.id)
            self._after_replay(plan_id, index, deadline)
            return None
        if decision.action in ("missing", "busy"):
            log.warning("plan %s task %s: %s; delivery dropped", plan_id, task.id, decision.action)
            return None
        ctx = RunContext(
            plan_id=plan_id,
            deadline=deadline,
            worker=worker,
            is_cancelled=lambda: self.store.is_cancelled(plan_id),
        )
        if decision.action == "cancelled":
            meta = self.store.meta(plan_id)
            state = meta.get("state", "")
            status, error = _FILL.get(state, (TaskStatus.CANCELLED, "plan cancelled"))
            error = self._budget_error(meta) or error
            if status is TaskStatus.CANCELLED and deadline is not None and self.clock() >= deadline:
                status, error = TaskStatus.TIMEOUT, "plan deadline passed"
            result = envelope(task, status, error=error, ctx=ctx)
            fresh = self._finish(plan_id, index, task, ctx, result, ran=False)
            return result if fresh else None
        if decision.previous is not None:
            task = task.model_copy(
                update={"payload": {**task.payload, "previous": previous_view(decision.previous)}}
            )
        if task.type is TaskType.PATTERN and self.patterns is not None:
            return self._expand(plan_id, index, task, ctx)
        assert self.runner is not None, "a collecting-only coordinator cannot run tasks"
        if self.budgets is not None and task.type is TaskType.AGENT:
            held_by = self._budget_owner(plan_id)
            if held_by:
                ctx.budget = BudgetGate(self.budgets, held_by, plan_id, self.runner.hooks.emit)
        step = self.runner.step(task, ctx, attempt)
        if isinstance(step, Reschedule):
            lease_s = self.lease_s(task, deadline) + int(step.delay_s) + 1
            self.store.hold(plan_id, index, owner, lease_s)
            return step
        fresh = self._finish(plan_id, index, task, ctx, step, ran=True)
        return step if fresh else None

    def _finish(
        self,
        plan_id: str,
        index: int,
        task: ExecutionTask,
        ctx: RunContext,
        result: ExecutionResult,
        *,
        ran: bool,
    ) -> bool:
        """Record *result* for task *index*, hand on to its successor; True when recorded here.

        The one finished-task path of a plan member: the store records the first
        outcome (writing its ``task:completed``/``task:failed`` event in the same
        script), and only when it reports this call recorded it are the hooks told
        ``on_finished``, once (a reply lost to a Redis restart after the script ran
        reads as not recorded: that outcome's hook is not told).
        """
        deadline = ctx.deadline
        outcome = self.store.finish(plan_id, index, result, ran=ran)
        if outcome.next_index is not None and outcome.next_task is not None:
            self._enqueue(plan_id, outcome.next_index, outcome.next_task, deadline)
        elif not outcome.recorded:
            # An outcome already stood: another copy of this task recorded it, or this very
            # call did and its reply was lost (Redis stopped after running the script), so
            # the retried call found it. The successor it handed on may never have been sent.
            successor = self.store.successor_to_resend(plan_id, index)
            if successor is not None:
                self._enqueue(plan_id, successor[0], successor[1], deadline)
        if outcome.recorded:  # after the hand-on: a slow listener holds up no successor
            self.hooks.on_finished(task, ctx, result)
        if outcome.ending:
            self._settle(plan_id, ended=True)
        return outcome.recorded

    # -- nested patterns --------------------------------------------------------

    def _expand(
        self, plan_id: str, index: int, task: ExecutionTask, ctx: RunContext
    ) -> ExecutionResult | None:
        """Start a pattern task's plan as a child run; its end finishes this task.

        Returns the task's envelope when it ends at once (cache hit, bad
        pattern), else None: nothing waits, no worker slot is held.
        """
        assert self.runner is not None and self.patterns is not None and self.submit is not None
        hit = self.runner.begin(task, ctx)
        if hit is not None:
            fresh = self._finish(plan_id, index, task, ctx, hit, ran=True)
            return hit if fresh else None
        name = task.metadata.pattern or task.target
        child_id = f"{plan_id}/{task.id}"
        try:
            meta = self.store.meta(plan_id)
            lineage = tuple(p for p in meta.get("lineage", "").split(",") if p)
            chain = check_nesting(lineage, name)
            plan = self.patterns.get(name).plan_for(task.payload, child_id)
        except ExecutionError as exc:
            result = envelope(task, TaskStatus.FAILURE, error=str(exc), attempts=1, ctx=ctx)
            fresh = self._finish(plan_id, index, task, ctx, result, ran=True)
            return result if fresh else None
        parent = {
            "planId": plan_id,
            "index": index,
            "task": task.to_json_dict(),
            "deadline": ctx.deadline,
            "started": self.clock(),
            "worker": ctx.worker,
        }
        extra = {"parent": json.dumps(parent), "lineage": ",".join(chain), "pattern": name}
        if meta.get("budget"):  # a nested run draws from the budget of the run it is in
            extra["budget"] = meta["budget"]
        self.store.add_child(plan_id, child_id)
        if not plan.tasks:
            self.store.create(child_id, [], layout_for_empty(), self.clock(), extra_meta=extra)
            self.end(child_id, PlanState.COMPLETED)
            return None
        self.submit(plan, ctx.deadline, extra)
        return None

    def _resume_parent(self, meta: dict[str, str], report: PlanReport) -> None:
        """A nested pattern's plan ended: finish the pattern task that started it."""
        parent = json.loads(meta["parent"])
        task = ExecutionTask.model_validate(parent["task"])
        name = meta.get("pattern", task.target)
        error: str | None
        if report.state in (PlanState.TIMEOUT.value, PlanState.CANCELLED.value):
            status = TaskStatus(report.state)
            value, confidence, error = None, None, f"pattern {name}: {report.reason}"
        elif self.patterns is None:
            status, value, confidence, error = TaskStatus.FAILURE, None, None, report.reason
        else:
            status, value, confidence, error = pattern_result(
                self.patterns.get(name), report.results, ok=report.ok, reason=report.reason
            )
        meta_out = target_metadata(task)
        meta_out.update(
            cached=False,
            attempts=1,
            worker=parent.get("worker", ""),
            planId=parent["planId"],
            childPlanId=report.plan_id,
        )
        result = ExecutionResult(
            task_id=task.id,
            status=status,
            result=value,
            error=error,
            confidence=confidence,
            execution_time=(self.clock() - float(parent["started"])) * 1000.0,
            metadata=meta_out,
        )
        if self.runner is not None:
            self.runner.remember(task, result)
        ctx = RunContext(
            plan_id=parent["planId"], deadline=parent["deadline"], worker=parent.get("worker", "")
        )
        self._finish(parent["planId"], int(parent["index"]), task, ctx, result, ran=True)

    def lease_s(self, task: ExecutionTask, deadline: float | None) -> int:
        """How long one attempt at *task* can take, in whole seconds, plus a margin."""
        runner = self.runner
        assert runner is not None, "a collecting-only coordinator cannot run tasks"
        longest = (task.metadata.timeout or runner.default_timeout_ms) / 1000.0
        if deadline is not None:
            longest = min(longest, max(deadline - self.clock(), 0.0))
        return int(longest) + LEASE_MARGIN_S

    def _after_replay(self, plan_id: str, index: int, deadline: float | None) -> None:
        """A rerun must not stall its plan: resend a lost successor, answer waiting callers."""
        successor = self.store.successor_to_resend(plan_id, index)
        if successor is not None:
            self._enqueue(plan_id, successor[0], successor[1], deadline)
        if self.store.meta(plan_id).get("state") in TERMINAL:
            self._settle(plan_id)

    def _settle(self, plan_id: str, *, ended: bool = False) -> None:
        """The plan has ended: record outcomes for unfinished tasks, answer waiting callers.

        *ended*: it ended just now, here (not a replay seeing it ended).
        """
        meta = self.store.meta(plan_id)
        if ended and self.on_plan_end is not None:
            try:
                self.on_plan_end(meta)
            except Exception:
                log.exception("plan %s: on_plan_end failed", plan_id)
        replies = [] if self.deliver is None else self.store.take_replies(plan_id)
        if not meta.get("parent") and not replies:  # nobody here needs the report
            self._fill_missing(plan_id, meta)
            return
        report = self.collect(plan_id)
        if meta.get("parent"):
            self._resume_parent(meta, report)
        if self.deliver is not None:
            for celery_id in replies:
                self.deliver(celery_id, [r.to_json_dict() for r in report.results])

    def recover(self, plan_id: str, deadline: float | None) -> int:
        """Resend window tasks whose messages were lost; returns how many were sent."""
        orphans = self.store.orphans(plan_id)
        for index, task_json in orphans:
            log.warning("plan %s: task %s lost its message; sending it again", plan_id, index)
            self._enqueue(plan_id, index, task_json, deadline)
        return len(orphans)

    def _enqueue(
        self, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
    ) -> None:
        """Enqueue a task of *plan_id*, its message carrying the plan's trace context."""
        lookup = lambda: self.store.meta_field(plan_id, tracing.META_FIELD)  # noqa: E731
        with tracing.plan_scope(plan_id, lookup):
            self.enqueue(plan_id, index, task_json, deadline)

    def end(self, plan_id: str, state: PlanState) -> None:
        """End a running plan as *state* (deadline passed, cancelled), its nested runs too."""
        for child in self.store.children(plan_id):
            self.end(child, state)
        if self.store.end(plan_id, state) is not None:
            self._settle(plan_id, ended=True)

    def _fill_missing(self, plan_id: str, meta: dict[str, str]) -> None:
        """Record the tasks an ended plan never finished as cancelled or timed out.

        Nothing to read when *meta* counts every task done: ``done`` grows only with
        an outcome recorded, so a plan whose tasks all finished is not read again.
        """
        if int(meta.get("done") or 0) >= int(meta.get("n") or 0):
            return
        status, error = _FILL.get(
            meta.get("state", ""), (TaskStatus.CANCELLED, "cancelled: the plan ended")
        )
        error = self._budget_error(meta) or error
        self.store.fill_missing(plan_id, status, error)

    def _budget_error(self, meta: dict[str, str]) -> str | None:
        """Why a failed run's unstarted tasks are cancelled, when its plan budget ran out."""
        held_by = meta.get("budget")
        if meta.get("state") != PlanState.FAILED.value or not held_by:
            return None
        holds_it = "budgetTokens" in meta or "budgetCalls" in meta
        return exhausted_error(meta if holds_it else self.store.meta(held_by))

    def collect(self, plan_id: str, meta: dict[str, str] | None = None) -> PlanReport:
        """Results of an ended plan; unfinished tasks are recorded as cancelled or timed out.

        *meta*: the run's meta hash, read once it had ended (read here when None).
        """
        meta = self.store.meta(plan_id) if meta is None else meta
        state = meta.get("state", "")
        self._fill_missing(plan_id, meta)
        count = int(meta.get("n", "0"))
        results = self.store.results(plan_id, count)
        order = tuple(int(i) for i in meta.get("order", "").split(",") if i)
        winner = int(meta["winner"]) if meta.get("winner") else None
        ok, returned, reason = plan_outcome(
            meta.get("rule", "all"),
            results,
            continue_on_error=meta.get("cont") == "1",
            order=order,
            winner=winner,
        )
        if state == PlanState.TIMEOUT.value and meta.get("rule") != "allSettled":
            ok, reason = False, reason or "plan deadline passed"
        if state == PlanState.CANCELLED.value:
            ok, reason = False, "plan cancelled"
        complete = [r for r in results if r is not None]
        return PlanReport(plan_id, state, ok, returned, complete, reason)


def previous_view(result: ExecutionResult) -> dict[str, Any]:
    """What task n+1 of a sequential plan sees of task n, as ``payload.previous``."""
    return {
        "taskId": result.task_id,
        "status": result.status.value,
        "result": result.result,
        "confidence": result.confidence,
        "error": result.error,
    }


def layout_for_empty() -> PlanLayout:
    """The layout of a plan with no tasks (a pattern whose template has none)."""
    return PlanLayout("allSettled", Mode.WINDOW, (), 0)
