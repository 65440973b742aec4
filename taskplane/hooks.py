"""Execution hooks: documented no-op methods a runner calls as a task progresses.

Subclass :class:`ExecutionHooks` and override what you need. The runner calls
hooks through :class:`HookChain`, which logs and swallows a hook's exception:
a broken listener never breaks a task.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from taskplane.contract import RunContext
    from taskplane.models import ExecutionResult, ExecutionTask

log = logging.getLogger(__name__)


class ExecutionHooks:
    """Base class of execution listeners; every method is a no-op."""

    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        """Called when a task starts running (before the cache is consulted)."""

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        """Called before the runner waits *delay_ms* and makes retry number *attempt*."""

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        """Called when a task's result came from the cache; the target was not called."""

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        """Called once per recorded outcome (any status; the first outcome of a task wins).

        For a plan member, by the plan recorder once the plan store reports the
        outcome recorded (a redelivered copy is not told again); for a lone task
        run in one process, by :meth:`TaskRunner.run <taskplane.runner.TaskRunner.run>`.
        """

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        """Called for events not about one task (``circuit:open``, ``anomaly:detected``)."""


class HookChain(ExecutionHooks):
    """Calls several hooks in order, containing each one's failure."""

    def __init__(self, hooks: Iterable[ExecutionHooks] = ()) -> None:
        self.hooks = list(hooks)

    def add(self, hook: ExecutionHooks) -> None:
        """Append *hook* to the chain."""
        self.hooks.append(hook)

    def _each(self, method: str, *args: Any, **kwargs: Any) -> None:
        for hook in self.hooks:
            try:
                getattr(hook, method)(*args, **kwargs)
            except Exception:
                log.exception("execution hook %s.%s failed", type(hook).__name__, method)

    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        self._each("on_started", task, ctx)

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        self._each("on_retrying", task, ctx, attempt=attempt, delay_ms=delay_ms, error=error)

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self._each("on_cache_hit", task, ctx, result)

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self._each("on_finished", task, ctx, result)

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self._each("emit", event_type, data)
