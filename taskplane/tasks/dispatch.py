"""The plan layer's :class:`~taskplane.plan.dispatch.Dispatch`, over Celery."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from taskplane.errors import ExecutionError
from taskplane.models import ExecutionPlan
from taskplane.tasks.canvas import enqueue_member

#: Records and enqueues a nested pattern's plan: (plan, deadline, extra fields) → created.
Submit = Callable[[ExecutionPlan, float | None, dict[str, str]], bool]


class CeleryDispatch:
    """Sends a plan's messages through *app*.

    Args:
        app: The Celery app whose broker and result backend are used.
        submit: Records and enqueues a nested pattern's plan (workers only:
            a client starts no pattern task).
    """

    def __init__(self, app: Celery, *, submit: Submit | None = None) -> None:
        self.app = app
        self._submit = submit

    def enqueue(
        self, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
    ) -> None:
        enqueue_member(self.app, plan_id, index, task_json, deadline)

    def deliver(self, celery_task_id: str, results: list[dict[str, Any]]) -> None:
        self.app.backend.mark_as_done(celery_task_id, results)

    def submit(self, plan: ExecutionPlan, deadline: float | None, extra: dict[str, str]) -> bool:
        if self._submit is None:
            raise ExecutionError(f"plan {plan.id}: nested plans are started by workers")
        return self._submit(plan, deadline, extra)
