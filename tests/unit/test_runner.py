"""TaskRunner: retries and backoff, deadlines, cancellation, the cache, hooks and metadata.

Time is a fake clock; the runner's sleep advances it, so nothing here sleeps.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from taskplane.cache import InMemoryResultCache, RunnerCache
from taskplane.config import CacheConfig, RetryConfig
from taskplane.contract import CallContext, Handler, Outcome, RunContext, envelope, target_metadata
from taskplane.errors import (
    BackendError,
    CircuitOpenError,
    ClientError,
    ExecutionError,
    ForbiddenTargetError,
    InvalidPayloadError,
    NotFoundError,
    TaskCancelledError,
    TaskTimeoutError,
    TransportError,
    UpstreamError,
)
from taskplane.events import EventHooks, InMemoryEventBus
from taskplane.hooks import ExecutionHooks, HookChain
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.runner import TaskRunner, cacheable

START = 1_700_000_000.0


class FakeClock:
    """Epoch seconds that move only when told to (or when the runner sleeps)."""

    def __init__(self, now: float = START) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Scripted:
    """A handler that plays back outcomes and exceptions, one per attempt.

    Args:
        clock: Advanced by *cost_s* on every call, as if the call took that long.
        script: One ``Outcome`` (returned) or exception (raised) per attempt;
            the last entry repeats.
    """

    def __init__(self, clock: FakeClock, *script: Outcome | BaseException, cost_s: float = 0.0):
        self.clock = clock
        self.script = list(script)
        self.cost_s = cost_s
        self.calls: list[CallContext] = []

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        self.calls.append(call)
        self.clock.now += self.cost_s
        step = self.script[min(len(self.calls), len(self.script)) - 1]
        if isinstance(step, BaseException):
            raise step
        return step


class DictCache:
    """A tiny TaskCache: keeps successes by (type, target), counts lookups and stores."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], ExecutionResult] = {}
        self.lookups: list[str] = []
        self.stored: list[ExecutionResult] = []

    def lookup(self, task: ExecutionTask) -> ExecutionResult | None:
        self.lookups.append(task.id)
        return self.entries.get((task.type.value, task.target))

    def store(self, task: ExecutionTask, result: ExecutionResult) -> None:
        self.stored.append(result)
        self.entries[(task.type.value, task.target)] = result


class Recorder(ExecutionHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        self.calls.append(("started", task.id))

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        self.calls.append(("retrying", (attempt, delay_ms, error)))

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.calls.append(("cache_hit", result.task_id))

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.calls.append(("finished", result.status))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


class Exploding(ExecutionHooks):
    def on_started(self, task: ExecutionTask, ctx: RunContext) -> None:
        raise RuntimeError("listener broke")

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        raise RuntimeError("listener broke")

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        raise RuntimeError("listener broke")

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        raise RuntimeError("listener broke")


def make_task(
    task_type: TaskType = TaskType.AGENT, target: str = "a1", task_id: str = "t1", **metadata: Any
) -> ExecutionTask:
    return ExecutionTask(id=task_id, type=task_type, target=target, metadata=metadata)


def make_runner(
    clock: FakeClock,
    handler: Handler,
    *,
    task_type: TaskType = TaskType.AGENT,
    **options: Any,
) -> TaskRunner:
    return TaskRunner({task_type: handler}, clock=clock, sleep=clock.sleep, **options)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


OK = Outcome(result={"answer": 42}, confidence=0.9, metadata={"reasoning": "because"})


# --- success and metadata ------------------------------------------------------------------


def test_success_first_time(clock: FakeClock) -> None:
    handler = Scripted(clock, OK, cost_s=0.25)
    result = make_runner(clock, handler).run(make_task(), RunContext(plan_id="p1", worker="w1"))
    assert result.status is TaskStatus.SUCCESS
    assert (result.result, result.confidence, result.error) == ({"answer": 42}, 0.9, None)
    assert result.retries == 0
    assert result.execution_time == pytest.approx(250.0)
    assert result.metadata == {
        "target": "a1",
        "taskType": "agent",
        "agentId": "a1",
        "reasoning": "because",
        "cached": False,
        "attempts": 1,
        "worker": "w1",
        "planId": "p1",
    }
    assert clock.sleeps == []


def test_lone_task_has_no_plan_id(clock: FakeClock) -> None:
    result = make_runner(clock, Scripted(clock, OK)).run(make_task())
    assert "planId" not in result.metadata
    assert result.metadata["worker"] == ""


def test_pattern_metadata(clock: FakeClock) -> None:
    runner = make_runner(clock, Scripted(clock, OK), task_type=TaskType.PATTERN)
    result = runner.run(make_task(TaskType.PATTERN, "review"))
    assert result.metadata["pattern"] == "review"
    assert result.metadata["taskType"] == "pattern"
    assert "agentId" not in result.metadata


def test_agent_task_with_pattern_metadata() -> None:
    meta = target_metadata(make_task(pattern="consensus"))
    assert meta == {"target": "a1", "taskType": "agent", "agentId": "a1", "pattern": "consensus"}


def test_http_target_metadata() -> None:
    meta = target_metadata(make_task(TaskType.HTTP, "https://api.example.com/x"))
    assert meta == {"target": "https://api.example.com/x", "taskType": "http"}


def test_failure_envelope_carries_metadata(clock: FakeClock) -> None:
    handler = Scripted(clock, ClientError("HTTP 400: bad", 400))
    result = make_runner(clock, handler).run(make_task(), RunContext(plan_id="p", worker="w"))
    assert result.metadata == {
        "target": "a1",
        "taskType": "agent",
        "agentId": "a1",
        "cached": False,
        "attempts": 1,
        "worker": "w",
        "planId": "p",
    }


def test_envelope_without_context() -> None:
    result = envelope(make_task(), TaskStatus.CANCELLED, error="plan cancelled")
    assert result.status is TaskStatus.CANCELLED
    assert result.metadata["attempts"] == 0
    assert result.metadata["cached"] is False
    assert "worker" not in result.metadata


# --- retries and backoff -------------------------------------------------------------------


def test_retries_with_exponential_backoff_then_success(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), TransportError("refused"), OK)
    hooks = Recorder()
    result = make_runner(clock, handler, hooks=hooks).run(make_task())
    assert result.status is TaskStatus.SUCCESS
    assert result.retries == 2
    assert result.metadata["attempts"] == 3
    assert clock.sleeps == [1.0, 2.0]
    assert [c.attempt for c in handler.calls] == [1, 2, 3]
    assert result.execution_time == pytest.approx(3000.0)
    retrying = [data for name, data in hooks.calls if name == "retrying"]
    assert retrying == [(1, 1000.0, "refused"), (2, 2000.0, "refused")]


def test_retries_exhausted_is_a_failure(clock: FakeClock) -> None:
    handler = Scripted(clock, UpstreamError("HTTP 503: busy", 503))
    result = make_runner(clock, handler).run(make_task())
    assert result.status is TaskStatus.FAILURE
    assert result.error == "HTTP 503: busy"
    assert result.retries == 2
    assert result.metadata["attempts"] == 3
    assert clock.sleeps == [1.0, 2.0]


def test_timeouts_exhausted_is_a_timeout(clock: FakeClock) -> None:
    handler = Scripted(clock, TaskTimeoutError("no answer within 30s"))
    result = make_runner(clock, handler).run(make_task())
    assert result.status is TaskStatus.TIMEOUT
    assert result.error == "no answer within 30s"
    assert len(handler.calls) == 3


def test_last_error_decides_status(clock: FakeClock) -> None:
    handler = Scripted(clock, TaskTimeoutError("slow"), TransportError("reset"))
    result = make_runner(clock, handler, retry=RetryConfig(max_retries=1)).run(make_task())
    assert (result.status, result.error) == (TaskStatus.FAILURE, "reset")


def test_backend_error_is_retried(clock: FakeClock) -> None:
    handler = Scripted(clock, BackendError("redis down"), OK)
    result = make_runner(clock, handler).run(make_task())
    assert result.status is TaskStatus.SUCCESS
    assert clock.sleeps == [1.0]


def test_task_retries_override_config(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"))
    result = make_runner(clock, handler).run(make_task(retries=3))
    assert len(handler.calls) == 4
    assert clock.sleeps == [1.0, 2.0, 4.0]
    assert result.retries == 3


def test_zero_retries_means_one_attempt(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"))
    result = make_runner(clock, handler).run(make_task(retries=0))
    assert len(handler.calls) == 1
    assert result.retries == 0
    assert clock.sleeps == []


def test_custom_backoff(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"))
    retry = RetryConfig(max_retries=3, initial_delay=10, backoff_multiplier=3.0)
    make_runner(clock, handler, retry=retry).run(make_task())
    assert clock.sleeps == pytest.approx([0.01, 0.03, 0.09])


def test_retry_after_longer_than_backoff_is_honoured(clock: FakeClock) -> None:
    handler = Scripted(clock, UpstreamError("HTTP 429: slow down", 429, 5.0), OK)
    hooks = Recorder()
    result = make_runner(clock, handler, hooks=hooks).run(make_task())
    assert result.ok
    assert clock.sleeps == [5.0]
    assert ("retrying", (1, 5000.0, "HTTP 429: slow down")) in hooks.calls


def test_retry_after_shorter_than_backoff_keeps_backoff(clock: FakeClock) -> None:
    handler = Scripted(clock, UpstreamError("HTTP 429: slow down", 429, 0.1), OK)
    make_runner(clock, handler).run(make_task())
    assert clock.sleeps == [1.0]


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("Function f not found"),
        ClientError("HTTP 404: gone", 404),
        InvalidPayloadError("bad payload"),
        CircuitOpenError("circuit for a1 is open"),
        ForbiddenTargetError("169.254.169.254 is a link-local or metadata address"),
        ExecutionError("plain"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_non_retryable_errors_fail_at_once(clock: FakeClock, error: ExecutionError) -> None:
    handler = Scripted(clock, error, OK)
    result = make_runner(clock, handler).run(make_task())
    assert result.status is TaskStatus.FAILURE
    assert result.error == str(error)
    assert len(handler.calls) == 1
    assert result.retries == 0
    assert clock.sleeps == []


def test_not_found_message_is_kept_verbatim(clock: FakeClock) -> None:
    handler = Scripted(clock, NotFoundError("Function nope not found"))
    result = make_runner(clock, handler, task_type=TaskType.FUNCTION).run(
        make_task(TaskType.FUNCTION, "nope")
    )
    assert result.error == "Function nope not found"


def test_error_without_message_is_named_by_type(clock: FakeClock) -> None:
    result = make_runner(clock, Scripted(clock, ClientError(""))).run(make_task())
    assert result.error == "ClientError"


def test_unexpected_exception_becomes_failure_envelope(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    handler = Scripted(clock, KeyError("value"), OK)
    with caplog.at_level(logging.ERROR, logger="taskplane.runner"):
        result = make_runner(clock, handler).run(make_task())
    assert result.status is TaskStatus.FAILURE
    assert result.error == "internal error: KeyError: 'value'"
    assert len(handler.calls) == 1
    assert "t1" in caplog.text


def test_unknown_task_type_fails_clearly(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    result = make_runner(clock, handler).run(make_task(TaskType.HTTP, "https://example.com"))
    assert result.status is TaskStatus.FAILURE
    assert result.error is not None
    assert "'http'" in result.error
    assert result.metadata["attempts"] == 0
    assert handler.calls == []


# --- timeouts and deadlines ----------------------------------------------------------------


def test_call_timeout_defaults_to_runner_default(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler, default_timeout_ms=7000).run(make_task())
    assert handler.calls[0].timeout_s == 7.0


def test_call_timeout_from_task_metadata(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler).run(make_task(timeout=1500))
    assert handler.calls[0].timeout_s == 1.5


def test_deadline_caps_the_call_timeout(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler).run(make_task(), RunContext(deadline=START + 4.0))
    assert handler.calls[0].timeout_s == pytest.approx(4.0)


def test_deadline_cap_shrinks_with_each_attempt(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), OK, cost_s=0.5)
    result = make_runner(clock, handler).run(make_task(), RunContext(deadline=START + 10.0))
    assert result.ok
    # first call at 0 s; it takes 0.5 s, then 1 s of backoff: the second starts at 1.5 s
    assert [c.timeout_s for c in handler.calls] == pytest.approx([10.0, 8.5])


def test_deadline_does_not_raise_the_task_timeout(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler).run(make_task(timeout=2000), RunContext(deadline=START + 60))
    assert handler.calls[0].timeout_s == 2.0


def test_deadline_already_passed(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    result = make_runner(clock, handler).run(make_task(), RunContext(deadline=START))
    assert result.status is TaskStatus.TIMEOUT
    assert result.error == "plan deadline passed"
    assert handler.calls == []
    assert result.metadata["attempts"] == 0


def test_no_time_left_to_retry(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), OK, cost_s=0.6)
    result = make_runner(clock, handler).run(make_task(), RunContext(deadline=START + 1.5))
    assert result.status is TaskStatus.TIMEOUT
    assert result.error == "refused (no time left to retry)"
    assert clock.sleeps == []
    assert len(handler.calls) == 1


# --- cancellation --------------------------------------------------------------------------


def test_cancel_seen_between_attempts(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("refused"), OK)
    ctx = RunContext(plan_id="p1", is_cancelled=lambda: len(handler.calls) >= 1)
    result = make_runner(clock, handler).run(make_task(), ctx)
    assert result.status is TaskStatus.CANCELLED
    assert result.error == "plan cancelled"
    assert len(handler.calls) == 1
    assert result.metadata["attempts"] == 1
    assert result.metadata["planId"] == "p1"


def test_cancel_flag_not_read_after_success(clock: FakeClock) -> None:
    checks: list[bool] = []

    def cancelled() -> bool:
        checks.append(True)
        return True

    handler = Scripted(clock, OK)
    result = make_runner(clock, handler).run(make_task(), RunContext(is_cancelled=cancelled))
    assert result.ok
    assert checks == []  # the first attempt's check belongs to the caller (the plan member runner)


def test_handler_raising_cancelled(clock: FakeClock) -> None:
    handler = Scripted(clock, TaskCancelledError("plan p1 cancelled"))
    result = make_runner(clock, handler).run(make_task())
    assert (result.status, result.error) == (TaskStatus.CANCELLED, "plan p1 cancelled")
    assert len(handler.calls) == 1


# --- call context --------------------------------------------------------------------------


def test_call_context_carries_plan_and_lineage(clock: FakeClock) -> None:
    handler = Scripted(clock, TransportError("x"), OK)
    ctx = RunContext(plan_id="p1", lineage=("outer", "inner"))
    make_runner(clock, handler).run(make_task(), ctx)
    assert {c.plan_id for c in handler.calls} == {"p1"}
    assert {c.lineage for c in handler.calls} == {("outer", "inner")}
    assert {c.idempotency_key for c in handler.calls} == {"p1:t1"}


def test_idempotency_key_from_metadata(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler).run(make_task(idempotencyKey="order-7"))
    assert handler.calls[0].idempotency_key == "order-7"


def test_idempotency_key_of_lone_task(clock: FakeClock) -> None:
    handler = Scripted(clock, OK)
    make_runner(clock, handler).run(make_task())
    assert handler.calls[0].idempotency_key == "-:t1"


# --- cache ---------------------------------------------------------------------------------


def test_cache_miss_then_store_then_hit(clock: FakeClock) -> None:
    cache = DictCache()
    handler = Scripted(clock, OK, cost_s=0.1)
    hooks = Recorder()
    runner = make_runner(clock, handler, cache=cache, hooks=hooks)

    first = runner.run(make_task(task_id="t1"), RunContext(plan_id="p1", worker="w1"))
    assert first.ok
    assert first.metadata["cached"] is False
    assert cache.stored == [first]

    second = runner.run(make_task(task_id="t2"), RunContext(plan_id="p2", worker="w2"))
    assert len(handler.calls) == 1  # the target was not called again
    assert second.task_id == "t2"
    assert second.result == first.result
    assert second.confidence == first.confidence
    assert second.retries == 0
    assert second.metadata["cached"] is True
    assert second.metadata["attempts"] == 0
    assert second.metadata["worker"] == "w2"
    assert second.metadata["planId"] == "p2"
    assert second.metadata["agentId"] == "a1"
    assert cache.lookups == ["t1", "t2"]
    assert hooks.names() == ["started", "finished", "started", "cache_hit", "finished"]
    assert hooks.calls[3] == ("cache_hit", "t2")


def test_failures_are_not_stored(clock: FakeClock) -> None:
    cache = DictCache()
    make_runner(clock, Scripted(clock, ClientError("no")), cache=cache).run(make_task())
    assert cache.stored == []


def test_agent_task_opting_out_skips_cache(clock: FakeClock) -> None:
    cache = DictCache()
    make_runner(clock, Scripted(clock, OK), cache=cache).run(make_task(cache=False))
    assert cache.lookups == []
    assert cache.stored == []


@pytest.mark.parametrize("task_type", [TaskType.FUNCTION, TaskType.HTTP])
def test_function_and_http_cached_only_when_asked(clock: FakeClock, task_type: TaskType) -> None:
    cache = DictCache()
    runner = make_runner(clock, Scripted(clock, OK), cache=cache, task_type=task_type)
    runner.run(make_task(task_type, "f"))
    assert cache.lookups == []
    runner.run(make_task(task_type, "f", task_id="t2", cache=True))
    assert cache.lookups == ["t2"]
    assert len(cache.stored) == 1


def test_uses_cache_without_cache_is_false(clock: FakeClock) -> None:
    runner = make_runner(clock, Scripted(clock, OK))
    assert runner.uses_cache(make_task(cache=True)) is False


def test_a_failing_cache_is_a_miss_and_a_lost_store(clock: FakeClock) -> None:
    def capabilities_of(agent: str) -> list[str]:
        raise BackendError("redis://registry is down")

    cache = RunnerCache(InMemoryResultCache(CacheConfig()), capabilities_of=capabilities_of)
    handler = Scripted(clock, OK)
    result = make_runner(clock, handler, cache=cache).run(make_task())
    assert result.ok
    assert len(handler.calls) == 1
    assert cache.failures == 2  # the lookup and the store, neither raised into the runner


def test_step_leaves_on_finished_to_whoever_records_the_outcome(clock: FakeClock) -> None:
    hooks = Recorder()
    runner = make_runner(clock, Scripted(clock, OK, OK), hooks=hooks)
    assert runner.step(make_task(), RunContext(plan_id="p")).ok  # type: ignore[union-attr]
    assert hooks.names() == ["started"]
    assert runner.run(make_task()).ok
    assert hooks.names() == ["started", "started", "finished"]


# --- hooks ---------------------------------------------------------------------------------


def test_hooks_see_every_step(clock: FakeClock) -> None:
    hooks = Recorder()
    handler = Scripted(clock, TransportError("refused"), OK)
    make_runner(clock, handler, hooks=HookChain([hooks])).run(make_task())
    assert hooks.names() == ["started", "retrying", "finished"]
    assert hooks.calls[-1] == ("finished", TaskStatus.SUCCESS)


def test_finished_hook_sees_failures(clock: FakeClock) -> None:
    hooks = Recorder()
    make_runner(clock, Scripted(clock, KeyError("x")), hooks=hooks).run(make_task())
    assert hooks.calls[-1] == ("finished", TaskStatus.FAILURE)


def test_raising_hook_in_a_chain_is_contained(clock: FakeClock) -> None:
    after = Recorder()
    cache = DictCache()
    runner = make_runner(
        clock,
        Scripted(clock, TransportError("refused"), OK),
        hooks=HookChain([Exploding(), after]),
        cache=cache,
    )
    assert runner.run(make_task()).ok
    assert after.names() == ["started", "retrying", "finished"]
    assert runner.run(make_task(task_id="t2")).metadata["cached"] is True


def test_raising_hook_passed_alone_is_contained(clock: FakeClock) -> None:
    runner = make_runner(clock, Scripted(clock, TransportError("refused"), OK), hooks=Exploding())
    result = runner.run(make_task())
    assert result.ok
    assert result.retries == 1


def test_hook_chain_add_and_emit_contain_failures(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    class Listener(ExecutionHooks):
        def emit(self, event_type: str, data: dict[str, Any]) -> None:
            seen.append((event_type, data))

    class Broken(ExecutionHooks):
        def emit(self, event_type: str, data: dict[str, Any]) -> None:
            raise RuntimeError("listener broke")

    chain = HookChain([Broken()])
    chain.add(Listener())
    with caplog.at_level(logging.ERROR, logger="taskplane.hooks"):
        chain.emit("circuit:open", {"agentId": "a1", "failures": 5})
    assert seen == [("circuit:open", {"agentId": "a1", "failures": 5})]
    assert "Broken.emit" in caplog.text


def test_base_hooks_are_no_ops(clock: FakeClock) -> None:
    hooks = ExecutionHooks()
    task, ctx = make_task(), RunContext()
    result = envelope(task, TaskStatus.SUCCESS)
    hooks.on_started(task, ctx)
    hooks.on_retrying(task, ctx, attempt=1, delay_ms=1.0, error="x")
    hooks.on_cache_hit(task, ctx, result)
    hooks.on_finished(task, ctx, result)
    hooks.emit("anomaly:detected", {})
    assert make_runner(clock, Scripted(clock, OK), hooks=hooks).run(task).ok


# --- cache helpers used by the engine ------------------------------------------------------


@pytest.mark.parametrize(
    ("task_type", "flag", "expected"),
    [
        (TaskType.AGENT, None, True),
        (TaskType.PATTERN, None, True),
        (TaskType.AGENT, False, False),
        (TaskType.FUNCTION, None, False),
        (TaskType.HTTP, None, False),
        (TaskType.FUNCTION, True, True),
        (TaskType.HTTP, True, True),
    ],
)
def test_cacheable(task_type: TaskType, flag: bool | None, expected: bool) -> None:
    assert cacheable(make_task(task_type, "x", cache=flag)) is expected


def test_begin_answers_a_hit_readdressed_to_this_task_and_run() -> None:
    cache = DictCache()
    stored = ExecutionResult(
        task_id="old",
        status=TaskStatus.SUCCESS,
        result=1,
        confidence=0.9,
        retries=2,
        metadata={"agentId": "a1", "worker": "w-old", "planId": "p-old", "attempts": 3},
    )
    cache.entries[("agent", "a1")] = stored
    hooks = Recorder()
    runner = TaskRunner({}, cache=cache, hooks=hooks)
    hit = runner.begin(make_task(task_id="new"), RunContext(worker="w-new"))
    assert hit is not None
    assert (hit.task_id, hit.retries, hit.result) == ("new", 0, 1)
    assert hit.metadata["cached"] is True
    assert hit.metadata["worker"] == "w-new"
    assert hit.metadata["attempts"] == 0
    assert "planId" not in hit.metadata  # a lone task: the storing plan's id does not leak
    assert stored.task_id == "old"  # the cached envelope itself is untouched
    assert hooks.names() == ["started", "cache_hit"]


def test_begin_on_a_miss_announces_the_start_only_when_asked() -> None:
    hooks = Recorder()
    runner = TaskRunner({}, cache=DictCache(), hooks=hooks)
    assert runner.begin(make_task(), RunContext(), announce_miss=False) is None
    assert hooks.names() == []
    assert runner.begin(make_task(), RunContext()) is None
    assert hooks.names() == ["started"]
    assert TaskRunner({}, hooks=hooks).begin(make_task(cache=True), RunContext()) is None


def test_the_events_hook_announces_only_an_outcome_no_plan_store_recorded(
    clock: FakeClock,
) -> None:
    bus = InMemoryEventBus()
    hooks = EventHooks(bus, worker="engine")
    runner = make_runner(clock, Scripted(clock, OK), hooks=hooks)
    runner.run(make_task())  # a lone task run here: its outcome is announced by the hook
    hooks.on_finished(
        make_task(), RunContext(plan_id="p"), envelope(make_task(), TaskStatus.SUCCESS)
    )
    kinds = [event["type"] for event in bus.recent()]
    assert kinds == ["task:started", "task:completed"]  # the plan member's is the store's
