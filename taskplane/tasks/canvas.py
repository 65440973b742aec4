"""From a validated plan to Celery messages: the first window, or a chain.

Parallel plans enqueue their first ``maxConcurrency`` tasks, one message
each over one producer; each task that finishes enqueues the next one (see
:class:`taskplane.plan.recorder.PlanRecorder`), so the limit holds across
every worker and no task waits holding a worker slot. Sequential and
weighted plans are a Celery chain.

The window is not a Celery group: a group's result waits on every member,
so the client subscribed to each member's result channel (a ``SUBSCRIBE``
and an ``UNSUBSCRIBE`` per task) although ``run_task`` stores no result and
clients read outcomes from the plan store.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature

from taskplane.budget import budget_meta
from taskplane.config import COUNTDOWN_MARGIN_S, MIN_COUNTDOWN_CAP_S, Settings
from taskplane.errors import BackendError, ValidationError
from taskplane.models import ExecutionPlan, ExecutionTask
from taskplane.observability import tracing
from taskplane.observability.celery_view import kwargs_repr, shadow_name
from taskplane.plan import Mode, PlanLayout, RunRecord, RunStore, layout
from taskplane.proxy.policy import PolicyLookup, with_agent_defaults
from taskplane.redisio import OUTAGE_BACKOFF_CAP_S, REDIS_OUTAGE_S

#: Name of the Celery task that runs one task of a plan.
RUN_TASK = "taskplane.run_task"
#: Message header of a task sent while its run was being recorded (see :func:`member`).
EARLY_HEADER = "taskplane_early"
#: Pause before the second try of a successor's publish, added to each later pause (s).
PUBLISH_RETRY_STEP_S = 0.2


def publish_retry_policy(outage_s: float = REDIS_OUTAGE_S) -> dict[str, float]:
    """Celery's ``retry_policy`` for a successor's publish, riding through *outage_s*.

    A finishing task enqueues the next task of its window after recording
    its outcome; if that publish fails, the successor is never sent and the
    plan stalls until a waiting client resends it. So the publish reconnects
    and tries again with pauses of 0, 0.2, 0.4 … up to 1 s until about
    *outage_s* has passed (Celery's default gives up within 0.6 s).
    """
    retries, waited, pause = 0, 0.0, 0.0
    while waited < outage_s:
        retries += 1
        waited += pause
        pause = min(pause + PUBLISH_RETRY_STEP_S, OUTAGE_BACKOFF_CAP_S)
    return {
        "max_retries": retries,
        "interval_start": 0,
        "interval_step": PUBLISH_RETRY_STEP_S,
        "interval_max": OUTAGE_BACKOFF_CAP_S,
    }


def member(
    app: Celery,
    plan_id: str,
    index: int,
    task_json: dict[str, Any],
    deadline: float | None,
    previous_index: int | None = None,
    *,
    sent_early: bool = False,
) -> Signature:
    """The signature of task *index* of a plan; *sent_early*: it may reach a worker
    before its run is recorded (:meth:`RunStore.create_sending`), said in the
    :data:`EARLY_HEADER` header (a worker that does not know it ignores it)."""
    kwargs: dict[str, Any] = {
        "plan_id": plan_id,
        "index": index,
        "task": task_json,
        "deadline": deadline,
    }
    if previous_index is not None:
        kwargs["previous_index"] = previous_index
    signature = app.signature(RUN_TASK, kwargs=kwargs, immutable=True)
    headers = tracing.plan_headers()  # the plan span's context, when tracing is on
    if sent_early:
        headers[EARLY_HEADER] = "1"
    if headers:
        signature.set(headers=headers)
    # Flower and worker logs show a readable name and redacted JSON arguments
    return signature.set(shadow=shadow_name(task_json), kwargsrepr=kwargs_repr(kwargs))


def enqueue_member(
    app: Celery, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
) -> None:
    """Put one task of a plan on the broker, retrying through a broker restart."""
    member(app, plan_id, index, task_json, deadline).apply_async(
        retry_policy=publish_retry_policy()
    )


def canvas(
    app: Celery,
    plan: ExecutionPlan,
    plan_layout: PlanLayout,
    deadline: float,
    *,
    sent_early: bool = False,
) -> list[Signature]:
    """The messages that start *plan*: its first window's members, or one chain."""
    tasks = [task.to_json_dict() for task in plan.tasks]
    if plan_layout.mode is Mode.WINDOW:
        first = plan_layout.order[: plan_layout.window]
        return [member(app, plan.id, i, tasks[i], deadline, sent_early=sent_early) for i in first]
    forward = plan_layout.rule.passes_previous
    steps = []
    for position, index in enumerate(plan_layout.order):
        previous = plan_layout.order[position - 1] if forward and position else None
        early = sent_early and not position  # the later steps are sent by a worker
        steps.append(
            member(app, plan.id, index, tasks[index], deadline, previous, sent_early=early)
        )
    return [steps[0] if len(steps) == 1 else chain(steps)]


def send_canvas(app: Celery, signatures: list[Signature]) -> None:
    """Publish *signatures* over one producer (one broker connection for the window)."""
    with app.producer_or_acquire() as producer:
        for signature in signatures:
            signature.apply_async(producer=producer)


def effective_timeout_ms(task: ExecutionTask, settings: Settings) -> int:
    """How long one attempt of *task* may run: its ``metadata.timeout``, else the default."""
    return task.metadata.timeout or settings.default_timeout


def check_task_timeouts(plan: ExecutionPlan, settings: Settings) -> None:
    """Refuse *plan* if a task's attempt could outlive the broker's visibility timeout.

    Such a task would be delivered again while it still runs, and run twice.

    Raises:
        ValidationError: Names the task, its ``metadata.timeout`` and the
            setting to raise (``TASKPLANE_VISIBILITY_TIMEOUT_S``).
    """
    limit_ms = settings.max_task_timeout_ms
    if limit_ms is None:
        return
    errors = []
    for index, task in enumerate(plan.tasks):
        timeout_ms = effective_timeout_ms(task, settings)
        if timeout_ms > limit_ms:
            own = task.metadata.timeout is not None
            field = f"tasks[{index}].metadata.timeout" if own else "TASKPLANE_DEFAULT_TIMEOUT"
            errors.append({"field": field, "message": f"{timeout_ms} ms (task {task.id!r})"})
    if errors:
        fields = ", ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ValidationError(
            f"invalid plan: a task may run at most {limit_ms} ms on this broker (the "
            f"visibility timeout of {settings.effective_visibility_timeout_s} s less "
            f"{COUNTDOWN_MARGIN_S + MIN_COUNTDOWN_CAP_S:g} s) or it is delivered again while "
            f"it runs; raise TASKPLANE_VISIBILITY_TIMEOUT_S or shorten {fields}",
            errors,
        )


def submit_plan(
    app: Celery,
    store: RunStore,
    plan: ExecutionPlan,
    settings: Settings,
    *,
    reply_to: str | None = None,
    clock: Any = time.time,
    deadline: float | None = None,
    extra_meta: dict[str, str] | None = None,
    agent_policies: PolicyLookup | None = None,
    plan_trace: tracing.PlanTrace | None = None,
    fresh_id: bool = False,
) -> RunRecord | None:
    """Record *plan* and enqueue it; returns the run's record as created, or None when
    its id already names a run (attach to it).

    Either the whole plan is enqueued or nothing is: if the broker refuses,
    the run's record is removed again and :class:`BackendError` raised.

    Raises:
        ValidationError: A task's timeout outlives the visibility timeout
            (:func:`check_task_timeouts`); nothing was recorded.
        BackendError: The broker refused the plan.

    Args:
        deadline: Epoch seconds; the plan's own ``timeout`` from now when None,
            and never later than that.
        extra_meta: Fields for the run's record (a nested pattern's parent); a nested
            run that names its parent's ``budget`` draws from it, not from its own.
        agent_policies: Reads agents' policies, whose ``timeout``/``maxRetries``
            fill in what agent tasks leave unset (:func:`with_agent_defaults`).
        plan_trace: The plan's span, kept open by a caller that waits for the run;
            when None, a span is started here and ended once the run is enqueued.
        fresh_id: *plan*'s id was generated for this call, so no run holds it: its
            messages go out while its record is written (:meth:`RunStore.create_sending`,
            a round trip fewer before the first task can start).
    """
    if agent_policies is not None:
        plan = with_agent_defaults(plan, agent_policies)
    check_task_timeouts(plan, settings)
    if plan.budget is not None and not (extra_meta or {}).get("budget"):
        extra_meta = {**(extra_meta or {}), **budget_meta(plan.id, plan.budget)}
    plan_layout = layout(plan, default_max_concurrency=settings.max_concurrency)
    own_deadline = clock() + plan.timeout / 1000.0
    deadline = own_deadline if deadline is None else min(deadline, own_deadline)
    own_trace = plan_trace is None
    if plan_trace is None:
        plan_trace = tracing.start_plan(plan, pattern=(extra_meta or {}).get("pattern"))
    if plan_trace.traceparent:
        extra_meta = {**(extra_meta or {}), tracing.META_FIELD: plan_trace.traceparent}
    try:
        if reply_to is not None:
            store.add_reply(plan.id, reply_to)

        def send() -> None:
            try:
                with plan_trace.scope(plan.id):
                    send_canvas(app, canvas(app, plan, plan_layout, deadline, sent_early=fresh_id))
            except Exception as exc:
                plan_trace.end("not enqueued", ok=False)
                raise BackendError(f"could not enqueue plan {plan.id}: {exc}") from exc

        record = store.create_sending(
            plan.id, plan.tasks, plan_layout, deadline, send, extra_meta=extra_meta, fresh=fresh_id
        )
        if record is None:
            plan_trace.attached()
        return record
    finally:
        if own_trace:
            plan_trace.end(detached=True)
