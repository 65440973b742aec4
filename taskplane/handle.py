"""PlanHandle: a submitted plan run, waited on without polling.

``wait`` blocks on the run's ``:done`` list, ``as_completed`` reads its
``:order`` stream; both follow the same :class:`~taskplane.completions.PlanWatch`
policy as the asyncio handle (deadline, the caller's timeout, lost messages).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from taskplane.completions import CompletionReader
from taskplane.models import ExecutionResult
from taskplane.observability.tracing import PlanTrace
from taskplane.plan import RunRecord

if TYPE_CHECKING:
    from taskplane.engine import ExecutionEngine


def empty_status(plan_id: str) -> dict[str, Any]:
    """The status of a plan with no tasks (it ended at once, nothing was recorded)."""
    return {"id": plan_id, "state": "completed", "total": 0, "pending": 0, "running": 0, "done": 0}


class PlanHandle:
    """A submitted plan run: wait for it, look at it, cancel it."""

    def __init__(
        self,
        engine: ExecutionEngine,
        plan_id: str,
        *,
        empty: bool = False,
        trace: PlanTrace | None = None,
        created: RunRecord | None = None,
    ) -> None:
        self.id = plan_id
        self._engine = engine
        self._empty = empty
        #: The run's record as this handle's submission created it: the first wait
        #: starts from it instead of reading it back.
        self._created = created
        #: The plan's span: ended with the run's outcome here, or when the handle is dropped.
        self.trace = trace or PlanTrace()
        self.trace.end_when_dropped(self)

    @property
    def empty(self) -> bool:
        """True for a plan without tasks: it ended at submission, with no results."""
        return self._empty

    def wait(self, timeout: float | None = None) -> list[ExecutionResult]:
        """Block until the plan ends and return what its strategy returns.

        Args:
            timeout: Seconds to wait at most; None waits until the plan's own deadline.

        Raises:
            PlanFailedError: The plan failed, timed out or was cancelled; ``.results``
                holds every task's result in task order.
            WaitTimeoutError: *timeout* passed first (the plan keeps running).
        """
        if self._empty:
            return []
        waiter = self._engine.waiter
        record, self._created = self._created, None
        if record is None or record.deadline <= waiter.clock():  # long since: read it back
            record, watch = waiter.watch(self.id, timeout)
        else:
            watch = waiter.watch_record(record, timeout)
        current: RunRecord | None = record
        outcomes: list[ExecutionResult] | None = None
        while not waiter.follow(self.id, watch, step := watch.step(current)):
            current, outcomes = waiter.store.wait_view(self.id, step.block_s, total=record.total)
        return waiter.outcome(self.id, self.trace, (step, current), outcomes)

    def status(self) -> dict[str, Any]:
        """``{id, state, total, pending, running, done}``."""
        if self._empty:
            return empty_status(self.id)
        return self._engine.store.status(self.id)

    def cancel(self) -> None:
        """Cancel the run: unfinished tasks come back ``cancelled`` and call nothing more."""
        if not self._empty:
            self._engine.waiter.cancel(self.id)

    def as_completed(self, timeout: float | None = None) -> Iterator[ExecutionResult]:
        """Each task's envelope as its outcome is recorded, in completion order.

        Ends when the run has ended and every task was yielded exactly once
        (tasks that never ran come last, as ``cancelled`` or ``timeout``).
        A plan that fails does not raise here: its envelopes say so.

        Args:
            timeout: Seconds to wait at most; None waits until the plan's own deadline.

        Raises:
            WaitTimeoutError: *timeout* passed first (the plan keeps running).
            PlanFailedError: No such run.
        """
        if self._empty:
            return iter(())
        return self._as_completed(timeout)

    def _as_completed(self, timeout: float | None) -> Iterator[ExecutionResult]:
        waiter, store, plan_id = self._engine.waiter, self._engine.store, self.id
        record, watch = waiter.watch(plan_id, timeout)
        total = record.total
        reader = CompletionReader(store, plan_id)
        current: RunRecord | None = record
        while len(reader.seen) < total:
            if waiter.follow(plan_id, watch, step := watch.step(current)):
                report = waiter.collect(plan_id)  # records unfinished tasks
                self.trace.end(report.state, ok=report.ok)
                yield from reader.read(0)
                yield from reader.rest(store.results(plan_id, total))
                return
            yield from reader.read(step.block_s)
            current = store.record(plan_id)
