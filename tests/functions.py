"""Functions the integration tests run as ``function`` tasks (workers import this module)."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

import taskplane

#: The test functions' own Redis calls ride through a Redis restart of a few seconds
#: (about 10 s of retries), so a restart test measures taskplane, not this helper.
_RETRY = Retry(ExponentialBackoff(cap=0.5, base=0.05), 25)

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    with _lock:
        if url not in _clients:
            _clients[url] = redis.Redis.from_url(url, decode_responses=True, retry=_RETRY)
        return _clients[url]


@taskplane.function("tests.record")
def record(
    redis_url: str,
    key: str,
    ms: float = 0,
    fail: bool = False,
    confidence: float | None = None,
    **_: Any,
) -> Any:
    """Count a call in Redis (calls, in-flight high-water mark), wait *ms*, then answer."""
    client = _client(redis_url)
    client.incr(f"{key}:calls")
    now_in = client.incr(f"{key}:inflight")
    client.eval(
        "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
        "redis.call('SET', KEYS[1], ARGV[1]) end",
        1,
        f"{key}:max",
        now_in,
    )
    try:
        if ms:
            time.sleep(ms / 1000.0)
        if fail:
            raise RuntimeError("told to fail")
    finally:
        client.decr(f"{key}:inflight")
    if confidence is not None:
        return taskplane.FunctionResult(value=key, confidence=confidence)
    return key


class ControlPlaneStandIn:
    """A pattern executor as a control plane would provide (see TASKPLANE_PATTERN_EXECUTOR)."""

    def execute(
        self,
        pattern_name: str,
        input: Any,
        *,
        timeout: float | None = None,
        execution_id: str | None = None,
        parent_task_id: str | None = None,
    ) -> Any:
        from taskplane.patterns import PatternExecutionResult

        return PatternExecutionResult(
            id=f"cp-{parent_task_id}",
            pattern_name=pattern_name,
            status="completed",
            result={"pattern": pattern_name, "input": input, "plan": execution_id},
            confidence=0.88,
        )


def make_pattern_executor() -> ControlPlaneStandIn:
    """Factory named by TASKPLANE_PATTERN_EXECUTOR in the tests."""
    return ControlPlaneStandIn()
