"""The Celery tasks: thin wrappers that validate, get the runtime and call the domain.

* ``taskplane.run_task`` — one task of a plan (every task runs as one), shown
  in Flower and logs under a readable name (``agent:reviewer``). A task that
  must wait — a retry's backoff or ``Retry-After``, a booked rate-limit slot —
  is rescheduled with Celery's own retry and a countdown, so Flower and
  Celery's events show RETRY and no worker slot is held while it waits; a
  failed or timed-out task ends in FAILURE, a cancelled one in REVOKED (see
  :mod:`taskplane.tasks.states`);
* ``taskplane.check_anomalies`` / ``taskplane.prune_tracking`` — Celery beat jobs;
* ``taskplane.execute_plan`` — a whole plan sent by name from any service::

      app.send_task("taskplane.execute_plan", [plan_json]).get()

  returns the list of every task's result (JSON, task order). Invalid plans
  fail the call with a ``ValidationError`` naming the fields.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

from celery import Celery, Task
from celery.exceptions import Ignore
from celery.signals import worker_ready, worker_shutdown

from taskplane.config import COUNTDOWN_MARGIN_S, MIN_COUNTDOWN_CAP_S, Settings
from taskplane.executor import Attempt, Reschedule
from taskplane.models import ExecutionPlan, TaskStatus, parse_plan
from taskplane.observability import tracing
from taskplane.observability.celery_view import kwargs_repr, shadow_name
from taskplane.runtime import WorkerRuntime, close_runtimes, runtime_for
from taskplane.tasks.canvas import submit_plan
from taskplane.tasks.dispatch import CeleryDispatch
from taskplane.tasks.redelivery import RedeliverySweeper, needs_sweeper
from taskplane.tasks.states import (
    Finished,
    Rescheduled,
    TaskCancelled,
    TaskFailed,
    continue_chain,
)


def submit_child(
    app: Celery, plan: ExecutionPlan, deadline: float | None, extra_meta: dict[str, str]
) -> bool:
    """Record and enqueue a nested pattern's plan from inside a worker."""
    runtime = worker_runtime(app)
    return submit_plan(
        app,
        runtime.store,
        plan,
        runtime.settings,
        deadline=deadline,
        extra_meta=extra_meta,
        agent_policies=runtime.agent_policies,
    )


def worker_runtime(app: Celery, worker: str = "") -> WorkerRuntime:
    """The runtime of this worker process for *app*."""
    from taskplane.tasks.app import settings_of

    return runtime_for(
        id(app),
        lambda: WorkerRuntime.build(
            settings_of(app),
            dispatch=CeleryDispatch(app, submit=partial(submit_child, app)),
            worker=worker,
        ),
    )


def capped_countdown_s(delay_s: float, settings: Settings, task: dict[str, Any]) -> float:
    """The countdown for a reschedule of *delay_s*, kept short enough to be safe.

    On the Redis transport a worker holds a message with a countdown
    unacknowledged until it runs, and the visibility timeout counts from
    delivery: a countdown plus the attempt after it must end before that, or
    the message is redelivered and runs twice. A longer wait is made of
    several shorter countdowns (the runner re-checks ``not_before``). On a
    RabbitMQ quorum queue a countdown goes through native delayed delivery,
    which counts whole seconds (and refuses less than one): it is rounded up.
    """
    timeout_ms = (task.get("metadata") or {}).get("timeout") or settings.default_timeout
    cap = settings.effective_visibility_timeout_s - float(timeout_ms) / 1000.0 - COUNTDOWN_MARGIN_S
    countdown = min(max(delay_s, 0.0), max(cap, MIN_COUNTDOWN_CAP_S))
    if settings.rabbitmq_queue_type == "quorum" and countdown > 0:
        return float(math.ceil(countdown))
    return countdown


def register_tasks(app: Celery) -> None:
    """Register taskplane's tasks on *app*."""

    @app.task(
        name="taskplane.run_task",
        bind=True,
        ignore_result=True,
        shared=False,
        max_retries=None,
        throws=(TaskFailed,),
    )
    def run_task(
        self: Task,
        plan_id: str,
        index: int,
        task: dict[str, Any],
        deadline: float | None = None,
        previous_index: int | None = None,
        attempt: dict[str, Any] | None = None,
    ) -> Finished | None:
        with tracing.task_delivery(self.request, plan_id, task, attempt):
            worker = self.request.hostname or ""
            runtime = worker_runtime(app, worker)
            step = runtime.members.run_member(
                plan_id,
                index,
                task,
                previous_index=previous_index,
                deadline=deadline,
                worker=worker,
                redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
                attempt=Attempt.from_json(attempt),
                owner=self.request.id or "",
            )
            tracing.delivery_ended(step)
            if isinstance(step, Reschedule):
                kwargs = {**(self.request.kwargs or {}), "attempt": step.attempt.to_json()}
                countdown = capped_countdown_s(step.delay_s, runtime.settings, task)
                why = f"{step.reason}: {step.error}" if step.error else step.reason
                raise self.retry(
                    kwargs=kwargs,
                    countdown=countdown,
                    exc=Rescheduled(f"{why}; next: attempt {step.attempt.number}"),
                    shadow=shadow_name(task),
                    kwargsrepr=kwargs_repr(kwargs),
                )
            if step is None:  # nothing run: a replay, or the plan ended while this one waited
                recorded = runtime.store.result(plan_id, index)
                if recorded is None or recorded.status is not TaskStatus.CANCELLED:
                    return None
                continue_chain(self)
                self.send_event("task-revoked", terminated=False, signum=None, expired=False)
                raise TaskCancelled(recorded.to_json_dict(), fresh=False)
            envelope = step.to_json_dict()
            if step.status is not TaskStatus.SUCCESS:
                continue_chain(self)
            if step.status is TaskStatus.CANCELLED:
                self.send_event("task-revoked", terminated=False, signum=None, expired=False)
                raise TaskCancelled(envelope)
            if step.status is not TaskStatus.SUCCESS:
                raise TaskFailed(envelope)
            return Finished(envelope)

    @app.task(name="taskplane.execute_plan", bind=True, shared=False)
    def execute_plan(self: Task, plan: dict[str, Any]) -> list[dict[str, Any]]:
        parsed = parse_plan(plan)
        if not parsed.tasks:
            return []
        runtime = worker_runtime(app)
        with tracing.message_context(self.request):  # under the sender's span, if it sent one
            submit_plan(
                app,
                runtime.store,
                parsed,
                runtime.settings,
                reply_to=self.request.id,
                agent_policies=runtime.agent_policies,
            )
        record = runtime.store.record(parsed.id)
        if record is not None and record.ended:
            report = runtime.plans.collect(parsed.id, record)
            return [r.to_json_dict() for r in report.results]
        raise Ignore()

    @app.task(name="taskplane.check_anomalies", shared=False, ignore_result=True)
    def check_anomalies() -> int:
        tracker = worker_runtime(app).tracker
        return 0 if tracker is None else len(tracker.check_anomalies())

    @app.task(name="taskplane.prune_tracking", shared=False, ignore_result=True)
    def prune_tracking() -> int:
        tracker = worker_runtime(app).tracker
        return 0 if tracker is None else tracker.prune()

    connect_signals(app)


def connect_signals(app: Celery) -> None:
    """Sweep for lost messages, close the runtime at shutdown."""
    sweepers: list[RedeliverySweeper] = []

    def shutdown(**_: Any) -> None:
        while sweepers:
            sweepers.pop().stop()
        close_runtimes()
        tracing.flush()

    def ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        settings = settings_of(app)
        if needs_sweeper(settings.effective_broker_url) and not sweepers:
            sweepers.append(RedeliverySweeper(app, interval_s=settings.redelivery_sweep_s))
            sweepers[0].start()
        # a worker serving metrics builds its runtime (and so its /metrics server) now,
        # not at its first task
        if settings.metrics_port is not None:
            worker_runtime(app)

    from taskplane.tasks.app import settings_of

    worker_shutdown.connect(shutdown, weak=False)
    worker_ready.connect(ready, weak=False)

    if settings_of(app).log_format == "json":
        from taskplane.observability.logs import use_json_logs

        use_json_logs(app)
