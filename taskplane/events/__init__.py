"""Events: what happened to tasks, breakers and agents, seen from any process.

Workers publish; ``engine.on(name, handler)`` and ``taskplane events``
receive. :class:`RedisEventBus` delivers through Redis pub/sub and keeps a
bounded stream for late readers; :class:`InMemoryEventBus` does the same in
one process. An event is ``{"type": str, "data": dict, "timestamp": float}``.
"""

from __future__ import annotations

from taskplane.events.bus import (
    ALL_EVENTS,
    Event,
    EventBus,
    EventHandler,
    InMemoryEventBus,
    Subscription,
    make_event,
)
from taskplane.events.names import (
    ANOMALY_DETECTED,
    CIRCUIT_CLOSE,
    CIRCUIT_OPEN,
    CONTROL_PLANE_NAMES,
    EVENT_TYPES,
    TASK_CACHE_HIT,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RETRYING,
    TASK_STARTED,
)
from taskplane.events.payloads import (
    ControlBus,
    EventHooks,
    control_plane_name,
    finished_event,
    format_event,
    forward_events,
    started_event,
)
from taskplane.events.redis_bus import RedisEventBus
from taskplane.throttle import LogThrottle

__all__ = [
    "ALL_EVENTS",
    "ANOMALY_DETECTED",
    "CIRCUIT_CLOSE",
    "CIRCUIT_OPEN",
    "CONTROL_PLANE_NAMES",
    "EVENT_TYPES",
    "TASK_CACHE_HIT",
    "TASK_COMPLETED",
    "TASK_FAILED",
    "TASK_RETRYING",
    "TASK_STARTED",
    "ControlBus",
    "Event",
    "EventBus",
    "EventHandler",
    "EventHooks",
    "InMemoryEventBus",
    "LogThrottle",
    "RedisEventBus",
    "Subscription",
    "control_plane_name",
    "finished_event",
    "format_event",
    "forward_events",
    "make_event",
    "started_event",
]
