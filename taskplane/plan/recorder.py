"""Recording plan members' outcomes and ending runs: what workers and clients both do.

A worker records the outcome of each task it runs; a client ends a run whose
deadline passed, or that its caller cancelled, and resends messages the
broker lost. Either way the same things follow, once, here:

* the store records the first outcome of a task (its ``task:completed`` /
  ``task:failed`` event written in the same script) and only then are the
  hooks told ``on_finished``;
* the window successor the outcome hands on is enqueued (or sent again when
  an earlier copy recorded the outcome and may have died before sending it);
* a run that ends has its unfinished tasks filled in, its waiting
  ``execute_plan`` callers answered and, for a nested pattern's run, the
  pattern task that started it finished in the parent run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskplane.aliases import Clock
from taskplane.budget import exhausted_error
from taskplane.contract import RunContext, target_metadata
from taskplane.hooks import ExecutionHooks, HookChain
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus
from taskplane.observability import tracing
from taskplane.patterns import FilePatternEngine, pattern_result
from taskplane.plan.dispatch import Dispatch
from taskplane.plan.record import PlanState, RunRecord
from taskplane.plan.store import RunStore

log = logging.getLogger(__name__)

#: Told once when a run ends in this process.
OnPlanEnd = Callable[[RunRecord], None]
#: Keeps a nested pattern's successful result for the cache.
Remember = Callable[[ExecutionTask, ExecutionResult], None]

#: What the tasks a run never finished are recorded as, by how it ended.
_UNFINISHED = {
    PlanState.TIMEOUT.value: (TaskStatus.TIMEOUT, "plan deadline passed"),
    PlanState.CANCELLED.value: (TaskStatus.CANCELLED, "plan cancelled"),
}


@dataclass(frozen=True)
class PlanReport:
    """A finished plan as its caller sees it.

    Attributes:
        plan_id: The run.
        state: Final state (completed, failed, timeout, cancelled).
        ok: Whether the plan succeeded by its rule.
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


class PlanRecorder:
    """Records outcomes, hands on successors, ends and reports runs.

    Args:
        store: Where runs live.
        dispatch: Where messages go.
        hooks: Told ``on_finished`` once per outcome recorded here.
        patterns: Pattern definitions, to judge a nested run for its pattern
            task (None: the run's own verdict stands).
        remember: Keeps a pattern task's result for the cache.
        on_plan_end: Told once of each run that ends here.
        clock: Epoch seconds.
    """

    def __init__(
        self,
        store: RunStore,
        dispatch: Dispatch,
        *,
        hooks: ExecutionHooks | None = None,
        patterns: FilePatternEngine | None = None,
        remember: Remember | None = None,
        on_plan_end: OnPlanEnd | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.store = store
        self.dispatch = dispatch
        self.hooks = hooks if hooks is not None else HookChain()
        self.patterns = patterns
        self.remember = remember
        self.on_plan_end = on_plan_end
        self.clock = clock

    # -- outcomes ---------------------------------------------------------------------------

    def finish(
        self,
        plan_id: str,
        index: int,
        task: ExecutionTask,
        ctx: RunContext,
        result: ExecutionResult,
        *,
        ran: bool,
    ) -> bool:
        """Record *result* for task *index* and hand on to its successor; True when recorded here.

        *ran*: the task had started, so the run stops counting it as running. The
        hooks hear ``on_finished`` only when the store says this call recorded the
        outcome (a reply lost to a Redis restart after the script ran reads as not
        recorded: that outcome's hook is not told).
        """
        outcome = self.store.finish(plan_id, index, result, ran=ran)
        if outcome.next_index is not None and outcome.next_task is not None:
            self.enqueue(plan_id, outcome.next_index, outcome.next_task, ctx.deadline)
        elif not outcome.recorded:
            # An outcome already stood: another copy of this task recorded it, or this very
            # call did and its reply was lost (Redis stopped after running the script), so
            # the retried call found it. The successor it handed on may never have been sent.
            self.resend_successor(plan_id, index, ctx.deadline)
        if outcome.recorded:  # after the hand-on: a slow listener holds up no successor
            self.hooks.on_finished(task, ctx, result)
        if outcome.ending and not (outcome.quiet_end and self.on_plan_end is None):
            self.settle(plan_id, ended=True)
        return outcome.recorded

    def resend_successor(self, plan_id: str, index: int, deadline: float | None) -> None:
        """Send again the window successor task *index* handed on, if it never started."""
        successor = self.store.successor_to_resend(plan_id, index)
        if successor is not None:
            self.enqueue(plan_id, successor[0], successor[1], deadline)

    def enqueue(
        self, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
    ) -> None:
        """Enqueue a task of *plan_id*, its message carrying the plan's trace context."""
        lookup = lambda: self.store.meta_field(plan_id, tracing.META_FIELD)  # noqa: E731
        with tracing.plan_scope(plan_id, lookup):
            self.dispatch.enqueue(plan_id, index, task_json, deadline)

    def recover(self, plan_id: str, deadline: float | None) -> int:
        """Resend window tasks whose messages were lost; returns how many were sent."""
        orphans = self.store.orphans(plan_id)
        for index, task_json in orphans:
            log.warning("plan %s: task %s lost its message; sending it again", plan_id, index)
            self.enqueue(plan_id, index, task_json, deadline)
        return len(orphans)

    # -- ending -----------------------------------------------------------------------------

    def end(self, plan_id: str, state: PlanState) -> None:
        """End a running plan as *state* (deadline passed, cancelled), its nested runs too."""
        for child in self.store.children(plan_id):
            self.end(child, state)
        if self.store.end(plan_id, state) is not None:
            self.settle(plan_id, ended=True)

    def settle(self, plan_id: str, *, ended: bool = False) -> None:
        """The plan has ended: record outcomes for unfinished tasks, answer waiting callers.

        *ended*: it ended just now, here (not a replay seeing it ended).
        """
        record, replies = self.store.take_replies(plan_id)
        if record is None:
            return
        if ended and self.on_plan_end is not None:
            try:
                self.on_plan_end(record)
            except Exception:
                log.exception("plan %s: on_plan_end failed", plan_id)
        if record.parent is None and not replies:  # nobody here needs the report
            self._fill_missing(record)
            return
        report = self.collect(plan_id, record)
        if record.parent is not None:
            self._resume_parent(record, report)
        for celery_id in replies:
            self.dispatch.deliver(celery_id, [r.to_json_dict() for r in report.results])

    def unfinished_outcome(
        self, record: RunRecord, *, otherwise: str = "cancelled: the plan ended"
    ) -> tuple[TaskStatus, str]:
        """What a task of the ended run *record* that never finished is recorded as.

        *otherwise*: the error for a run that failed or completed (its budget aside).
        """
        status, error = _UNFINISHED.get(record.state, (TaskStatus.CANCELLED, otherwise))
        return status, self._budget_error(record) or error

    def _fill_missing(self, record: RunRecord) -> None:
        """Record the tasks an ended plan never finished as cancelled or timed out.

        Nothing to read when *record* counts every task done: ``done`` grows only with
        an outcome recorded, so a plan whose tasks all finished is not read again.
        """
        if record.all_done:
            return
        self.store.fill_missing(record.plan_id, *self.unfinished_outcome(record))

    def _budget_error(self, record: RunRecord) -> str | None:
        """Why a failed run's unstarted tasks are cancelled, when its plan budget ran out."""
        if record.state != PlanState.FAILED.value or record.budget is None:
            return None
        holds_it = "budgetTokens" in record.fields or "budgetCalls" in record.fields
        return exhausted_error(dict(record.fields) if holds_it else self.store.meta(record.budget))

    def collect(
        self,
        plan_id: str,
        record: RunRecord | None = None,
        outcomes: list[ExecutionResult] | None = None,
    ) -> PlanReport:
        """Results of an ended plan; unfinished tasks are recorded as cancelled or timed out.

        *record*: the run's record, read once it had ended (read here when None);
        *outcomes*: every task's, read with it (:meth:`RunStore.ended_view`).
        """
        record = self.store.record(plan_id) if record is None else record
        if record is None:
            return PlanReport(plan_id, "", False, [], [], f"plan {plan_id} is unknown or expired")
        results: list[ExecutionResult | None]
        if outcomes is not None:
            results = list(outcomes)
        else:
            self._fill_missing(record)
            results = self.store.results(plan_id, record.total)
        judged = record.rule.report(record.state, results, order=record.order, winner=record.winner)
        complete = [r for r in results if r is not None]
        return PlanReport(
            plan_id, record.state, judged.ok, judged.returned, complete, judged.reason
        )

    def _resume_parent(self, record: RunRecord, report: PlanReport) -> None:
        """A nested pattern's plan ended: finish the pattern task that started it."""
        parent = record.parent
        assert parent is not None
        task = ExecutionTask.model_validate(parent["task"])
        name = record.pattern or task.target
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
        if self.remember is not None:
            self.remember(task, result)
        ctx = RunContext(
            plan_id=parent["planId"], deadline=parent["deadline"], worker=parent.get("worker", "")
        )
        self.finish(parent["planId"], int(parent["index"]), task, ctx, result, ran=True)
