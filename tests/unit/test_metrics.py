"""Worker metrics: what a runner's calls, retries and results add up to, and a taken port.

A fake clock drives the runner and the call timer; nothing here sleeps.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest

from taskplane.config import RetryConfig, Settings
from taskplane.contract import CallContext, Outcome
from taskplane.errors import CircuitOpenError, RateLimitedError, ThrottledError, UpstreamError
from taskplane.hooks import HookChain
from taskplane.models import ExecutionTask, TaskType
from taskplane.observability.metrics import (
    MetricsHooks,
    WorkerMetrics,
    agent_label,
    call_outcome,
)
from taskplane.plan import RunRecord
from taskplane.runner import TaskRunner


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class Scripted:
    """A handler that raises or answers from a script, taking 0.25 s of fake time per call."""

    def __init__(self, clock: Clock, *script: Exception | Outcome) -> None:
        self.clock, self.script = clock, list(script)

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        self.clock.now += 0.25
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def task(target: str = "rev", kind: str = "agent", **metadata: Any) -> ExecutionTask:
    return ExecutionTask.model_validate(
        {"id": "t1", "type": kind, "target": target, "payload": {}, "metadata": metadata}
    )


def runner_with(metrics: WorkerMetrics, handler: Scripted, clock: Clock) -> TaskRunner:
    handlers = {TaskType.AGENT: metrics.measure(handler)}
    runner = TaskRunner(
        handlers, retry=RetryConfig(max_retries=2, initial_delay=10), clock=clock, sleep=clock.sleep
    )
    runner.hooks = HookChain([MetricsHooks(metrics, uses_cache=lambda t: False)])
    return runner


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_a_retry_then_success_counts_each_call_and_the_retry_reason() -> None:
    clock = Clock()
    metrics = WorkerMetrics(clock=clock)
    used = {"usage": {"inputTokens": 7, "outputTokens": 3}}
    handler = Scripted(clock, UpstreamError("down", 503), Outcome("x", 0.75, used))
    result = runner_with(metrics, handler, clock).run(task())
    assert result.ok and result.retries == 1
    assert (
        sample(metrics, "taskplane_agent_calls_total", agent="rev", outcome="upstream_error") == 1
    )
    assert sample(metrics, "taskplane_agent_calls_total", agent="rev", outcome="success") == 1
    assert sample(metrics, "taskplane_retries_total", agent="rev", reason="upstream_error") == 1
    assert sample(metrics, "taskplane_agent_call_duration_seconds_count", agent="rev") == 2
    assert sample(metrics, "taskplane_agent_call_duration_seconds_sum", agent="rev") == 0.5
    assert sample(metrics, "taskplane_agent_in_flight", agent="rev") == 0
    assert sample(metrics, "taskplane_tasks_total", type="agent", status="success") == 1
    assert sample(metrics, "taskplane_confidence_sum", agent="rev") == 0.75
    assert sample(metrics, "taskplane_tokens_total", agent="rev", direction="input") == 7
    assert sample(metrics, "taskplane_tokens_total", agent="rev", direction="output") == 3
    assert metrics.reasons == {}  # nothing kept once the task ended


def test_a_refused_call_is_counted_but_not_timed_and_the_failure_is_a_task_status() -> None:
    clock = Clock()
    metrics = WorkerMetrics(clock=clock)
    runner = runner_with(metrics, Scripted(clock, CircuitOpenError("open")), clock)
    result = runner.run(task())
    assert result.status.value == "failure"
    assert sample(metrics, "taskplane_agent_calls_total", agent="rev", outcome="circuit_open") == 1
    assert sample(metrics, "taskplane_agent_call_duration_seconds_count", agent="rev") == 0
    assert sample(metrics, "taskplane_tasks_total", type="agent", status="failure") == 1
    assert sample(metrics, "taskplane_retries_total", agent="rev", reason="error") == 0


def test_a_booked_rate_limit_wait_is_observed_and_is_not_a_retry() -> None:
    clock = Clock()
    metrics = WorkerMetrics(clock=clock)
    handler = Scripted(clock, RateLimitedError("rpm", 1.5, reserved=True), Outcome("x", 0.9))
    result = runner_with(metrics, handler, clock).run(task())
    assert result.ok and result.retries == 0
    assert sample(metrics, "taskplane_rate_limit_wait_seconds_sum", agent="rev") == 1.5
    assert sample(metrics, "taskplane_rate_limit_wait_seconds_count", agent="rev") == 1
    assert sample(metrics, "taskplane_agent_calls_total", agent="rev", outcome="rate_limited") == 1
    assert sample(metrics, "taskplane_agent_call_duration_seconds_count", agent="rev") == 1
    assert metrics.reasons == {}


def test_a_plan_end_counts_its_strategy_state_and_duration() -> None:
    metrics = WorkerMetrics()

    def run(rule: str, state: str, **more: str) -> RunRecord:
        record = RunRecord.parse(
            "p", {"rule": rule, "state": state, "n": "1", "deadline": "0", **more}
        )
        assert record is not None
        return record

    metrics.plan_ended(run("all", "completed", created="100.0"), now=102.5)
    metrics.plan_ended(run("race", "failed"), now=103.0)
    assert sample(metrics, "taskplane_plans_total", strategy="all", state="completed") == 1
    assert sample(metrics, "taskplane_plans_total", strategy="race", state="failed") == 1
    assert sample(metrics, "taskplane_plan_duration_seconds_sum", strategy="all") == 2.5
    assert sample(metrics, "taskplane_plan_duration_seconds_count", strategy="race") == 0


def test_labels_are_bounded() -> None:
    assert agent_label(task("rev")) == "rev"
    assert agent_label(task("examples.functions.add", kind="function")) == "function"
    assert call_outcome(None) == "success"
    assert call_outcome(ThrottledError("slow", 429)) == "throttled"
    assert call_outcome(ValueError("x")) == "error"


def test_anomaly_events_are_counted_by_agent_and_type() -> None:
    metrics = WorkerMetrics()
    hooks = MetricsHooks(metrics, uses_cache=lambda t: True)
    hooks.emit("anomaly:detected", {"agentId": "rev", "type": "sudden_drop"})
    hooks.emit("circuit:open", {"agentId": "rev", "failures": 5})
    assert sample(metrics, "taskplane_anomalies_total", agent="rev", type="sudden_drop") == 1


def test_a_taken_port_is_one_clear_error_line_and_no_server(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        metrics = WorkerMetrics()
        with caplog.at_level(logging.ERROR, logger="taskplane.observability.metrics"):
            assert metrics.serve(port, addr="127.0.0.1") is False
    (record,) = caplog.records
    assert record.getMessage().startswith(f"TASKPLANE_METRICS_PORT={port}: cannot serve /metrics")
    assert "\n" not in record.getMessage()
    assert metrics.server is None


def test_metrics_port_is_off_by_default_and_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TASKPLANE_METRICS_PORT", raising=False)
    assert Settings().metrics_port is None
    monkeypatch.setenv("TASKPLANE_METRICS_PORT", "9464")
    assert Settings().metrics_port == 9464
