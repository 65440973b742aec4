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
from taskplane.proxy.policy import AgentPolicy, Quota

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


# -- per-agent limits and shared quotas ----------------------------------------

TEAM = Quota(name="team-key", max_requests=4, window_ms=1000)


def wait_with(
    rl: RateLimiter,
    agent: str,
    *,
    policy: AgentPolicy | None = None,
    quota: Quota | None = None,
) -> float:
    try:
        rl.reserve(agent, deadline=rl.clock() + 100, policy=policy, quota=quota)
    except RateLimitedError as exc:
        assert exc.reserved
        return exc.wait_s
    return 0.0


def test_an_agent_policy_overrides_the_settings_limit(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    own = AgentPolicy(max_requests=1, window_ms=500)
    assert [wait_with(rl, "a", policy=own) for _ in range(3)] == [
        0.0,
        pytest.approx(0.5),
        pytest.approx(1.0),
    ]
    roomy = AgentPolicy(max_requests=10)  # window from the settings (1 s)
    assert [wait_with(rl, "b", policy=roomy) for _ in range(10)] == [0.0] * 10


def test_agents_on_one_quota_hold_it_together_and_others_are_unaffected(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)  # each agent alone: 3 per s
    slots = [START + wait_with(rl, agent, quota=TEAM) for _ in range(6) for agent in ("a", "b")]
    # 12 calls at 4 per s over both agents: three windows' worth
    for first in slots:
        assert len([s for s in slots if first <= s < first + 1.0]) <= 4
    assert max(slots) - START == pytest.approx(2.0)
    assert [wait_for(rl, "c", time.now + 5) for _ in range(3)] == [0.0, 0.0, 0.0]


def test_a_call_on_a_quota_still_keeps_its_agent_limit(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    roomy = Quota(name="roomy", max_requests=100, window_ms=1000)
    waits = [wait_with(rl, "a", quota=roomy) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.0, pytest.approx(1.0)]  # the agent's 3 per s binds


def test_a_slot_past_the_deadline_is_booked_in_no_window(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for _ in range(4):
        wait_with(rl, "x" if _ % 2 else "y", quota=TEAM)
    with pytest.raises(RateLimitedError, match="quota team-key") as raised:
        rl.reserve("z", deadline=time.now + 0.5, quota=TEAM)
    assert not raised.value.reserved
    assert wait_for(rl, "z", time.now + 5) == 0.0  # z's own window took nothing


# -- token windows: reserve an estimate, settle to the usage -------------------

TOKENS = AgentPolicy(max_requests=100, max_tokens=1000, window_ms=1000)


def token_wait(
    rl: RateLimiter,
    agent: str = "a",
    *,
    member: str | None = None,
    estimate: int | None = None,
    policy: AgentPolicy = TOKENS,
    quota: Quota | None = None,
) -> float:
    try:
        rl.reserve(
            agent,
            deadline=rl.clock() + 100,
            policy=policy,
            quota=quota,
            later=member,
            estimate=estimate,
        )
    except RateLimitedError as exc:
        assert exc.reserved
        return exc.wait_s
    return 0.0


def test_a_token_limit_books_estimates_until_the_window_is_full(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    waits = [token_wait(rl, estimate=300) for _ in range(4)]
    assert waits == [0.0, 0.0, 0.0, pytest.approx(1.0)]  # 1200 > 1000: after the first leaves


def test_settling_to_the_real_usage_frees_what_was_over_reserved(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    names = [rl.reserve("a", deadline=time.now + 5, policy=TOKENS, estimate=300) for _ in "abc"]
    for name in names:
        rl.settle("a", member=name, tokens=100, policy=TOKENS)
    # 300 used; the recent mean is 100, so calls with no estimate reserve 100 each
    assert [token_wait(rl) for _ in range(7)] == [0.0] * 7
    assert token_wait(rl) == pytest.approx(1.0)


def test_an_agent_with_no_history_reserves_the_policy_default(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    policy = TOKENS.model_copy(update={"estimated_tokens": 400})
    assert [token_wait(rl, policy=policy) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]
    unset = TOKENS.model_copy(update={"max_tokens": 2500})  # default estimate 1000
    assert [token_wait(rl, "b", policy=unset) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_an_estimate_above_the_limit_reserves_the_whole_window(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    assert token_wait(rl, estimate=50_000) == 0.0  # it can never fit otherwise
    assert token_wait(rl, estimate=1) == pytest.approx(1.0)


def test_a_quota_in_tokens_is_held_by_its_agents_together(backend: LimiterBackend) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    shared = Quota(name="team", max_tokens=1000, window_ms=1000)
    plain = AgentPolicy(max_requests=100)
    waits = [token_wait(rl, agent, policy=plain, quota=shared, estimate=300) for agent in "abab"]
    assert waits == [0.0, 0.0, 0.0, pytest.approx(1.0)]
    assert token_wait(rl, "c", policy=plain, estimate=300) == 0.0  # not on the quota


def test_a_booking_for_later_is_settled_under_the_name_the_caller_gave(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    for _ in range(3):
        token_wait(rl, estimate=300)
    assert token_wait(rl, member="plan:t9#1", estimate=900) == pytest.approx(1.0)
    time.now += 1.0  # the three leave; the booked call comes due and reports 100
    rl.settle("a", member="plan:t9#1", tokens=100, policy=TOKENS)
    assert token_wait(rl, estimate=900) == 0.0  # 100 + 900 fit


def test_concurrent_calls_in_a_window_with_room_are_not_held_behind_each_other(
    backend: LimiterBackend,
) -> None:
    time = FakeTime()
    rl = limiter(backend, time)
    time.now = START + 0.010
    assert wait_for(rl, "a", START + 5) == 0.0
    time.now = START  # a caller whose clock was read a moment earlier
    assert wait_for(rl, "a", START + 5) == 0.0
