"""One step at a time: what the runner tells a worker to do, with a fake clock and no sleep.

A worker never waits: each delivery of a task is one :meth:`TaskRunner.step`,
answered by the final envelope or by a :class:`Reschedule` (when to come back,
as which attempt). These tests drive the steps by hand the way the Celery task
does, moving the clock instead of sleeping.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from taskplane.config import RetryConfig
from taskplane.contract import RunContext
from taskplane.errors import RateLimitedError, TransportError, UpstreamError
from taskplane.hooks import ExecutionHooks
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.runner import Attempt, Reschedule, TaskRunner
from tests.unit.test_runner import OK, FakeClock, Scripted, make_task

RETRY = RetryConfig(max_retries=2, initial_delay=1000, backoff_multiplier=2)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class Recorder(ExecutionHooks):
    def __init__(self) -> None:
        self.seen: list[tuple[str, Any]] = []

    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        self.seen.append(("started", task.id))

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        self.seen.append(("retrying", (attempt, delay_ms)))

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.seen.append(("finished", result.status.value))


def runner(clock: FakeClock, handler: Scripted, hooks: ExecutionHooks | None = None) -> TaskRunner:
    return TaskRunner(
        {TaskType.AGENT: handler}, retry=RETRY, clock=clock, sleep=clock.sleep, hooks=hooks
    )


def deliver(
    r: TaskRunner, clock: FakeClock, ctx: RunContext, attempt: Attempt | None = None
) -> ExecutionResult | Reschedule:
    """One delivery, its attempt sent through the message's JSON as Celery carries it."""
    carried = None if attempt is None else Attempt.from_json(attempt.to_json())
    return r.step(make_task(), ctx, carried)


def test_backoff_is_a_reschedule_of_one_then_two_seconds(clock: FakeClock) -> None:
    hooks = Recorder()
    handler = Scripted(clock, TransportError("refused"), TransportError("refused"), OK)
    r = runner(clock, handler, hooks)
    ctx = RunContext(plan_id="p")
    first = deliver(r, clock, ctx)
    assert isinstance(first, Reschedule) and first.reason == "retry"
    assert first.delay_s == pytest.approx(1.0) and first.attempt.number == 2
    clock.now += first.delay_s
    second = deliver(r, clock, ctx, first.attempt)
    assert isinstance(second, Reschedule) and second.delay_s == pytest.approx(2.0)
    clock.now += second.delay_s
    done = deliver(r, clock, ctx, second.attempt)
    assert isinstance(done, ExecutionResult) and done.status is TaskStatus.SUCCESS
    assert done.retries == 2 and done.metadata["attempts"] == 3
    assert done.execution_time == pytest.approx(3000.0)  # counted from the first delivery
    assert hooks.seen == [
        ("started", "t1"),
        ("retrying", (1, 1000.0)),
        ("retrying", (2, 2000.0)),
    ]  # no on_finished: a step's envelope is told once its caller has recorded it
    assert clock.sleeps == []


@pytest.mark.parametrize(
    ("hint", "expected_s"),
    [(5.0, 5.0), (0.2, 1.0), (3600.0, 60.0), (-4.0, 1.0), (math.nan, 1.0), (math.inf, 1.0)],
)
def test_retry_after_is_the_countdown_when_longer_and_is_clamped(
    clock: FakeClock, hint: float, expected_s: float
) -> None:
    handler = Scripted(clock, UpstreamError("HTTP 429", 429, hint), OK)
    step = deliver(runner(clock, handler), clock, RunContext())
    assert isinstance(step, Reschedule) and step.delay_s == pytest.approx(expected_s)


def test_no_retry_is_scheduled_past_the_deadline(clock: FakeClock) -> None:
    handler = Scripted(clock, UpstreamError("HTTP 503", 503, 5.0))
    step = deliver(runner(clock, handler), clock, RunContext(deadline=clock.now + 3.0))
    assert isinstance(step, ExecutionResult) and step.status is TaskStatus.TIMEOUT
    assert step.error == "HTTP 503 (no time left to retry)" and step.retries == 0


def test_a_cancelled_plan_stops_the_retries(clock: FakeClock) -> None:
    cancelled = False
    ctx = RunContext(is_cancelled=lambda: cancelled)
    handler = Scripted(clock, TransportError("refused"), OK)
    r = runner(clock, handler)
    first = deliver(r, clock, ctx)
    assert isinstance(first, Reschedule)
    cancelled = True
    clock.now += first.delay_s
    done = deliver(r, clock, ctx, first.attempt)
    assert isinstance(done, ExecutionResult) and done.status is TaskStatus.CANCELLED
    assert len(handler.calls) == 1 and done.metadata["attempts"] == 1


def test_an_early_delivery_comes_back_later_without_calling(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), OK)
    r = runner(clock, handler)
    first = deliver(r, clock, RunContext())
    assert isinstance(first, Reschedule)
    clock.now += 0.4  # a countdown capped below the wait brought it back early
    early = deliver(r, clock, RunContext(), first.attempt)
    assert isinstance(early, Reschedule) and early.reason == "early"
    assert early.delay_s == pytest.approx(0.6) and early.attempt == first.attempt
    assert len(handler.calls) == 1


def test_a_booked_rate_limit_slot_is_not_an_attempt(clock: FakeClock) -> None:
    hooks = Recorder()
    limited = RateLimitedError("agent a1: rate limit", 0.75, reserved=True)
    handler = Scripted(clock, limited, OK)
    r = runner(clock, handler, hooks)
    wait = deliver(r, clock, RunContext())
    assert isinstance(wait, Reschedule) and wait.reason == "rate-limit"
    assert wait.delay_s == pytest.approx(0.75)
    assert wait.attempt.number == 1 and wait.attempt.slot_reserved
    clock.now += wait.delay_s
    done = deliver(r, clock, RunContext(), wait.attempt)
    assert isinstance(done, ExecutionResult) and done.status is TaskStatus.SUCCESS
    assert done.retries == 0 and done.metadata["attempts"] == 1
    assert handler.calls[1].slot_reserved  # the call used the slot it booked
    assert [kind for kind, _ in hooks.seen] == ["started"]  # no task:retrying


def test_a_slot_after_the_deadline_times_out_at_once(clock: FakeClock) -> None:
    handler = Scripted(clock, RateLimitedError("agent a1: rate limit", 9.0, reserved=False))
    done = deliver(runner(clock, handler), clock, RunContext(deadline=clock.now + 5))
    assert isinstance(done, ExecutionResult) and done.status is TaskStatus.TIMEOUT
    assert "no slot before the deadline" in (done.error or "")
    assert done.metadata["attempts"] == 0


def test_an_attempt_survives_the_message_round_trip() -> None:
    attempt = Attempt(3, started=1700000000.5, not_before=1700000004.5, slot_reserved=True)
    assert Attempt.from_json(attempt.to_json()) == attempt
    assert Attempt.from_json(None) == Attempt()
    assert Attempt.from_json({"n": 0}).number == 1


def test_run_loops_over_steps_with_the_injected_sleep(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), OK)
    result = runner(clock, handler).run(make_task(), RunContext())
    assert result.status is TaskStatus.SUCCESS and clock.sleeps == [pytest.approx(1.0)]
