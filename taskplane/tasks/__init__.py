"""The Celery tasks: thin wrappers that validate, get the worker's parts and call the domain.

Plain functions, registered on an app by :func:`register_tasks` with
:class:`~taskplane.tasks.base.TaskplaneTask` as their base, whose ``parts``
are the worker process's (built once, after any fork):

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
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import Ignore
from celery.signals import worker_ready, worker_shutdown

from taskplane.config import COUNTDOWN_MARGIN_S, MIN_COUNTDOWN_CAP_S, Settings
from taskplane.models import TaskStatus, parse_plan
from taskplane.observability import tracing
from taskplane.observability.celery_view import kwargs_repr, shadow_name
from taskplane.runner import Attempt, Reschedule
from taskplane.tasks.base import TaskplaneTask, WorkerParts
from taskplane.tasks.canvas import EARLY_HEADER, RUN_TASK, submit_plan
from taskplane.tasks.redelivery import RedeliverySweeper, needs_sweeper
from taskplane.tasks.states import (
    Finished,
    Rescheduled,
    TaskCancelled,
    TaskFailed,
    continue_chain,
)

#: How many times a message sent while its run was being recorded looks for the run.
RUN_AWAIT_LOOKS = 5


def run_task(
    self: TaskplaneTask,
    plan_id: str,
    index: int,
    task: dict[str, Any],
    deadline: float | None = None,
    previous_index: int | None = None,
    attempt: dict[str, Any] | None = None,
) -> Finished | None:
    """``taskplane.run_task``: take one task of a plan one step on.

    A message sent while its run was being recorded (``EARLY_HEADER``) looks
    for a run it does not find again, up to ``RUN_AWAIT_LOOKS`` times.
    """
    with tracing.task_delivery(self.request, plan_id, task, attempt):
        parts = self.parts
        step = parts.member_runner.run_member(
            plan_id,
            index,
            task,
            previous_index=previous_index,
            deadline=deadline,
            worker=self.request.hostname or "",
            redelivered=bool((self.request.delivery_info or {}).get("redelivered")),
            attempt=Attempt.from_json(attempt),
            owner=self.request.id or "",
            await_run=sent_early(self.request) and (self.request.retries or 0) < RUN_AWAIT_LOOKS,
        )
        tracing.delivery_ended(step)
        if isinstance(step, Reschedule):
            kwargs = {**(self.request.kwargs or {}), "attempt": step.attempt.to_json()}
            countdown = capped_countdown_s(step.delay_s, parts.settings, task)
            why = f"{step.reason}: {step.error}" if step.error else step.reason
            raise self.retry(
                kwargs=kwargs,
                countdown=countdown,
                exc=Rescheduled(f"{why}; next: attempt {step.attempt.number}"),
                shadow=shadow_name(task),
                kwargsrepr=kwargs_repr(kwargs),
            )
        if step is None:  # nothing run: a replay, or the plan ended while this one waited
            recorded = parts.store.result(plan_id, index)
            if recorded is None or recorded.status is not TaskStatus.CANCELLED:
                return None
            continue_chain(self)
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
            raise TaskCancelled(recorded.to_json_dict())
        envelope = step.to_json_dict()
        if step.status is not TaskStatus.SUCCESS:
            continue_chain(self)
        if step.status is TaskStatus.CANCELLED:
            self.send_event("task-revoked", terminated=False, signum=None, expired=False)
            raise TaskCancelled(envelope)
        if step.status is not TaskStatus.SUCCESS:
            raise TaskFailed(envelope)
        return Finished(envelope)


def sent_early(request: Any) -> bool:
    """Whether a ``run_task`` message went out while its run was being recorded."""
    return bool(request.get(EARLY_HEADER))


def execute_plan(self: TaskplaneTask, plan: dict[str, Any]) -> list[dict[str, Any]]:
    """``taskplane.execute_plan``: run a whole plan; the run's end answers this call."""
    parsed = parse_plan(plan)
    if not parsed.tasks:
        return []
    parts = self.parts
    with tracing.message_context(self.request):  # under the sender's span, if it sent one
        submit_plan(
            self.app,
            parts.store,
            parsed,
            parts.settings,
            reply_to=self.request.id,
            agent_policies=parts.agent_policies,
        )
    record = parts.store.record(parsed.id)
    if record is not None and record.ended:
        report = parts.plans.collect(parsed.id, record)
        return [r.to_json_dict() for r in report.results]
    raise Ignore()


def check_anomalies(self: TaskplaneTask) -> int:
    """``taskplane.check_anomalies`` (beat): anomalies found in the tracked confidence."""
    tracker = self.parts.tracker
    return 0 if tracker is None else len(tracker.check_anomalies())


def prune_tracking(self: TaskplaneTask) -> int:
    """``taskplane.prune_tracking`` (beat): tracked points past their retention removed."""
    tracker = self.parts.tracker
    return 0 if tracker is None else tracker.prune()


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


#: taskplane's tasks and their Celery options (every one bound, not shared between apps).
TASKS: tuple[tuple[Callable[..., Any], dict[str, Any]], ...] = (
    (
        run_task,
        {"name": RUN_TASK, "ignore_result": True, "max_retries": None, "throws": (TaskFailed,)},
    ),
    (execute_plan, {"name": "taskplane.execute_plan"}),
    (check_anomalies, {"name": "taskplane.check_anomalies", "ignore_result": True}),
    (prune_tracking, {"name": "taskplane.prune_tracking", "ignore_result": True}),
)


def register_tasks(app: Celery, settings: Settings) -> None:
    """Register taskplane's tasks on *app*, sharing one worker's parts built from *settings*."""
    resources = WorkerParts(app, settings)
    for function, options in TASKS:
        app.task(
            function, base=TaskplaneTask, bind=True, shared=False, resources=resources, **options
        )
    connect_signals(app, resources)


def connect_signals(app: Celery, resources: WorkerParts) -> None:
    """Sweep for lost messages, close the worker's parts at shutdown."""
    sweepers: list[RedeliverySweeper] = []

    def shutdown(**_: Any) -> None:
        while sweepers:
            sweepers.pop().stop()
        resources.close()
        tracing.flush()

    def ready(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is not app:
            return
        settings = resources.settings
        if needs_sweeper(settings.effective_broker_url) and not sweepers:
            sweepers.append(RedeliverySweeper(app, interval_s=settings.redelivery_sweep_s))
            sweepers[0].start()
        # a worker serving metrics builds its parts (and so its /metrics server) now,
        # not at its first task
        if settings.metrics_port is not None:
            resources.get()

    worker_shutdown.connect(shutdown, weak=False)
    worker_ready.connect(ready, weak=False)

    if resources.settings.log_format == "json":
        from taskplane.observability.logs import use_json_logs

        use_json_logs(app)
