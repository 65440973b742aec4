"""Data points: one finished agent or pattern task's confidence, and how to get one.

Times are UTC epoch seconds (floats) everywhere in the tracking package;
:func:`to_epoch` accepts datetimes (naive ones are taken as UTC), ISO-8601
strings and numbers.
"""

from __future__ import annotations

import logging
import math
from datetime import UTC, datetime
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

from taskplane.models import ExecutionResult, TaskStatus, TaskType
from taskplane.runner import tokens_used

log = logging.getLogger(__name__)

#: Prefix of the agent id under which a pattern task's confidence is tracked.
PATTERN_AGENT_PREFIX = "pattern:"

Instant = datetime | float | int | str


def to_epoch(value: Instant) -> float:
    """Turn a datetime, ISO-8601 string or number into UTC epoch seconds.

    Raises:
        ValueError: *value* is none of those, or not finite.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a time")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        seconds = moment.timestamp()
    elif isinstance(value, str):
        return to_epoch(datetime.fromisoformat(value.replace("Z", "+00:00")))
    else:
        raise ValueError(f"expected a datetime or epoch seconds, got {type(value).__name__}")
    if not math.isfinite(seconds):
        raise ValueError("must be a finite time")
    return seconds


def optional_epoch(value: Instant | None) -> float | None:
    """:func:`to_epoch`, passing None through."""
    return None if value is None else to_epoch(value)


class DataPoint(BaseModel):
    """One recorded confidence; camelCase on the wire, snake_case in Python.

    Attributes:
        agent_id: The agent (``pattern:<name>`` for a pattern task).
        pattern_name: The pattern the task ran under, or ``""``.
        task_type: ``agent`` or ``pattern``.
        confidence: The result's confidence, 0..1.
        success: Whether the task's status was ``success``.
        timestamp: When the task finished, UTC epoch seconds.
        execution_time: How long it ran, in ms.
        tokens: The tokens the agent reported using (input + output), None if it did not.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    agent_id: str = Field(min_length=1, max_length=200)
    pattern_name: str = Field("", max_length=200)
    task_type: str = Field(TaskType.AGENT.value, max_length=20)
    confidence: float = Field(ge=0.0, le=1.0)
    success: bool = True
    timestamp: float
    execution_time: float = Field(0.0, ge=0.0, description="ms")
    tokens: int | None = Field(None, ge=0)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _epoch(cls, value: Any) -> float:
        return to_epoch(value)

    @field_validator("confidence", "execution_time")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form."""
        return self.model_dump(mode="json", by_alias=True)


def as_point(point: DataPoint | dict[str, Any]) -> DataPoint:
    """Accept a point as a model or as its JSON dict (camelCase or snake_case)."""
    if isinstance(point, DataPoint):
        return point
    return DataPoint.model_validate(point)


def point_from_result(result: ExecutionResult | dict[str, Any], *, now: float) -> DataPoint | None:
    """Build the data point for a finished task envelope, if it should be tracked.

    Agent and pattern tasks that carry a confidence are tracked; anything
    else (HTTP and function tasks, envelopes without a confidence, cache hits,
    which repeat an earlier execution's confidence) gives None.

    Args:
        result: The envelope, as a model or its JSON dict.
        now: When the task finished, UTC epoch seconds.
    """
    if isinstance(result, dict):  # cheap checks first: most envelopes are not tracked
        raw_meta = result.get("metadata") or {}
        if result.get("confidence") is None or raw_meta.get("cached"):
            return None
        if raw_meta.get("taskType") not in (TaskType.AGENT.value, TaskType.PATTERN.value):
            return None
    try:
        envelope = ExecutionResult.model_validate(result) if isinstance(result, dict) else result
    except pydantic.ValidationError:
        log.warning("not tracking a malformed result envelope", exc_info=True)
        return None
    meta = envelope.metadata
    if envelope.confidence is None or meta.get("cached"):
        return None
    task_type = str(meta.get("taskType", ""))
    pattern = str(meta.get("pattern") or "")
    if task_type == TaskType.AGENT.value:
        agent_id = str(meta.get("agentId") or meta.get("target") or "")
    elif task_type == TaskType.PATTERN.value and pattern:
        agent_id = PATTERN_AGENT_PREFIX + pattern
    else:
        return None
    try:
        return DataPoint(
            agent_id=agent_id,
            pattern_name=pattern,
            task_type=task_type,
            confidence=envelope.confidence,
            success=envelope.status is TaskStatus.SUCCESS,
            timestamp=now,
            execution_time=max(envelope.execution_time, 0.0),
            tokens=tokens_used(meta.get("usage")),
        )
    except pydantic.ValidationError:
        log.warning(
            "not tracking task %s: %s", envelope.task_id, "invalid data point", exc_info=True
        )
        return None
