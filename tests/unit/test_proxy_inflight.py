"""The cap on calls in flight: leases taken, given back and expiring, against memory and Redis."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.devtools.redis_server import free_port
from taskplane.errors import RateLimitedError
from taskplane.proxy.inflight import (
    RETRY_AFTER_FULL_S,
    InFlightBackend,
    InFlightLimiter,
    InMemoryInFlightBackend,
    RedisInFlightBackend,
)

START = 1_700_000_000.0


@dataclass
class FakeTime:
    now: float = START

    def clock(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> InFlightBackend:
    if request.param == "memory":
        return InMemoryInFlightBackend()
    return RedisInFlightBackend(request.getfixturevalue("redis_client"), prefix="tp-unit")


def take(cap: InFlightLimiter, agent: str = "a", *, limit: int = 2) -> str | None:
    return cap.acquire(agent, limit=limit, lease_s=10.0, deadline=cap.clock() + 30)


def test_at_most_limit_leases_are_held_and_a_released_one_is_free_again(
    backend: InFlightBackend,
) -> None:
    time = FakeTime()
    cap = InFlightLimiter(backend, clock=time.clock)
    first, second = take(cap), take(cap)
    assert first and second and first != second
    with pytest.raises(RateLimitedError, match="2 calls in flight") as full:
        take(cap)
    assert full.value.reserved and full.value.wait_s == pytest.approx(RETRY_AFTER_FULL_S)
    cap.release("a", first)
    assert take(cap) is not None
    assert take(cap, "b") is not None  # agents have caps of their own


def test_a_lease_never_given_back_expires(backend: InFlightBackend) -> None:
    time = FakeTime()
    cap = InFlightLimiter(backend, clock=time.clock)
    take(cap, limit=1)  # its worker dies: never released
    time.now += 9.95
    with pytest.raises(RateLimitedError) as full:
        take(cap, limit=1)
    assert full.value.wait_s == pytest.approx(0.05)  # sooner than the retry period: it expires
    time.now += 0.05
    assert take(cap, limit=1) is not None


def test_a_full_cap_past_the_deadline_is_not_worth_waiting_for(backend: InFlightBackend) -> None:
    time = FakeTime()
    cap = InFlightLimiter(backend, clock=time.clock)
    take(cap, limit=1)
    with pytest.raises(RateLimitedError, match="after the deadline") as full:
        cap.acquire("a", limit=1, lease_s=10.0, deadline=time.now + 0.01)
    assert not full.value.reserved


def test_unreachable_redis_fails_open(caplog: Any) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    cap = InFlightLimiter(RedisInFlightBackend(dead), clock=FakeTime().clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            assert take(cap, limit=1) is None
            cap.release("a", None)
    assert caplog.text.count("failing open") == 1
