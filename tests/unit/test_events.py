"""Events: the in-memory bus, payload helpers, hooks, forwarding and rendering."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskplane.contract import RunContext
from taskplane.events import (
    EVENT_TYPES,
    TASK_CACHE_HIT,
    TASK_COMPLETED,
    TASK_FAILED,
    TASK_RETRYING,
    TASK_STARTED,
    Event,
    EventHooks,
    InMemoryEventBus,
    LogThrottle,
    control_plane_name,
    finished_event,
    format_event,
    forward_events,
    started_event,
)
from taskplane.hooks import ExecutionHooks, HookChain
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def task(task_id: str = "t1") -> ExecutionTask:
    return ExecutionTask(id=task_id, type="agent", target="a1", payload={"q": 1})


def success(task_id: str = "t1") -> ExecutionResult:
    return ExecutionResult(
        task_id=task_id,
        status=TaskStatus.SUCCESS,
        result={"v": 1},
        confidence=0.92,
        execution_time=123.4,
    )


def failure(task_id: str = "t1", status: TaskStatus = TaskStatus.FAILURE) -> ExecutionResult:
    return ExecutionResult(task_id=task_id, status=status, error="boom", retries=2)


# --- in-memory bus -------------------------------------------------------------------------


def test_event_shape_and_synchronous_delivery() -> None:
    bus = InMemoryEventBus(clock=FakeClock(42.5))
    got: list[Event] = []
    bus.subscribe(got.append)
    bus.publish(TASK_STARTED, {"taskId": "t1"})
    assert got == [{"type": TASK_STARTED, "data": {"taskId": "t1"}, "timestamp": 42.5, "id": "1-0"}]


def test_since_resumes_after_an_event_id_without_repeats() -> None:
    bus = InMemoryEventBus()
    first: list[Event] = []
    subscription = bus.subscribe(first.append)
    for i in range(5):
        bus.publish(TASK_COMPLETED, {"i": i})
    subscription.close()
    last_seen = first[2]["id"]  # a subscriber that handled three events, then stopped
    for i in range(5, 8):
        bus.publish(TASK_COMPLETED, {"i": i})
    resumed: list[Event] = []
    bus.subscribe(resumed.append, since=last_seen)
    bus.publish(TASK_COMPLETED, {"i": 8})
    assert [e["data"]["i"] for e in resumed] == [3, 4, 5, 6, 7, 8]
    later: list[Event] = []
    bus.subscribe(later.append)  # no since: only what is published from now on
    bus.publish(TASK_COMPLETED, {"i": 9})
    assert [e["data"]["i"] for e in later] == [9]


@pytest.mark.parametrize("bad", ["", "abc", "1-x", "-1-0"])
def test_since_must_be_an_event_id(bad: str) -> None:
    with pytest.raises(ValueError, match="since"):
        InMemoryEventBus().subscribe(lambda event: None, since=bad)


def test_subscription_filters_by_type_and_star_means_all() -> None:
    bus = InMemoryEventBus()
    only_done: list[Event] = []
    star: list[Event] = []
    every: list[Event] = []
    bus.subscribe(only_done.append, event_types=[TASK_COMPLETED, TASK_FAILED])
    bus.subscribe(star.append, event_types=["*"])
    bus.subscribe(every.append)
    for event_type in (TASK_STARTED, TASK_COMPLETED, TASK_RETRYING, TASK_FAILED):
        bus.publish(event_type, {})
    assert [e["type"] for e in only_done] == [TASK_COMPLETED, TASK_FAILED]
    assert len(star) == len(every) == 4


def test_closed_subscription_receives_nothing() -> None:
    bus = InMemoryEventBus()
    got: list[Event] = []
    subscription = bus.subscribe(got.append)
    bus.publish(TASK_STARTED, {})
    subscription.close()
    subscription.close()  # idempotent
    bus.publish(TASK_STARTED, {})
    assert len(got) == 1
    assert bus.subscriber_count == 0


def test_subscription_as_context_manager() -> None:
    bus = InMemoryEventBus()
    got: list[Event] = []
    with bus.subscribe(got.append):
        bus.publish(TASK_STARTED, {})
    bus.publish(TASK_STARTED, {})
    assert len(got) == 1


def test_failing_handler_is_logged_and_others_still_receive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = InMemoryEventBus()
    got: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("handler bug")

    bus.subscribe(broken)
    bus.subscribe(got.append)
    with caplog.at_level(logging.ERROR):
        bus.publish(TASK_STARTED, {})
        bus.publish(TASK_COMPLETED, {})
    assert len(got) == 2
    assert sum("handler bug" in (r.exc_text or "") for r in caplog.records) == 2


def test_recent_is_newest_last_capped_and_filtered() -> None:
    bus = InMemoryEventBus(maxlen=5)
    for i in range(8):
        bus.publish(TASK_STARTED if i % 2 else TASK_COMPLETED, {"i": i})
    assert [e["data"]["i"] for e in bus.recent()] == [3, 4, 5, 6, 7]
    assert [e["data"]["i"] for e in bus.recent(2)] == [6, 7]
    assert [e["data"]["i"] for e in bus.recent(10, TASK_STARTED)] == [3, 5, 7]
    assert bus.recent(0) == []


def test_close_ends_every_subscription() -> None:
    bus = InMemoryEventBus()
    got: list[Event] = []
    bus.subscribe(got.append)
    bus.subscribe(got.append, event_types=[TASK_FAILED])
    bus.close()
    bus.publish(TASK_FAILED, {})
    assert got == []


def test_event_types_lists_every_name() -> None:
    assert set(EVENT_TYPES) == {
        "task:started",
        "task:completed",
        "task:failed",
        "task:retrying",
        "task:cache-hit",
        "circuit:open",
        "circuit:close",
        "anomaly:detected",
        "plan:budget-warning",
        "plan:budget-exhausted",
    }


def test_log_throttle_allows_one_per_interval() -> None:
    clock = FakeClock(0.0)
    throttle = LogThrottle(30.0, clock=clock)
    assert throttle.due() is True
    clock.now = 29.0
    assert throttle.due() is False
    clock.now = 30.0
    assert throttle.due() is True


# --- payload helpers -----------------------------------------------------------------------


def test_started_event_fields() -> None:
    assert started_event(task(), plan_id="p1", worker="w1") == (
        TASK_STARTED,
        {"taskId": "t1", "type": "agent", "target": "a1", "planId": "p1", "worker": "w1"},
    )


def test_started_event_accepts_the_json_form() -> None:
    event_type, data = started_event(task().to_json_dict(), plan_id=None, worker="w1")
    assert event_type == TASK_STARTED and data["taskId"] == "t1" and data["planId"] is None


def test_finished_event_for_success() -> None:
    assert finished_event(success(), plan_id="p1", worker="w1") == (
        TASK_COMPLETED,
        {
            "taskId": "t1",
            "result": {"v": 1},
            "confidence": 0.92,
            "executionTime": 123.4,
            "usage": None,
            "planId": "p1",
            "worker": "w1",
        },
    )


def test_finished_event_carries_the_reported_usage() -> None:
    used = {"inputTokens": 120, "outputTokens": 30}
    wire = success().to_json_dict()
    wire["metadata"]["usage"] = used
    assert finished_event(wire, plan_id=None, worker="w1")[1]["usage"] == used


@pytest.mark.parametrize("status", [TaskStatus.FAILURE, TaskStatus.TIMEOUT, TaskStatus.CANCELLED])
def test_finished_event_for_anything_else_is_failed(status: TaskStatus) -> None:
    assert finished_event(failure(status=status).to_json_dict(), plan_id="p1", worker="w1") == (
        TASK_FAILED,
        {
            "taskId": "t1",
            "error": "boom",
            "retries": 2,
            "status": status.value,
            "planId": "p1",
            "worker": "w1",
        },
    )


# --- hooks ---------------------------------------------------------------------------------


def test_event_hooks_publish_retries_and_cache_hits() -> None:
    bus = InMemoryEventBus()
    hooks = EventHooks(bus, worker="w1")
    assert isinstance(hooks, ExecutionHooks)
    ctx = RunContext(plan_id="p1", worker="w1")
    hooks.on_retrying(task(), ctx, attempt=1, delay_ms=1000.0, error="connection refused")
    hooks.on_cache_hit(task(), ctx, success())
    hooks.on_finished(task(), ctx, success())  # a plan member's: written by the plan store
    hooks.emit("circuit:open", {"agentId": "a1", "failures": 5})
    assert [(e["type"], e["data"]) for e in bus.recent()] == [
        (
            TASK_RETRYING,
            {
                "taskId": "t1",
                "attempt": 1,
                "delay": 1000.0,
                "error": "connection refused",
                "planId": "p1",
                "worker": "w1",
            },
        ),
        (TASK_CACHE_HIT, {"taskId": "t1", "planId": "p1", "worker": "w1"}),
        ("circuit:open", {"agentId": "a1", "failures": 5}),
    ]


def test_event_hooks_work_inside_a_hook_chain() -> None:
    bus = InMemoryEventBus()
    chain = HookChain([EventHooks(bus, worker="w1")])
    chain.on_cache_hit(task(), RunContext(), success())
    assert bus.recent()[0]["data"] == {"taskId": "t1", "planId": None, "worker": "w1"}


# --- forwarding to a control plane ---------------------------------------------------------


class ControlBus:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit_event(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        ("task:completed", "agent_task_completed"),
        ("task:failed", "agent_task_failed"),
        ("task:started", "agent_task_started"),
        ("task:retrying", "agent_task_retrying"),
        ("task:cache-hit", "agent_task_cache_hit"),
        ("circuit:open", "circuit_open"),
        ("anomaly:detected", "anomaly_detected"),
        ("custom:some-thing", "custom_some_thing"),
    ],
)
def test_control_plane_names(ours: str, theirs: str) -> None:
    assert control_plane_name(ours) == theirs


def test_forward_events_maps_onto_the_control_bus() -> None:
    bus = InMemoryEventBus(clock=FakeClock(99.0))
    control = ControlBus()
    subscription = forward_events(bus, control)
    bus.publish(*finished_event(success(), plan_id="p1", worker="w1"))
    bus.publish("circuit:open", {"agentId": "a1", "failures": 5})
    subscription.close()
    bus.publish(TASK_STARTED, {"planId": "p1"})
    assert control.events == [
        {
            "executionId": "p1",
            "type": "agent_task_completed",
            "data": finished_event(success(), plan_id="p1", worker="w1")[1],
            "timestamp": 99.0,
        },
        {
            "executionId": None,
            "type": "circuit_open",
            "data": {"agentId": "a1", "failures": 5},
            "timestamp": 99.0,
        },
    ]


# --- rendering -----------------------------------------------------------------------------


def test_format_event_is_one_readable_line() -> None:
    _, data = finished_event(success(), plan_id="p1", worker="w1")
    line = format_event({"type": TASK_COMPLETED, "data": data, "timestamp": 1_700_000_000.25})
    assert "\n" not in line
    assert "task:completed" in line
    assert "taskId=t1" in line and "planId=p1" in line and "confidence=0.92" in line
    assert "executionTime=123ms" in line and line.endswith("worker=w1")
    assert ".250 " in line


def test_format_event_truncates_long_values_and_survives_odd_input() -> None:
    line = format_event({"type": TASK_FAILED, "data": {"taskId": "t", "error": "x" * 500}})
    assert len(line) < 200 and "…" in line
    assert "task:failed" in format_event({"type": TASK_FAILED, "timestamp": "soon"})
