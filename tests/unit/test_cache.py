"""Result cache: key stability, the in-memory cache with a fake clock, RunnerCache."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest

from taskplane.cache import InMemoryResultCache, ResultCache, RunnerCache, cache_key
from taskplane.config import CacheConfig
from taskplane.errors import BackendError, ValidationError
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def result(task_id: str = "t1", *, confidence: float | None = 0.9, **kw: Any) -> ExecutionResult:
    return ExecutionResult(
        task_id=task_id,
        status=kw.pop("status", TaskStatus.SUCCESS),
        result=kw.pop("value", {"answer": task_id}),
        confidence=confidence,
        execution_time=12.5,
        metadata={"agentId": "a1", "cached": False},
        **kw,
    )


# --- cache_key -----------------------------------------------------------------------------


def test_key_is_sha256_of_canonical_json() -> None:
    expected = hashlib.sha256(
        b'{"capabilities":["a","b"],"input":{"x":1,"y":[2,3]},"pattern":"p"}'
    ).hexdigest()
    assert cache_key("p", {"y": [2, 3], "x": 1}, ["b", "a"]) == expected


def test_key_ignores_input_key_order_and_capability_order() -> None:
    one = cache_key("p", {"a": 1, "b": {"c": 2, "d": 3}}, ["x", "y", "z"])
    two = cache_key("p", {"b": {"d": 3, "c": 2}, "a": 1}, ("z", "x", "y"))
    assert one == two
    assert len(one) == 64


@pytest.mark.parametrize(
    ("pattern", "payload", "capabilities"),
    [("q", {"a": 1}, ["x"]), ("p", {"a": 2}, ["x"]), ("p", {"a": 1}, ["x", "w"])],
)
def test_key_changes_with_pattern_input_or_capabilities(
    pattern: str, payload: dict[str, Any], capabilities: list[str]
) -> None:
    assert cache_key(pattern, payload, capabilities) != cache_key("p", {"a": 1}, ["x"])


def test_key_of_non_ascii_input_is_stable() -> None:
    assert cache_key("p", {"q": "café ✓"}, []) == cache_key("p", {"q": "café ✓"}, [])
    assert cache_key("p", {"q": "café"}, []) != cache_key("p", {"q": "cafe"}, [])


def test_key_refuses_non_json_input() -> None:
    with pytest.raises(ValidationError, match="JSON"):
        cache_key("p", {"x": object()}, [])


# --- InMemoryResultCache with a fake clock -------------------------------------------------


def test_entry_expires_after_ttl() -> None:
    clock = FakeClock()
    cache = InMemoryResultCache(CacheConfig(ttl=300), clock=clock)
    cache.set("k", result())
    clock.advance(299.9)
    assert cache.get("k") is not None
    clock.advance(0.2)
    assert cache.get("k") is None
    assert cache.stats()["entries"] == 0


def test_reading_does_not_extend_ttl() -> None:
    clock = FakeClock()
    cache = InMemoryResultCache(CacheConfig(ttl=10), clock=clock)
    cache.set("k", result())
    for _ in range(4):
        clock.advance(3)
        cache.get("k")
    assert cache.get("k") is None


def test_expired_entries_leave_the_count_without_a_read() -> None:
    clock = FakeClock()
    cache = InMemoryResultCache(CacheConfig(ttl=5), clock=clock)
    cache.set("old", result())
    clock.advance(3)
    cache.set("new", result())
    clock.advance(3)
    assert cache.stats()["entries"] == 1


def test_expired_entries_are_not_counted_as_evictions() -> None:
    clock = FakeClock()
    cache = InMemoryResultCache(CacheConfig(ttl=5, max_entries=1), clock=clock)
    cache.set("k1", result())
    clock.advance(6)
    cache.set("k2", result())
    assert cache.stats()["evictions"] == 0


def test_rewriting_a_key_restarts_its_ttl() -> None:
    clock = FakeClock()
    cache = InMemoryResultCache(CacheConfig(ttl=10), clock=clock)
    cache.set("k", result(confidence=0.85))
    clock.advance(8)
    cache.set("k", result(confidence=0.95))
    clock.advance(8)
    hit = cache.get("k")
    assert hit is not None and hit.confidence == 0.95


# --- RunnerCache ---------------------------------------------------------------------------


def agent_task(task_id: str = "t1", **metadata: Any) -> ExecutionTask:
    return ExecutionTask(id=task_id, type="agent", target="a1", payload={"q": 1}, metadata=metadata)


def test_runner_cache_keys_agent_tasks_by_type_target_and_capabilities() -> None:
    cache = InMemoryResultCache(CacheConfig())
    runner_cache = RunnerCache(cache, capabilities_of=lambda agent: ["y", "x"])
    assert runner_cache.key_of(agent_task()) == cache_key("agent:a1", {"q": 1}, ["x", "y"])
    with_pattern = agent_task(pattern="review")
    assert runner_cache.key_of(with_pattern) == cache_key("review", {"q": 1}, ["x", "y"])


def test_runner_cache_asks_capabilities_only_for_agents() -> None:
    asked: list[str] = []
    runner_cache = RunnerCache(
        InMemoryResultCache(CacheConfig()), capabilities_of=lambda a: asked.append(a) or []
    )
    task = ExecutionTask(id="t", type="function", target="add", payload={"a": 1})
    assert runner_cache.key_of(task) == cache_key("function:add", {"a": 1}, [])
    assert asked == []


def test_runner_cache_round_trips_a_result_across_tasks() -> None:
    runner_cache = RunnerCache(InMemoryResultCache(CacheConfig()), capabilities_of=lambda a: ["x"])
    stored = result("t1")
    runner_cache.store(agent_task("t1"), stored)
    hit = runner_cache.lookup(agent_task("t2"))
    assert hit == stored


def test_runner_cache_needs_confidence_for_agents_but_not_for_opted_in_functions() -> None:
    runner_cache = RunnerCache(InMemoryResultCache(CacheConfig()), capabilities_of=lambda a: [])
    runner_cache.store(agent_task(), result(confidence=None))
    assert runner_cache.lookup(agent_task()) is None
    function_task = ExecutionTask(
        id="f", type="function", target="add", payload={"a": 1}, metadata={"cache": True}
    )
    runner_cache.store(function_task, result("f", confidence=None))
    hit = runner_cache.lookup(function_task)
    assert hit is not None and hit.result == {"answer": "f"}


class UnreachableCache(ResultCache):
    """A cache whose backend is down: every operation raises BackendError."""

    def get(self, key: str) -> ExecutionResult | None:
        raise BackendError("redis://127.0.0.1:1/0 refused the connection")

    def set(self, key: str, result: ExecutionResult, *, require_confidence: bool = True) -> bool:
        raise BackendError("redis://127.0.0.1:1/0 refused the connection")

    def delete(self, key: str) -> None:
        raise BackendError("down")

    def clear(self) -> None:
        raise BackendError("down")

    def stats(self) -> dict[str, Any]:
        raise BackendError("down")


def test_runner_cache_degrades_to_a_miss_when_the_backend_is_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner_cache = RunnerCache(UnreachableCache(CacheConfig()), capabilities_of=lambda a: [])
    with caplog.at_level(logging.DEBUG, logger="taskplane.cache"):
        assert runner_cache.lookup(agent_task()) is None
        runner_cache.store(agent_task(), result())
        runner_cache.lookup(agent_task())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert runner_cache.failures == 3  # each one counted, only the first warned of
    assert "refused" in warnings[0].getMessage()


def test_runner_cache_degrades_when_capabilities_cannot_be_read() -> None:
    def capabilities_of(agent: str) -> list[str]:
        raise BackendError("registry unreachable")

    runner_cache = RunnerCache(InMemoryResultCache(CacheConfig()), capabilities_of=capabilities_of)
    assert runner_cache.lookup(agent_task()) is None
    runner_cache.store(agent_task(), result())  # must not raise


def test_runner_cache_does_nothing_when_disabled() -> None:
    cache = InMemoryResultCache(CacheConfig(enabled=False))
    runner_cache = RunnerCache(cache, capabilities_of=lambda a: [])
    runner_cache.store(agent_task(), result())
    assert runner_cache.lookup(agent_task()) is None
    assert cache.stats() == {"entries": 0, "hits": 0, "misses": 0, "hitRate": 0.0, "evictions": 0}


def test_stored_value_is_json() -> None:
    cache = InMemoryResultCache(CacheConfig())
    cache.set("k", result())
    ((_expires, raw),) = cache._entries.values()
    assert json.loads(raw)["taskId"] == "t1"
