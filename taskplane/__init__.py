"""taskplane: a data plane for AI-agent work on Celery and Redis.

Importing taskplane connects to nothing; an :class:`ExecutionEngine` (or its
asyncio twin, :class:`AsyncExecutionEngine`) connects on first use.
"""

from __future__ import annotations

from taskplane.aio import AsyncExecutionEngine, AsyncPlanHandle
from taskplane.config import Settings, load_settings
from taskplane.engine import ExecutionEngine
from taskplane.errors import (
    BackendError,
    CircuitOpenError,
    ConfigurationError,
    ExecutionError,
    PlanFailedError,
    TaskplaneError,
    ValidationError,
    WaitTimeoutError,
)
from taskplane.functions import FunctionResult, function
from taskplane.handle import PlanHandle
from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    SequentialExecutionPlan,
    Strategy,
    TaskStatus,
    TaskType,
)

__version__ = "0.1.0"

__all__ = [
    # running work
    "ExecutionEngine",
    "PlanHandle",
    # running work from asyncio code
    "AsyncExecutionEngine",
    "AsyncPlanHandle",
    # plans, tasks, results
    "ExecutionResult",
    "ExecutionTask",
    "ParallelExecutionPlan",
    "SequentialExecutionPlan",
    "Strategy",
    "TaskStatus",
    "TaskType",
    # named functions for `function` tasks
    "FunctionResult",
    "function",
    # configuration
    "Settings",
    "load_settings",
    # errors
    "BackendError",
    "CircuitOpenError",
    "ConfigurationError",
    "ExecutionError",
    "PlanFailedError",
    "TaskplaneError",
    "ValidationError",
    "WaitTimeoutError",
    "__version__",
]
