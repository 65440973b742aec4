"""The port through which plans reach the broker.

The plan layer decides *what* to send — the next task of a window, a lost
message again, a nested pattern's plan, a finished plan's results for a
caller waiting on it — and hands it to a :class:`Dispatch`.
:class:`taskplane.tasks.dispatch.CeleryDispatch` sends over Celery; tests
hand in one that only writes down what it was given.
"""

from __future__ import annotations

from typing import Any, Protocol

from taskplane.models import ExecutionPlan


class Dispatch(Protocol):
    """Where a plan's messages go."""

    def enqueue(
        self, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
    ) -> None:
        """Put task *index* (as JSON) of *plan_id*, with the plan's deadline, on the broker."""

    def deliver(self, celery_task_id: str, results: list[dict[str, Any]]) -> None:
        """Store a finished plan's results (JSON) as the result of a waiting Celery task."""

    def submit(self, plan: ExecutionPlan, deadline: float | None, extra: dict[str, str]) -> bool:
        """Record and enqueue a nested pattern's plan; False when its run exists already."""
