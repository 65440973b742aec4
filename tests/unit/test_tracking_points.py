"""Data points: building them from result envelopes, times, validation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pydantic
import pytest

from taskplane.tracking import DataPoint, point_from_result, to_epoch

NOW = 1_750_000_000.0


def envelope(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "taskId": "t1",
        "status": "success",
        "confidence": 0.8,
        "executionTime": 42.0,
        "metadata": {"taskType": "agent", "agentId": "a1", "target": "a1"},
    }
    base.update(fields)
    return base


def test_agent_envelope_becomes_a_point() -> None:
    meta = {"taskType": "agent", "agentId": "a1", "target": "a1", "pattern": "review"}
    point = point_from_result(envelope(metadata=meta), now=NOW)
    assert point == DataPoint(
        agent_id="a1",
        pattern_name="review",
        task_type="agent",
        confidence=0.8,
        success=True,
        timestamp=NOW,
        execution_time=42.0,
    )


def test_pattern_envelope_is_tracked_under_the_pattern() -> None:
    meta = {"taskType": "pattern", "pattern": "consensus", "target": "consensus"}
    point = point_from_result(envelope(metadata=meta, status="failure"), now=NOW)
    assert point is not None
    assert point.agent_id == "pattern:consensus"
    assert point.pattern_name == "consensus"
    assert point.success is False


@pytest.mark.parametrize(
    "fields",
    [
        {"metadata": {"taskType": "http", "target": "https://example.com"}},
        {"metadata": {"taskType": "function", "target": "f"}},
        {"confidence": None},
        {"metadata": {"taskType": "agent", "agentId": "a1", "cached": True}},
        {"confidence": 1.5},
        {"status": "nonsense"},
    ],
)
def test_untracked_envelopes_give_none(fields: dict[str, Any]) -> None:
    assert point_from_result(envelope(**fields), now=NOW) is None


def test_times_are_utc_epoch_seconds() -> None:
    moment = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)
    assert to_epoch(moment) == moment.timestamp()
    assert to_epoch(moment.replace(tzinfo=None)) == moment.timestamp()
    assert to_epoch(moment.astimezone(timezone(timedelta(hours=2)))) == moment.timestamp()
    assert to_epoch("2025-06-15T12:00:00Z") == moment.timestamp()
    assert to_epoch(5) == 5.0
    with pytest.raises(ValueError):
        to_epoch(float("nan"))
    with pytest.raises(ValueError):
        to_epoch(True)


def test_data_point_wire_format_and_validation() -> None:
    point = DataPoint.model_validate(
        {"agentId": "a", "confidence": 0.5, "timestamp": "2025-06-15T12:00:00+00:00"}
    )
    assert point.to_json_dict()["agentId"] == "a"
    assert point.pattern_name == ""
    with pytest.raises(pydantic.ValidationError):
        DataPoint(agent_id="a", confidence=-0.1, timestamp=NOW)
    with pytest.raises(pydantic.ValidationError):
        DataPoint(agent_id="", confidence=0.1, timestamp=NOW)


@pytest.mark.parametrize(
    ("usage", "tokens"),
    [
        ({"inputTokens": 120, "outputTokens": 30}, 150),
        ({"inputTokens": 0, "outputTokens": 0}, 0),
        ({"inputTokens": -1, "outputTokens": 3}, None),
        ({"inputTokens": "12", "outputTokens": 3}, None),
        (None, None),
    ],
)
def test_reported_usage_becomes_the_points_tokens(usage: Any, tokens: int | None) -> None:
    meta = {"taskType": "agent", "agentId": "a1", "usage": usage}
    point = point_from_result(envelope(metadata=meta), now=NOW)
    assert point is not None and point.tokens == tokens
