"""Running plan members on a worker: one delivery of one task, one step on.

Each delivery asks the run store whether to run (:meth:`RunStore.start`),
runs the task through the :class:`~taskplane.runner.TaskRunner` — which
either finishes it or asks to be delivered again later, holding no worker
slot meanwhile — and records the outcome through the
:class:`~taskplane.plan.recorder.PlanRecorder`. A ``pattern`` task starts its
pattern's plan as a child run instead; that run's end finishes the task.
Broker-free: messages go out through the recorder's
:class:`~taskplane.plan.dispatch.Dispatch`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from taskplane.aliases import Clock
from taskplane.budget import BudgetBackend, BudgetGate, BudgetOwners
from taskplane.contract import RunContext, envelope
from taskplane.errors import ExecutionError
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.patterns import FilePatternEngine, check_nesting
from taskplane.plan.layout import layout_for_empty
from taskplane.plan.record import BUDGET, LINEAGE, PARENT, PATTERN, PlanState
from taskplane.plan.recorder import PlanRecorder
from taskplane.plan.store import StartAction
from taskplane.runner import Attempt, Reschedule, TaskRunner

log = logging.getLogger(__name__)

#: Added to an attempt's timeout for its lease, in seconds.
LEASE_MARGIN_S = 5
#: A message sent while its run was being recorded looks for the run again this much later (s).
RUN_AWAIT_S = 0.2


class MemberRunner:
    """Takes plan members one step on, on a worker.

    Args:
        recorder: Records outcomes (its store and dispatch are used too).
        runner: Runs one task to its envelope.
        patterns: Pattern definitions; ``pattern`` tasks expand into their
            plans (None: a pattern task goes to the runner's handler).
        budgets: Where plan budgets live (None: budgets are not enforced).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        recorder: PlanRecorder,
        runner: TaskRunner,
        *,
        patterns: FilePatternEngine | None = None,
        budgets: BudgetBackend | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.recorder = recorder
        self.store = recorder.store
        self.runner = runner
        self.patterns = patterns
        self.budgets = budgets
        self._budget_owner = BudgetOwners(lambda run: self.store.meta_field(run, BUDGET))
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
        await_run: bool = False,
    ) -> ExecutionResult | Reschedule | None:
        """Take task *index* of a plan one step on.

        Returns its recorded envelope; a :class:`Reschedule` when it must be
        delivered again later (a retry, a booked rate-limit slot) — the task
        stays leased to *owner* meanwhile; or None when an earlier run's
        outcome stands (or a nested pattern's run will finish it).

        *redelivered* says the broker handed this message out before (its
        worker died), so this run takes over the task. *owner* is the Celery
        task id, the same for every delivery and retry of one message.
        *await_run*: the message went out while its run was being recorded
        (:meth:`RunStore.create_sending`), so a run not found yet is looked for
        again (a Reschedule) rather than given up.
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
        if decision.action is StartAction.RECORDED:
            log.info("plan %s task %s already recorded; not running it again", plan_id, task.id)
            self._after_replay(plan_id, index, deadline)
            return None
        if decision.action is StartAction.MISSING and await_run:
            log.info("plan %s task %s: run not recorded yet; looking again", plan_id, task.id)
            return Reschedule(RUN_AWAIT_S, attempt or Attempt(), "run not recorded yet")
        if decision.action in (StartAction.MISSING, StartAction.BUSY):
            log.warning("plan %s task %s: %s; delivery dropped", plan_id, task.id, decision.action)
            return None
        ctx = RunContext(
            plan_id=plan_id,
            deadline=deadline,
            worker=worker,
            is_cancelled=lambda: self.store.is_cancelled(plan_id),
        )
        if decision.action is StartAction.CANCELLED:
            return self._record(plan_id, index, task, ctx, self._cancelled(plan_id, task, ctx))
        if decision.previous is not None:
            task = task.model_copy(
                update={"payload": {**task.payload, "previous": previous_view(decision.previous)}}
            )
        if task.type is TaskType.PATTERN and self.patterns is not None:
            return self._expand(plan_id, index, task, ctx)
        if self.budgets is not None and task.type is TaskType.AGENT:
            held_by = self._budget_owner(plan_id)
            if held_by:
                ctx.budget = BudgetGate(self.budgets, held_by, plan_id, self.runner.hooks.emit)
        step = self.runner.step(task, ctx, attempt)
        if isinstance(step, Reschedule):
            lease_s = self.lease_s(task, deadline) + int(step.delay_s) + 1
            self.store.hold(plan_id, index, owner, lease_s)
            return step
        return self._record(plan_id, index, task, ctx, step)

    def lease_s(self, task: ExecutionTask, deadline: float | None) -> int:
        """How long one attempt at *task* can take, in whole seconds, plus a margin."""
        longest = (task.metadata.timeout or self.runner.default_timeout_ms) / 1000.0
        if deadline is not None:
            longest = min(longest, max(deadline - self.clock(), 0.0))
        return int(longest) + LEASE_MARGIN_S

    def _record(
        self,
        plan_id: str,
        index: int,
        task: ExecutionTask,
        ctx: RunContext,
        result: ExecutionResult,
        *,
        ran: bool = True,
    ) -> ExecutionResult | None:
        """*result*, when it is the task's recorded outcome; None when an earlier one stood."""
        fresh = self.recorder.finish(plan_id, index, task, ctx, result, ran=ran)
        return result if fresh else None

    def _cancelled(self, plan_id: str, task: ExecutionTask, ctx: RunContext) -> ExecutionResult:
        """The envelope of a task delivered after its run ended or was cancelled."""
        record = self.store.record(plan_id)
        status, error = TaskStatus.CANCELLED, "plan cancelled"
        if record is not None:
            status, error = self.recorder.unfinished_outcome(record, otherwise=error)
        late = ctx.deadline is not None and self.clock() >= ctx.deadline
        if status is TaskStatus.CANCELLED and late:
            status, error = TaskStatus.TIMEOUT, "plan deadline passed"
        return envelope(task, status, error=error, ctx=ctx)

    def _after_replay(self, plan_id: str, index: int, deadline: float | None) -> None:
        """A rerun must not stall its plan: resend a lost successor, answer waiting callers."""
        self.recorder.resend_successor(plan_id, index, deadline)
        record = self.store.record(plan_id)
        if record is not None and record.ended:
            self.recorder.settle(plan_id)

    # -- nested patterns --------------------------------------------------------------------

    def _expand(
        self, plan_id: str, index: int, task: ExecutionTask, ctx: RunContext
    ) -> ExecutionResult | None:
        """Start a pattern task's plan as a child run; its end finishes this task.

        Returns the task's envelope when it ends at once (cache hit, bad
        pattern), else None: nothing waits, no worker slot is held.
        """
        assert self.patterns is not None
        hit = self.runner.begin(task, ctx)
        if hit is not None:
            return self._record(plan_id, index, task, ctx, hit)
        name = task.metadata.pattern or task.target
        child_id = f"{plan_id}/{task.id}"
        record = self.store.record(plan_id)
        try:
            chain = check_nesting(record.lineage if record else (), name)
            plan = self.patterns.get(name).plan_for(task.payload, child_id)
        except ExecutionError as exc:
            failed = envelope(task, TaskStatus.FAILURE, error=str(exc), attempts=1, ctx=ctx)
            return self._record(plan_id, index, task, ctx, failed)
        parent = {
            "planId": plan_id,
            "index": index,
            "task": task.to_json_dict(),
            "deadline": ctx.deadline,
            "started": self.clock(),
            "worker": ctx.worker,
        }
        extra = {PARENT: json.dumps(parent), LINEAGE: ",".join(chain), PATTERN: name}
        if record is not None and record.budget:  # a nested run draws from its run's budget
            extra[BUDGET] = record.budget
        self.store.add_child(plan_id, child_id)
        if not plan.tasks:
            self.store.create(child_id, [], layout_for_empty(), self.clock(), extra_meta=extra)
            self.recorder.end(child_id, PlanState.COMPLETED)
            return None
        self.recorder.dispatch.submit(plan, ctx.deadline, extra)
        return None


def previous_view(result: ExecutionResult) -> dict[str, Any]:
    """What task n+1 of a sequential plan sees of task n, as ``payload.previous``."""
    return {
        "taskId": result.task_id,
        "status": result.status.value,
        "result": result.result,
        "confidence": result.confidence,
        "error": result.error,
    }
