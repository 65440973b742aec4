"""Waiting on a plan run from a client: the client's side of a plan's life.

A client that waits keeps its run going when the cluster cannot: it ends a
run whose deadline passed, resends messages the broker lost (no progress for
longer than a redelivery, or Redis restarted under the run), and collects
the results once the run has ended. The waiting policy itself, with an
injected clock, is :class:`taskplane.completions.PlanWatch`.
"""

from __future__ import annotations

from collections.abc import Callable

from taskplane.aliases import Clock
from taskplane.completions import PlanWatch, Step, StepKind, unknown_plan
from taskplane.errors import PlanFailedError, WaitTimeoutError
from taskplane.models import ExecutionResult
from taskplane.observability.tracing import PlanTrace
from taskplane.plan.record import PlanState, RunRecord
from taskplane.plan.recorder import PlanRecorder, PlanReport


class PlanWaiter:
    """A client's side of its runs.

    Args:
        recorder: Ends runs, resends lost messages, collects results.
        stall_s: No progress for this long means messages were lost.
        server_started_at: When the Redis server started (epoch s; None when unknown).
        clock: Epoch seconds.
    """

    def __init__(
        self,
        recorder: PlanRecorder,
        *,
        stall_s: float,
        server_started_at: Callable[[], float | None],
        clock: Clock,
    ) -> None:
        self.recorder = recorder
        self.store = recorder.store
        self.stall_s = stall_s
        self.server_started_at = server_started_at
        self.clock = clock

    def watch(self, plan_id: str, timeout: float | None) -> tuple[RunRecord, PlanWatch]:
        """The run's record and a waiting policy for it.

        Raises:
            PlanFailedError: No such run (never submitted, or expired).
        """
        record = self.store.record(plan_id)
        if record is None:
            raise unknown_plan(plan_id)
        return record, self.watch_record(record, timeout)

    def watch_record(self, record: RunRecord, timeout: float | None) -> PlanWatch:
        """A waiting policy for the run *record*, read by the caller."""
        return PlanWatch(record, timeout_s=timeout, stall_s=self.stall_s, clock=self.clock)

    def follow(self, plan_id: str, watch: PlanWatch, step: Step) -> bool:
        """Act on *step* for the client's side of a run; True when the run has ended.

        Resends lost messages when asked to, ends a run whose deadline passed.

        Raises:
            WaitTimeoutError: The caller's timeout passed (the run keeps going).
        """
        restarted = False
        if watch.wants_server_start():  # quiet for a while: did Redis restart under the run?
            started_at = self.server_started_at()
            restarted = started_at is not None and watch.restarted(started_at)
        if step.recover or restarted:
            self.recorder.recover(plan_id, watch.deadline)
        if step.kind is StepKind.DEADLINE:
            self.recorder.end(plan_id, PlanState.TIMEOUT)
        elif step.kind is StepKind.GIVE_UP:
            raise WaitTimeoutError(f"plan {plan_id} still running after {watch.timeout_s}s")
        return step.kind is not StepKind.BLOCK

    def outcome(
        self,
        plan_id: str,
        trace: PlanTrace | None = None,
        ended: tuple[Step, RunRecord | None] | None = None,
        outcomes: list[ExecutionResult] | None = None,
    ) -> list[ExecutionResult]:
        """What an ended run returns by its rule; ends the run's *trace* span.

        *ended*: the waiter's last step and the record it was taken on; when
        that step saw the run ended, the record (and the *outcomes* read with
        it) are not read again.

        Raises:
            PlanFailedError: The run failed, timed out or was cancelled.
        """
        record: RunRecord | None = None
        if ended is not None and ended[0].kind is StepKind.ENDED:
            record = ended[1]
        else:  # read both again
            outcomes = None
        report = self.recorder.collect(plan_id, record, outcomes)
        if trace is not None:
            trace.end(report.state, ok=report.ok)
        if not report.ok:
            raise PlanFailedError(
                f"plan {plan_id} {report.state}: {report.reason}", report.results, plan_id
            )
        return report.returned

    def collect(self, plan_id: str, record: RunRecord | None = None) -> PlanReport:
        """The ended run's report (unfinished tasks recorded as cancelled or timed out)."""
        return self.recorder.collect(plan_id, record)

    def cancel(self, plan_id: str) -> None:
        """Cancel a run and its nested runs: unfinished tasks come back ``cancelled``."""
        self.recorder.end(plan_id, PlanState.CANCELLED)
