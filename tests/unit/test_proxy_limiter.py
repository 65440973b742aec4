"""The sliding-window rate limiter, with a fake clock and sleep, against memory and Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.config import RateLimitConfig
from taskplane.devtools.redis_server import free_port
from taskplane.errors import TaskTimeoutError
from taskplane.proxy.limiter import (
    WAKE_MARGIN_S,
    InMemoryLimiterBackend,
    LimiterBackend,
    RateLimiter,
    RedisLimiterBackend,
)

CONFIG = RateLimitConfig(max_requests=3, window_ms=1000)
START = 1_700_000_000.0


@dataclass
class FakeTime:
    now: float = START
    slept: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> LimiterBackend:
    if request.param == "memory":
        return InMemoryLimiterBackend()
    return RedisLimiterBackend(request.getfixturevalue("redis_client"), prefix="tp-unit")


def limiter(
    backend: LimiterBackend, time: FakeTime, config: RateLimitConfig = CONFIG
) -> RateLimiter:
    return RateLimiter(backend, config, clock=time.clock, sleep=time.sleep)


def test_calls_within_the_limit_do_not_wait(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    waits = [rl.acquire("a", deadline=time.now + 5) for _ in range(3)]
    assert waits == [0.0, 0.0, 0.0] and time.slept == []


def test_a_limited_call_waits_until_the_oldest_call_leaves_the_window(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for offset in (0.0, 0.2, 0.4):
        time.now = START + offset
        rl.acquire("a", deadline=time.now + 5)
    time.now = START + 0.5
    waited = rl.acquire("a", deadline=time.now + 5)
    assert time.slept == [pytest.approx(0.5 + WAKE_MARGIN_S)]
    assert waited == pytest.approx(0.5 + WAKE_MARGIN_S)
    rl.acquire("a", deadline=time.now + 5)  # now START + 1.001; the call at 0.2 leaves at 1.2
    assert time.slept[-1] == pytest.approx(0.199 + WAKE_MARGIN_S)


def test_the_window_slides_so_at_most_max_requests_start_in_any_window(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    starts = []
    for _ in range(10):
        rl.acquire("a", deadline=time.now + 10)
        starts.append(time.now)
        time.now += 0.1
    for first in starts:
        in_window = [s for s in starts if first <= s < first + 1.0]
        assert len(in_window) <= 3
    assert starts[-1] - starts[0] >= 3.0  # 10 calls at 3/s need three full windows


def test_a_wait_past_the_deadline_raises_at_once(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for _ in range(3):
        rl.acquire("a", deadline=time.now + 5)
    with pytest.raises(TaskTimeoutError, match="rate limit wait exceeded the deadline"):
        rl.acquire("a", deadline=time.now + 0.5)
    assert time.slept == []


def test_agents_have_separate_windows(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for agent in ("a", "b", "c"):
        for _ in range(3):
            rl.acquire(agent, deadline=time.now + 5)
    assert time.slept == []


def test_a_lowered_limit_waits_for_enough_calls_to_leave(backend: LimiterBackend) -> None:
    time = FakeTime()
    generous = limiter(backend, time, RateLimitConfig(max_requests=4, window_ms=1000))
    for offset in (0.0, 0.1, 0.2, 0.3):
        time.now = START + offset
        generous.acquire("a", deadline=time.now + 5)
    strict = limiter(backend, time, RateLimitConfig(max_requests=2, window_ms=1000))
    strict.acquire("a", deadline=time.now + 5)
    assert time.slept == [pytest.approx(0.9 + WAKE_MARGIN_S)]  # the third newest leaves at 1.2


def test_unreachable_redis_fails_open(caplog: Any) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    time = FakeTime()
    rl = limiter(RedisLimiterBackend(dead), time)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert rl.acquire("a", deadline=time.now + 1) == 0.0
    assert caplog.text.count("failing open") == 1
