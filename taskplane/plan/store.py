"""What every plan run store does, and the parts all stores share.

A run store keeps plan runs: each run's tasks, its record
(:class:`~taskplane.plan.record.RunRecord`) and each task's outcome, recorded
once — the first outcome of (run, task) wins and every later one finds it.
Two stores implement :class:`RunStore`: :class:`~taskplane.plan.redis_store.RedisRunStore`,
shared by every process of a deployment, and
:class:`~taskplane.plan.memory_store.MemoryRunStore`, its in-process twin.
One behaviour suite runs against both.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskplane.contract import envelope
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus
from taskplane.plan.layout import Mode, PlanLayout
from taskplane.plan.record import PlanState, RunRecord

#: Longest single blocking wait; callers loop, re-checking the run's state.
WAIT_SLICE_S = 5.0


class StartAction(StrEnum):
    """What a delivered task should do (see :meth:`RunStore.start`)."""

    RUN = "run"  # go ahead; the task is leased to the caller
    RECORDED = "recorded"  # an outcome stands already: replay it, run nothing
    CANCELLED = "cancelled"  # the run has ended or was cancelled: record the task as such
    BUSY = "busy"  # another copy of the task holds its lease: drop this delivery
    MISSING = "missing"  # no such run (expired, discarded): drop this delivery


@dataclass(frozen=True)
class StartDecision:
    """What a task about to run should do.

    Attributes:
        action: See :class:`StartAction`.
        previous: The previous task's outcome, for sequential plans (``run`` only).
    """

    action: StartAction
    previous: ExecutionResult | None = None


@dataclass(frozen=True)
class FinishDecision:
    """What recording an outcome led to.

    Attributes:
        recorded: False when an earlier outcome of the same task already stood.
        ending: The plan's final state if this outcome ended it.
        next_index: Index of the task the caller must enqueue next (window mode).
        next_task: That task as JSON.
        quiet_end: The run ended with every task done, no ``execute_plan`` reply owed
            and no parent run to resume: nothing is left to settle.
    """

    recorded: bool
    ending: str | None = None
    next_index: int | None = None
    next_task: dict[str, Any] | None = None
    quiet_end: bool = False


@dataclass(frozen=True)
class Dispatched:
    """What a store knows of one dispatched task: outcome recorded, lease held."""

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


class RunStore(ABC):
    """Plan runs and their outcomes.

    Subclasses implement the primitives; the recovery rules built on them
    (lost messages, lost successors, filling in an ended run) live here once.
    """

    # -- primitives -----------------------------------------------------------------------

    @abstractmethod
    def create(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        *,
        extra_meta: dict[str, str] | None = None,
    ) -> RunRecord | None:
        """Record a new run and return its record; None when *plan_id* already names
        one (attach instead).

        *extra_meta* adds fields to the run's record (see
        :func:`taskplane.plan.record.new_fields`).
        """

    def create_sending(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        send: Callable[[], None],
        *,
        extra_meta: dict[str, str] | None = None,
        fresh: bool = False,
    ) -> RunRecord | None:
        """:meth:`create` a run and, when it is new, *send* its messages.

        When *send* raises, the run is discarded and the exception propagates.
        *fresh*: *plan_id* was generated for this run, so no other run can hold
        it; a store may then overlap the two (the Redis store sends while its
        script runs), and a worker can be handed a message before the run is
        visible: such messages are marked (*sent_early* in
        :func:`taskplane.tasks.canvas.member`). Here the run is always recorded first.
        """
        record = self.create(plan_id, tasks, plan_layout, deadline, extra_meta=extra_meta)
        if record is not None:
            try:
                send()
            except BaseException:
                self.discard(plan_id)
                raise
        return record

    @abstractmethod
    def discard(self, plan_id: str) -> None:
        """Forget a run entirely (used when its tasks could not be enqueued)."""

    @abstractmethod
    def start(
        self,
        plan_id: str,
        index: int,
        previous_index: int | None = None,
        *,
        lease_s: int = 3600,
        redelivered: bool = False,
        owner: str = "",
    ) -> StartDecision:
        """Called before a task runs: replay, refuse (cancelled, busy) or go ahead.

        Going ahead takes a lease of *lease_s* seconds on the task for *owner*
        (the Celery task id), so a second copy of the same task (a window
        successor sent twice) is dropped (``busy``) while the first runs. The
        owner's own later deliveries (its retries) and a *redelivered* message
        — the broker gave it back because its worker died — carry on and
        take the lease over.
        """

    @abstractmethod
    def hold(self, plan_id: str, index: int, owner: str, lease_s: int) -> None:
        """Keep task *index* leased to *owner* for *lease_s* more seconds (it waits to retry).

        While the lease lives, the task is not taken for lost (see :meth:`orphans`).
        """

    @abstractmethod
    def finish(
        self, plan_id: str, index: int, result: ExecutionResult, *, ran: bool
    ) -> FinishDecision:
        """Record *result* for task *index* (first outcome wins) and advance the run.

        *ran*: the task had started (counted as running), so it stops counting.
        """

    @abstractmethod
    def end(self, plan_id: str, state: PlanState) -> str | None:
        """End a running run as *state* (timeout, cancelled); returns its final state.

        None when there is no such run; a run that had ended keeps its state.
        """

    @abstractmethod
    def meta(self, plan_id: str) -> dict[str, str]:
        """The run's record as stored ({} when there is no such run)."""

    @abstractmethod
    def meta_field(self, plan_id: str, name: str) -> str | None:
        """One field of the run's record (None when unset)."""

    @abstractmethod
    def wait(self, plan_id: str, timeout_s: float) -> bool:
        """Block until the run ends or *timeout_s* passes (at most a slice); True when it ended."""

    @abstractmethod
    def tasks(self, plan_id: str) -> list[ExecutionTask]:
        """The run's tasks in plan order."""

    @abstractmethod
    def results(self, plan_id: str, count: int) -> list[ExecutionResult | None]:
        """Recorded outcomes in task order (None where a task has none yet)."""

    @abstractmethod
    def result(self, plan_id: str, index: int) -> ExecutionResult | None:
        """Task *index*'s recorded outcome, or None."""

    @abstractmethod
    def ended_view(self, plan_id: str) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
        """The run's record and, when it counts every task done, their outcomes in task
        order (else None), read in one step: what a waiter collects once the run ended."""

    @abstractmethod
    def add_child(self, plan_id: str, child_id: str) -> None:
        """Remember that *child_id* runs a nested pattern of *plan_id*."""

    @abstractmethod
    def children(self, plan_id: str) -> list[str]:
        """Runs of nested patterns started by *plan_id*'s tasks."""

    @abstractmethod
    def add_reply(self, plan_id: str, celery_task_id: str) -> None:
        """Remember a Celery task id that waits for this run's results."""

    @abstractmethod
    def take_replies(self, plan_id: str) -> tuple[RunRecord | None, list[str]]:
        """The run's record, and the Celery task ids waiting for it (each returned once),
        read in one step."""

    @abstractmethod
    def _dispatched(
        self, plan_id: str, indexes: Sequence[int]
    ) -> list[tuple[Dispatched, dict[str, Any] | None]]:
        """Outcome recorded and lease held for each of *indexes*, with its task JSON."""

    @abstractmethod
    def _recorded(self, plan_id: str) -> set[int]:
        """The indexes of the tasks that have an outcome (none is parsed)."""

    @abstractmethod
    def _record_missing(
        self, plan_id: str, outcomes: Sequence[tuple[int, ExecutionResult]]
    ) -> None:
        """Record each outcome unless one stands for its task, in one step."""

    # -- built on them ----------------------------------------------------------------------

    def record(self, plan_id: str) -> RunRecord | None:
        """The run's record, typed (None when there is no such run)."""
        return RunRecord.parse(plan_id, self.meta(plan_id))

    def wait_view(
        self, plan_id: str, timeout_s: float, *, total: int
    ) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
        """:meth:`wait`, then the run's record and, once it ended with every task done,
        the outcomes of its *total* tasks (:meth:`ended_view`)."""
        if self.wait(plan_id, timeout_s):
            return self.ended_view(plan_id)
        return self.record(plan_id), None

    def is_cancelled(self, plan_id: str) -> bool:
        """The run's cancel flag."""
        return self.meta_field(plan_id, "cancel") == "1"

    def status(self, plan_id: str) -> dict[str, Any]:
        """Counts of the run's tasks: pending, running, done; and its state ({} if none)."""
        record = self.record(plan_id)
        return {} if record is None else record.status()

    def successor_to_resend(self, plan_id: str, index: int) -> tuple[int, dict[str, Any]] | None:
        """The window successor task *index* handed on, if it never started.

        A worker can die between recording an outcome and enqueueing the next
        task; the rerun of the same task resends that successor.
        """
        record = self.record(plan_id)
        if record is None or record.ended or index not in record.successors:
            return None
        [(state, task)] = self._dispatched(plan_id, [record.successors[index]])
        if state.has_result or state.leased or task is None:
            return None
        return state.index, task

    def orphans(self, plan_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Dispatched window tasks whose broker message was lost (see :func:`lost_messages`).

        Such a message was lost by the broker, or by a worker that died at the
        wrong instant; a message merely queued behind others is not. Sending
        a lost one again is safe, since the first recorded outcome wins.
        """
        record = self.record(plan_id)
        if record is None or record.ended or record.mode is not Mode.WINDOW:
            return []
        states = self._dispatched(plan_id, record.sent)
        lost = set(lost_messages([state for state, _ in states]))
        return [
            (state.index, task)
            for state, task in states
            if state.index in lost and task is not None
        ]

    def fill_missing(self, plan_id: str, status: TaskStatus, error: str) -> None:
        """Record *status* for every task that has no outcome yet (first outcome still wins)."""
        tasks = self.tasks(plan_id)
        have = self._recorded(plan_id)
        missing = []
        for index, task in enumerate(tasks):
            if index not in have:
                filled = envelope(task, status, error=error)
                filled.metadata["planId"] = plan_id
                missing.append((index, filled))
        if missing:
            self._record_missing(plan_id, missing)
