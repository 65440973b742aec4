"""What goes into each event, the execution hooks that publish them, and renderings.

Task events carry ``planId`` (None for a lone task) and ``worker`` besides
the fields DESIGN lists, so a reader can tell runs and hosts apart.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from taskplane.events.bus import Event, EventBus, Subscription
from taskplane.events.names import (
    CONTROL_PLANE_NAMES,
    TASK_CACHE_HIT,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RETRYING,
    TASK_STARTED,
)
from taskplane.hooks import ExecutionHooks
from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    TaskStatus,
    parse_result,
    parse_task,
    redact_credentials,
)

if TYPE_CHECKING:
    from taskplane.contract import RunContext

#: Longest rendering of one value in :func:`format_event`.
MAX_VALUE_CHARS = 80
#: Fields :func:`format_event` shows first, in this order; the rest follow sorted.
LEADING_FIELDS = ("taskId", "planId", "agentId", "type", "target", "status", "confidence")
#: Fields :func:`format_event` leaves out (large or shown otherwise).
HIDDEN_FIELDS = frozenset({"result", "worker", "executionTime"})


def started_event(
    task: ExecutionTask | dict[str, Any], *, plan_id: str | None, worker: str
) -> tuple[str, dict[str, Any]]:
    """``task:started{taskId, type, target, planId, worker}`` for *task*."""
    task = parse_task(task)
    return TASK_STARTED, {
        "taskId": task.id,
        "type": task.type.value,
        "target": redact_credentials(task.target),
        "planId": plan_id,
        "worker": worker,
    }


def finished_event(
    result: ExecutionResult | dict[str, Any], *, plan_id: str | None, worker: str
) -> tuple[str, dict[str, Any]]:
    """``task:completed`` for a success, else ``task:failed``, for a final envelope.

    ``task:completed{taskId, result, confidence, executionTime, usage, planId, worker}``
    (``usage``: the agent's reported ``{inputTokens, outputTokens}``, else None);
    ``task:failed{taskId, error, retries, status, planId, worker}``.

    Args:
        result: The envelope, as a model or its camelCase JSON dict.
        plan_id: The plan's id (None for a lone task).
        worker: The worker that ran the task.
    """
    wire = result.to_json_dict() if isinstance(result, ExecutionResult) else result
    if "taskId" not in wire or "status" not in wire:  # not camelCase JSON: let the model say
        wire = parse_result(wire).to_json_dict()
    if wire["status"] == TaskStatus.SUCCESS.value:
        return TASK_COMPLETED, {
            "taskId": wire["taskId"],
            "result": wire.get("result"),
            "confidence": wire.get("confidence"),
            "executionTime": wire.get("executionTime", 0.0),
            "usage": (wire.get("metadata") or {}).get("usage"),
            "planId": plan_id,
            "worker": worker,
        }
    return TASK_FAILED, {
        "taskId": wire["taskId"],
        "error": wire.get("error"),
        "retries": wire.get("retries", 0),
        "status": wire["status"],
        "planId": plan_id,
        "worker": worker,
    }


class EventHooks(ExecutionHooks):
    """Publishes the runner's starts, retries, cache hits, outcomes and other events on a bus.

    Args:
        bus: Where events go.
        worker: This worker's name, carried in every task event.
    """

    def __init__(self, bus: EventBus, *, worker: str) -> None:
        self.bus = bus
        self.worker = worker

    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        self.bus.publish(*started_event(task, plan_id=ctx.plan_id, worker=self.worker))

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        self.bus.publish(
            TASK_RETRYING,
            {
                "taskId": task.id,
                "attempt": attempt,
                "delay": delay_ms,
                "error": error,
                "planId": ctx.plan_id,
                "worker": self.worker,
            },
        )

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.bus.publish(
            TASK_CACHE_HIT, {"taskId": task.id, "planId": ctx.plan_id, "worker": self.worker}
        )

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        # A plan member's outcome event is written by the plan store, in the script that
        # records the outcome (one event per recorded outcome): only a lone task a client
        # answered itself is announced here.
        if ctx.plan_id is None:
            self.bus.publish(*finished_event(result, plan_id=None, worker=self.worker))

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.bus.publish(event_type, data)


class ControlBus(Protocol):
    """A control plane's event sink, e.g. Parallax's execution event bus."""

    def emit_event(self, event: dict[str, Any]) -> Any:
        """Accept one execution event."""


def control_plane_name(event_type: str) -> str:
    """The control plane's name for *event_type*: ``task:completed`` → ``agent_task_completed``."""
    mapped = CONTROL_PLANE_NAMES.get(event_type)
    if mapped is not None:
        return mapped
    return event_type.replace(":", "_").replace("-", "_")


def forward_events(bus: EventBus, control_bus: ControlBus) -> Subscription:
    """Forward every event on *bus* to *control_bus* as an execution event.

    Each becomes ``{"executionId": planId, "type": control_plane_name(type),
    "data": data, "timestamp": timestamp}``; events not tied to a plan carry
    ``executionId`` None. A failing ``emit_event`` is logged by the bus.

    Returns:
        The subscription; close it to stop forwarding.
    """

    def forward(event: Event) -> None:
        data = event.get("data") or {}
        control_bus.emit_event(
            {
                "executionId": data.get("planId"),
                "type": control_plane_name(str(event.get("type", ""))),
                "data": data,
                "timestamp": event.get("timestamp"),
            }
        )

    return bus.subscribe(forward)


def _render(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > MAX_VALUE_CHARS:
        text = text[: MAX_VALUE_CHARS - 1] + "…"
    return text


def format_event(event: Event) -> str:
    """One line for a human: local time, type, the key fields, the worker last.

    Example: ``2024-05-01 12:00:01.234 task:completed   taskId=t1 planId=p1
    confidence=0.92 executionTime=123ms worker=w1``.
    """
    timestamp = event.get("timestamp")
    try:
        when = datetime.fromtimestamp(float(timestamp)).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError, OSError):
        when = "?" * 23
    data = event.get("data") or {}
    parts = [when, f"{event.get('type', '?'):<18}"]
    names = [name for name in LEADING_FIELDS if name in data]
    names += sorted(n for n in data if n not in LEADING_FIELDS and n not in HIDDEN_FIELDS)
    parts += [f"{name}={_render(data[name])}" for name in names if data[name] is not None]
    if isinstance(data.get("executionTime"), int | float):
        parts.append(f"executionTime={data['executionTime']:.0f}ms")
    if data.get("worker"):
        parts.append(f"worker={data['worker']}")
    return " ".join(parts)
