"""The base class of taskplane's tasks and the worker process's parts it hands them.

Celery's idiom for a per-process resource is a custom task class whose
property builds the resource on first use (Celery's user guide, "Custom task
classes": a task is instantiated once per process, and keyword arguments of
``app.task`` become attributes of the task's class). Every taskplane task of
one app is registered with ``base=TaskplaneTask`` and the same
:class:`WorkerParts` as its ``resources``, so the four tasks share one
:class:`~taskplane.parts.Parts` per process: built at the first task that
needs it, after the pool forked (prefork) or in the one process (threads,
gevent), and built again in a child that inherited a parent's.
"""

from __future__ import annotations

import os
import threading
from typing import ClassVar

from celery import Celery

from taskplane.config import Settings
from taskplane.models import ExecutionPlan
from taskplane.parts import Parts
from taskplane.tasks.canvas import submit_plan
from taskplane.tasks.dispatch import CeleryDispatch
from taskplane.tasks.guard import GuardedTask


class WorkerParts:
    """The :class:`~taskplane.parts.Parts` of this process for one Celery app.

    Args:
        app: The app whose tasks use them (their plans' messages go through it).
        settings: What the parts are built from.
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._lock = threading.Lock()
        self._parts: Parts | None = None
        self._pid = 0

    def get(self, worker: str = "") -> Parts:
        """This process's parts, built on the first call here (named *worker*)."""
        parts = self._parts
        if parts is not None and self._pid == os.getpid():
            return parts
        with self._lock:
            if self._parts is None or self._pid != os.getpid():  # none yet, or a parent's
                self._parts = Parts.for_worker(
                    self.settings,
                    dispatch=CeleryDispatch(self.app, submit=self._submit_child),
                    worker=worker,
                )
                self._pid = os.getpid()
            return self._parts

    def _submit_child(
        self, plan: ExecutionPlan, deadline: float | None, extra_meta: dict[str, str]
    ) -> bool:
        """Record and enqueue a nested pattern's plan from inside a worker."""
        parts = self.get()
        created = submit_plan(
            self.app,
            parts.store,
            plan,
            self.settings,
            deadline=deadline,
            extra_meta=extra_meta,
            agent_policies=parts.agent_policies,
        )
        return created is not None

    def close(self) -> None:
        """Close this process's parts, if it built them (worker shutdown)."""
        with self._lock:
            parts, self._parts = self._parts, None
        if parts is not None and self._pid == os.getpid():
            parts.close()


class TaskplaneTask(GuardedTask):
    """Base class of taskplane's tasks: the worker process's parts, built on first use.

    ``resources`` is set by :func:`taskplane.tasks.register_tasks` (an option
    of ``app.task``), one :class:`WorkerParts` for every task of the app.
    """

    resources: ClassVar[WorkerParts]

    @property
    def settings(self) -> Settings:
        """The settings the app's tasks were registered with."""
        return self.resources.settings

    @property
    def parts(self) -> Parts:
        """This process's parts, named after the worker running this request."""
        return self.resources.get(getattr(self.request, "hostname", None) or "")
