"""Writes sent behind the caller's back: order, replies, a lost script cache, a dead Redis.

Against the test Redis; the sender is a real thread, so each test waits for it
with ``flush()`` (a condition, not a sleep).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.budget import BudgetGate, Hold, RedisBudgetBackend, budget_meta
from taskplane.events.names import PLAN_BUDGET_EXHAUSTED, PLAN_BUDGET_WARNING
from taskplane.keys import agent_tokens_key, plan_key
from taskplane.models import PlanBudget
from taskplane.proxy.limiter import RateLimiter, RedisLimiterBackend
from taskplane.proxy.policy import AgentPolicy
from taskplane.write_behind import WriteBehind
from tests.unit.test_runner import make_task

APPEND = "redis.call('RPUSH', KEYS[1], ARGV[1]); return redis.call('LLEN', KEYS[1])"


@pytest.fixture
def behind(redis_client: redis.Redis) -> Any:
    sender = WriteBehind(redis_client, name="test-writes")
    yield sender
    sender.close()


def test_writes_arrive_in_order_and_replies_reach_their_callbacks(
    redis_client: redis.Redis, behind: WriteBehind
) -> None:
    script = redis_client.register_script(APPEND)
    lengths: list[int] = []
    for n in range(50):
        behind.submit(script, ["wb:list"], [str(n)], then=lengths.append)
    assert behind.flush()
    assert redis_client.lrange("wb:list", 0, -1) == [str(n) for n in range(50)]
    assert lengths == list(range(1, 51))


def test_a_flushed_script_cache_is_reloaded_and_nothing_is_lost(
    redis_client: redis.Redis, behind: WriteBehind
) -> None:
    script = redis_client.register_script(APPEND)
    behind.submit(script, ["wb:list"], ["before"])
    assert behind.flush()
    redis_client.script_flush()  # as after a Redis restart
    behind.submit(script, ["wb:list"], ["after"])
    assert behind.flush()
    assert redis_client.lrange("wb:list", 0, -1) == ["before", "after"]


def test_a_failing_write_is_logged_and_the_others_still_land(
    redis_client: redis.Redis, behind: WriteBehind, caplog: pytest.LogCaptureFixture
) -> None:
    script = redis_client.register_script(APPEND)
    broken = redis_client.register_script("return redis.call('INCR', KEYS[1])")
    redis_client.set("wb:text", "not a number")
    with caplog.at_level(logging.WARNING, logger="taskplane.write_behind"):
        behind.submit(script, ["wb:list"], ["one"])
        behind.submit(broken, ["wb:text"], [])
        behind.submit(script, ["wb:list"], ["two"])
        assert behind.flush()
    assert redis_client.lrange("wb:list", 0, -1) == ["one", "two"]
    assert "test-writes: dropped 1 write(s)" in caplog.text


def test_a_failing_callback_is_logged_and_the_later_replies_still_arrive(
    redis_client: redis.Redis, behind: WriteBehind, caplog: pytest.LogCaptureFixture
) -> None:
    script = redis_client.register_script(APPEND)
    lengths: list[int] = []

    def refuse(reply: Any) -> None:
        raise RuntimeError("a callback's own bug")

    with caplog.at_level(logging.ERROR, logger="taskplane.write_behind"):
        behind.submit(script, ["wb:list"], ["one"], then=refuse)
        behind.submit(script, ["wb:list"], ["two"], then=lengths.append)
        assert behind.flush()
    assert lengths == [2]
    assert "test-writes: handling a reply failed" in caplog.text


def test_an_unreachable_redis_drops_the_writes_without_raising(
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    # no retries: redis-py's default backoff would take about 4 s to give up on each send
    dead = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    script = dead.register_script(APPEND)
    sender = WriteBehind(dead, name="dead-writes")
    replies: list[Any] = []
    with caplog.at_level(logging.WARNING, logger="taskplane.write_behind"):
        sender.submit(script, ["wb:list"], ["lost"], then=replies.append)
        assert sender.flush()
    sender.close()
    assert replies == []
    assert "dead-writes: dropped 1 write(s)" in caplog.text


def test_close_sends_what_is_queued_and_a_later_write_still_goes_out(
    redis_client: redis.Redis,
) -> None:
    script = redis_client.register_script(APPEND)
    sender = WriteBehind(redis_client, name="closing")
    for n in range(20):
        sender.submit(script, ["wb:list"], [str(n)])
    sender.close()
    assert redis_client.llen("wb:list") == 20
    sender.submit(script, ["wb:list"], ["late"])
    assert sender.flush()
    sender.close()
    assert redis_client.lindex("wb:list", -1) == "late"


def test_token_windows_settled_behind_the_call_free_what_was_over_reserved(
    redis_client: redis.Redis, behind: WriteBehind
) -> None:
    now = [1_700_000_000.0]
    policy = AgentPolicy(max_tokens=1000)
    rl = RateLimiter(
        RedisLimiterBackend(redis_client, prefix="tp-wb", behind=behind), clock=lambda: now[0]
    )
    names = [rl.reserve("a", deadline=now[0] + 5, policy=policy, estimate=300) for _ in "abc"]
    for name in names:
        rl.settle("a", member=name, tokens=100, policy=policy)
    assert behind.flush()
    amounts = redis_client.hgetall(f"tp-wb:{agent_tokens_key('a')}:amounts")
    assert float(amounts["total"]) == 300.0
    assert [amounts[name] for name in names] == ["100", "100", "100"]


def test_a_budget_settled_behind_the_call_counts_and_announces_once(
    redis_client: redis.Redis, behind: WriteBehind
) -> None:
    redis_client.hset(
        plan_key("tp-wb", "p1", "meta"), mapping=budget_meta("p1", PlanBudget(tokens=1000))
    )
    seen: list[tuple[str, dict[str, Any]]] = []
    gate = BudgetGate(
        RedisBudgetBackend(redis_client, prefix="tp-wb", behind=behind),
        "p1",
        "p1",
        lambda event_type, data: seen.append((event_type, data)),
    )
    holds = []
    for _ in range(2):
        hold = gate.reserve(make_task(estimatedTokens=500))
        assert isinstance(hold, Hold)
        holds.append(hold)
    for hold in holds:
        gate.settle(hold, tokens=600, called=True)
    assert behind.flush()
    meta = redis_client.hgetall(plan_key("tp-wb", "p1", "meta"))
    assert (meta["usedTokens"], meta["heldTokens"]) == ("1200", "0")
    assert [name for name, _ in seen] == [PLAN_BUDGET_WARNING, PLAN_BUDGET_EXHAUSTED]
    assert seen[1][1]["used"] == {"tokens": 1200, "calls": 0}
