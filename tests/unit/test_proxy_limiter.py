"""The sliding-window rate limiter that books slots, with a fake clock, against memory and Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.config import RateLimitConfig
from taskplane.devtools.redis_server import free_port
from taskplane.errors import RateLimitedError
from taskplane.proxy.limiter import (
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

    def clock(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> LimiterBackend:
    if request.param == "memory":
        return InMemoryLimiterBackend()
    return RedisLimiterBackend(request.getfixturevalue("redis_client"), prefix="tp-unit")


def limiter(
    backend: LimiterBackend, time: FakeTime, config: RateLimitConfig = CONFIG
) -> RateLimiter:
    return RateLimiter(backend, config, clock=time.clock)


def wait_for(rl: RateLimiter, agent: str, deadline: float) -> float:
    """0 when the call may start now, else the seconds until its booked slot."""
    try:
        rl.reserve(agent, deadline=deadline)
    except RateLimitedError as exc:
        assert exc.reserved
        return exc.wait_s
    return 0.0


def test_calls_within_the_limit_start_now(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    assert [wait_for(rl, "a", time.now + 5) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_limited_call_gets_the_slot_a_window_after_the_oldest_call(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for offset in (0.0, 0.2, 0.4):
        time.now = START + offset
        assert wait_for(rl, "a", time.now + 5) == 0.0
    time.now = START + 0.5
    assert wait_for(rl, "a", time.now + 5) == pytest.approx(0.5)  # booked for START + 1.0
    # the next one queues behind it: a window after the call at 0.2
    assert wait_for(rl, "a", time.now + 5) == pytest.approx(0.7)


def test_a_backlog_is_booked_in_order_at_exactly_the_limit(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    slots = [START + wait_for(rl, "a", START + 100) for _ in range(10)]
    assert slots == sorted(slots)
    for first in slots:
        in_window = [s for s in slots if first <= s < first + 1.0]
        assert len(in_window) <= 3
    assert slots[-1] - slots[0] == pytest.approx(3.0)  # 10 calls at 3/s: three more windows


def test_booked_slots_count_when_they_come(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    waits = [wait_for(rl, "a", START + 100) for _ in range(6)]
    assert waits == [0, 0, 0, pytest.approx(1.0), pytest.approx(1.0), pytest.approx(1.0)]
    time.now = START + 1.0  # the booked three now fill the window
    assert wait_for(rl, "a", START + 100) == pytest.approx(1.0)


def test_a_slot_past_the_deadline_is_not_booked(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for _ in range(3):
        rl.reserve("a", deadline=time.now + 5)
    with pytest.raises(RateLimitedError, match="after the deadline") as raised:
        rl.reserve("a", deadline=time.now + 0.5)
    assert not raised.value.reserved and raised.value.wait_s == pytest.approx(1.0)
    # nothing was booked: the next caller with time to spare gets the same slot
    assert wait_for(rl, "a", time.now + 5) == pytest.approx(1.0)


def test_agents_have_separate_windows(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for agent in ("a", "b", "c"):
        assert [wait_for(rl, agent, time.now + 5) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_lowered_limit_waits_for_enough_calls_to_leave(backend: LimiterBackend) -> None:
    time = FakeTime()
    generous = limiter(backend, time, RateLimitConfig(max_requests=4, window_ms=1000))
    for offset in (0.0, 0.1, 0.2, 0.3):
        time.now = START + offset
        generous.reserve("a", deadline=time.now + 5)
    strict = limiter(backend, time, RateLimitConfig(max_requests=2, window_ms=1000))
    assert wait_for(strict, "a", time.now + 5) == pytest.approx(0.9)  # 0.2's call leaves at 1.2


def test_unreachable_redis_fails_open(caplog: Any) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    time = FakeTime()
    rl = limiter(RedisLimiterBackend(dead), time)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            assert wait_for(rl, "a", time.now + 1) == 0.0
    assert caplog.text.count("failing open") == 1
