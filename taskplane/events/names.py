"""The names of taskplane's events."""

from __future__ import annotations

TASK_STARTED = "task:started"
TASK_COMPLETED = "task:completed"
TASK_FAILED = "task:failed"
TASK_RETRYING = "task:retrying"
TASK_CACHE_HIT = "task:cache-hit"
CIRCUIT_OPEN = "circuit:open"
CIRCUIT_CLOSE = "circuit:close"
ANOMALY_DETECTED = "anomaly:detected"
PLAN_BUDGET_WARNING = "plan:budget-warning"
PLAN_BUDGET_EXHAUSTED = "plan:budget-exhausted"

#: Every event type taskplane publishes.
EVENT_TYPES: tuple[str, ...] = (
    TASK_STARTED,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RETRYING,
    TASK_CACHE_HIT,
    CIRCUIT_OPEN,
    CIRCUIT_CLOSE,
    ANOMALY_DETECTED,
    PLAN_BUDGET_WARNING,
    PLAN_BUDGET_EXHAUSTED,
)

#: How task events are named on a control plane's event bus (see ``forward_events``).
CONTROL_PLANE_NAMES: dict[str, str] = {
    TASK_STARTED: "agent_task_started",
    TASK_COMPLETED: "agent_task_completed",
    TASK_FAILED: "agent_task_failed",
    TASK_RETRYING: "agent_task_retrying",
    TASK_CACHE_HIT: "agent_task_cache_hit",
}
