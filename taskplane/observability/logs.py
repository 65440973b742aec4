"""Worker log lines as JSON objects (``TASKPLANE_LOG_FORMAT=json``).

Each line carries the time, level, logger and message, and — inside a
``taskplane.run_task`` — the plan id, the plan's task id, the agent (for agent
tasks), the attempt number and the trace id: the current OpenTelemetry span's,
else (lines Celery writes around the task) the one its message carries (see
:mod:`taskplane.observability.tracing`); null when tracing is off. The default
format stays readable text.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from celery import Celery
from celery._state import get_current_task
from celery.signals import after_setup_logger, after_setup_task_logger
from opentelemetry import trace as _otel_trace

from taskplane.observability.tracing import request_trace_id


def task_context() -> dict[str, Any]:
    """What the running Celery task (if any) says about the plan task it serves."""
    current = get_current_task()
    if current is None:
        return {}
    request = current.request
    kwargs: dict[str, Any] = getattr(request, "kwargs", None) or {}
    task: dict[str, Any] = _dict(kwargs.get("task"))
    attempt: dict[str, Any] = _dict(kwargs.get("attempt"))
    return {
        "plan_id": kwargs.get("plan_id"),
        "task_id": task.get("id"),
        "agent": task.get("target") if task.get("type") == "agent" else None,
        "attempt": int(attempt.get("n") or 1) if kwargs else None,
        "celery_id": getattr(request, "id", None),
        "message_trace_id": request_trace_id(request),
    }


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def trace_id() -> str | None:
    """The current OpenTelemetry trace id (hex), or None."""
    context = _otel_trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


class JsonFormatter(logging.Formatter):
    """One JSON object per log record."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "plan_id": None,
            "task_id": None,
            "agent": None,
            "attempt": None,
            "trace_id": trace_id(),
        }
        line.update(task_context())
        message_trace = line.pop("message_trace_id", None)
        if line["trace_id"] is None:
            line["trace_id"] = message_trace
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def use_json_logs(app: Celery) -> None:
    """Make the worker of *app* log JSON lines once Celery has set its logging up."""

    def setup(logger: logging.Logger | None = None, **_: Any) -> None:
        for handler in getattr(logger, "handlers", ()):
            handler.setFormatter(JsonFormatter())

    after_setup_logger.connect(setup, weak=False)
    after_setup_task_logger.connect(setup, weak=False)
