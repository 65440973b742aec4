"""Plan runs in this process's memory: the twin of the Redis run store.

It keeps the same rules the Redis scripts keep — first outcome wins, leases
with owners, a window cursor that hands each finishing task its successor —
in plain Python, under one lock, on an injected clock. It backs tests of
everything built on a run store, and the behaviour suite that holds both
stores to one behaviour. Runs are kept until :meth:`MemoryRunStore.discard`;
there is no retention.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from taskplane.aliases import Clock
from taskplane.events import EventBus, finished_event
from taskplane.models import ExecutionResult, ExecutionTask
from taskplane.plan.layout import Mode, PlanLayout
from taskplane.plan.record import PlanState, RunRecord, new_fields
from taskplane.plan.rules import Progress
from taskplane.plan.store import (
    WAIT_SLICE_S,
    Dispatched,
    FinishDecision,
    RunStore,
    StartAction,
    StartDecision,
)


@dataclass
class _Run:
    fields: dict[str, str]
    tasks: list[dict[str, Any]]
    results: dict[int, ExecutionResult] = field(default_factory=dict)
    leases: dict[int, tuple[str, float]] = field(default_factory=dict)  # owner, expiry
    started: set[int] = field(default_factory=set)
    order: list[int] = field(default_factory=list)  # indexes as their outcomes were recorded
    any_ok: bool = False


class MemoryRunStore(RunStore):
    """Plan runs and their outcomes in a dict.

    Args:
        events: Where each recorded outcome's ``task:completed``/``task:failed`` goes.
        clock: Epoch seconds; leases expire by it.
    """

    def __init__(self, *, events: EventBus | None = None, clock: Clock = time.time) -> None:
        self.events = events
        self.clock = clock
        self._runs: dict[str, _Run] = {}
        self._replies: dict[str, set[str]] = {}
        self._children: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)

    def recorded_order(self, plan_id: str) -> list[int]:
        """Task indexes in the order their outcomes were recorded."""
        with self._lock:
            run = self._runs.get(plan_id)
            return [] if run is None else list(run.order)

    def _leased(self, run: _Run, index: int) -> bool:
        lease = run.leases.get(index)
        return lease is not None and lease[1] > self.clock()

    def _record(self, plan_id: str, run: _Run, index: int, result: ExecutionResult) -> bool:
        if index in run.results:
            return False
        run.results[index] = result
        run.order.append(index)
        if self.events is not None:
            worker = str(result.metadata.get("worker") or "")
            self.events.publish(*finished_event(result, plan_id=plan_id, worker=worker))
        return True

    def _close(self, run: _Run, state: str) -> None:
        run.fields.update(state=state, cancel="1")
        self._ended.notify_all()

    # -- RunStore ---------------------------------------------------------------------------

    def create(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        *,
        extra_meta: dict[str, str] | None = None,
    ) -> RunRecord | None:
        fields = new_fields(
            plan_layout,
            len(tasks),
            deadline=deadline,
            retention_s=0,
            created=self.clock(),
            extra=extra_meta,
        )
        with self._lock:
            if plan_id in self._runs:
                return None
            self._runs[plan_id] = _Run(fields, [task.to_json_dict() for task in tasks])
        return RunRecord.parse(plan_id, dict(fields))

    def discard(self, plan_id: str) -> None:
        with self._lock:
            self._runs.pop(plan_id, None)
            self._replies.pop(plan_id, None)

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
        owner = owner or uuid.uuid4().hex
        with self._lock:
            run = self._runs.get(plan_id)
            if run is not None and index in run.results:
                return StartDecision(StartAction.RECORDED)
            if run is None:
                return StartDecision(StartAction.MISSING)
            if run.fields["cancel"] == "1":
                return StartDecision(StartAction.CANCELLED)
            held = run.leases.get(index) if self._leased(run, index) else None
            if held is not None and held[0] != owner and not redelivered:
                return StartDecision(StartAction.BUSY)
            run.leases[index] = (owner, self.clock() + lease_s)
            if index not in run.started:  # a takeover reuses the dead run's count
                run.started.add(index)
                run.fields["running"] = str(int(run.fields["running"]) + 1)
            previous = None if previous_index is None else run.results.get(previous_index)
            return StartDecision(StartAction.RUN, previous=previous)

    def hold(self, plan_id: str, index: int, owner: str, lease_s: int) -> None:
        with self._lock:
            run = self._runs.get(plan_id)
            if run is not None:
                run.leases[index] = (owner or "1", self.clock() + max(int(lease_s), 1))

    def finish(
        self, plan_id: str, index: int, result: ExecutionResult, *, ran: bool
    ) -> FinishDecision:
        with self._lock:
            run = self._runs.get(plan_id)
            if run is None or not self._record(plan_id, run, index, result):
                return FinishDecision(recorded=False)
            fields = run.fields
            if ran:
                fields["running"] = str(int(fields["running"]) - 1)
            done = int(fields["done"]) + 1
            fields["done"] = str(done)
            run.any_ok = run.any_ok or result.ok
            record = RunRecord.parse(plan_id, fields)
            assert record is not None
            if record.ended:
                return FinishDecision(recorded=True)
            progress = Progress(result.ok, result.confidence, done, record.total, run.any_ok)
            ending = record.rule.ends(progress)
            if ending is not None:
                if ending == PlanState.COMPLETED and record.rule.names_winner:
                    fields["winner"] = str(index)
                self._close(run, ending)
                quiet = done >= record.total and not self._replies.get(plan_id)
                quiet = quiet and record.parent is None
                return FinishDecision(recorded=True, ending=ending, quiet_end=quiet)
            if record.mode is Mode.WINDOW and record.dispatched < record.total:
                successor = record.dispatched
                fields["next"] = str(successor + 1)
                fields[f"after:{index}"] = str(successor)
                return FinishDecision(True, None, successor, dict(run.tasks[successor]))
            return FinishDecision(recorded=True)

    def end(self, plan_id: str, state: PlanState) -> str | None:
        with self._lock:
            run = self._runs.get(plan_id)
            if run is None:
                return None
            if run.fields["state"] != PlanState.RUNNING:
                return run.fields["state"]
            self._close(run, state.value)
            return state.value

    def meta(self, plan_id: str) -> dict[str, str]:
        with self._lock:
            run = self._runs.get(plan_id)
            return {} if run is None else dict(run.fields)

    def meta_field(self, plan_id: str, name: str) -> str | None:
        return self.meta(plan_id).get(name)

    def wait(self, plan_id: str, timeout_s: float) -> bool:
        def ended() -> bool:
            run = self._runs.get(plan_id)
            return run is not None and run.fields["state"] != PlanState.RUNNING

        with self._lock:
            return self._ended.wait_for(ended, max(min(timeout_s, WAIT_SLICE_S), 0.0))

    def tasks(self, plan_id: str) -> list[ExecutionTask]:
        with self._lock:
            run = self._runs.get(plan_id)
            raw = [] if run is None else list(run.tasks)
        return [ExecutionTask.model_validate(task) for task in raw]

    def results(self, plan_id: str, count: int) -> list[ExecutionResult | None]:
        with self._lock:
            run = self._runs.get(plan_id)
            have = {} if run is None else dict(run.results)
        return [have.get(i) for i in range(count)]

    def result(self, plan_id: str, index: int) -> ExecutionResult | None:
        with self._lock:
            run = self._runs.get(plan_id)
            return None if run is None else run.results.get(index)

    def add_child(self, plan_id: str, child_id: str) -> None:
        with self._lock:
            self._children.setdefault(plan_id, set()).add(child_id)

    def children(self, plan_id: str) -> list[str]:
        with self._lock:
            return sorted(self._children.get(plan_id, ()))

    def add_reply(self, plan_id: str, celery_task_id: str) -> None:
        with self._lock:
            self._replies.setdefault(plan_id, set()).add(celery_task_id)

    def take_replies(self, plan_id: str) -> tuple[RunRecord | None, list[str]]:
        with self._lock:
            replies = sorted(self._replies.pop(plan_id, ()))
            run = self._runs.get(plan_id)
            return RunRecord.parse(plan_id, {} if run is None else dict(run.fields)), replies

    def ended_view(self, plan_id: str) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
        with self._lock:
            run = self._runs.get(plan_id)
            record = None if run is None else RunRecord.parse(plan_id, dict(run.fields))
            if run is None or record is None or not record.all_done:
                return record, None
            outcomes = [run.results[i] for i in range(record.total) if i in run.results]
        return record, outcomes if len(outcomes) == record.total else None

    def _dispatched(
        self, plan_id: str, indexes: Sequence[int]
    ) -> list[tuple[Dispatched, dict[str, Any] | None]]:
        with self._lock:
            run = self._runs.get(plan_id)
            if run is None:
                return [(Dispatched(i, False, False), None) for i in indexes]
            return [
                (
                    Dispatched(i, i in run.results, self._leased(run, i)),
                    dict(run.tasks[i]) if i < len(run.tasks) else None,
                )
                for i in indexes
            ]

    def _recorded(self, plan_id: str) -> set[int]:
        with self._lock:
            run = self._runs.get(plan_id)
            return set() if run is None else set(run.results)

    def _record_missing(
        self, plan_id: str, outcomes: Sequence[tuple[int, ExecutionResult]]
    ) -> None:
        with self._lock:
            run = self._runs.get(plan_id)
            if run is None:
                return
            for index, result in outcomes:
                self._record(plan_id, run, index, result)
