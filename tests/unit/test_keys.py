"""The key layout holds on Redis Cluster: what one script touches lives in one slot.

Pure checks of the key builders (``redis.crc.key_slot``), then every store's
scripts run against a client that refuses a script whose KEYS span slots, as
a cluster would (``CROSSSLOT``), on the plain test Redis.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from taskplane import keys
from taskplane.budget import RedisBudgetBackend
from taskplane.cache import RedisResultCache
from taskplane.config import CacheConfig, Settings
from taskplane.events import RedisEventBus
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus
from taskplane.plan import AllSettled, Mode, PlanLayout, PlanState, RedisRunStore
from taskplane.proxy.breaker_redis import RedisBreakerStorage
from taskplane.proxy.breaker_storage import BreakerPolicy
from taskplane.proxy.inflight import RedisInFlightBackend
from taskplane.proxy.limiter import RateLimiter, RedisLimiterBackend
from taskplane.proxy.policy import AgentPolicy, Quota

PREFIX = "tp-keys"
ODD_IDS = ["run-1", "", "}", "{", "a}b{c", "%7D", "ümlaut", "x" * 300]


def slots(names: list[str]) -> set[int]:
    return {key_slot(name.encode()) for name in names}


@pytest.mark.parametrize("value", ODD_IDS)
def test_a_tag_is_never_empty_and_round_trips(value: str) -> None:
    tagged = keys.tag(value)
    inner = tagged[1:-1]
    assert "{" not in inner and "}" not in inner
    assert keys.untag(tagged) == value
    # Redis hashes only the tag: whatever follows it, the slot is the same
    assert slots([f"p:{tagged}:a", f"q:{tagged}:b:c"]) == {key_slot(inner.encode())} or not inner


@pytest.mark.parametrize("plan_id", ODD_IDS)
def test_every_key_of_one_run_is_in_one_slot(plan_id: str) -> None:
    parts = ["meta", "tasks", "results", "done", "reply", "order", "children", "lease:0", "lease:9"]
    assert len(slots([keys.plan_key(PREFIX, plan_id, part) for part in parts])) == 1


def test_distinct_ids_make_distinct_keys() -> None:
    made = {keys.plan_key(PREFIX, plan_id, "meta") for plan_id in ODD_IDS}
    assert len(made) == len(ODD_IDS)


@pytest.mark.parametrize("agent", ODD_IDS[:5])
def test_an_agents_breaker_and_leases_share_its_slot(agent: str) -> None:
    breaker = keys.breaker_key(PREFIX, agent)
    assert len(slots([breaker, f"{breaker}:failures", keys.inflight_key(PREFIX, agent)])) == 1


def test_an_agent_on_a_quota_keeps_its_windows_in_the_quotas_slot() -> None:
    limiter = RateLimiter()
    quota = Quota(name="provider", max_requests=10, max_tokens=1000)
    policy = AgentPolicy(max_tokens=100, quota="provider")
    for agent in ("a1", "a2"):
        windows = limiter.windows(agent, policy, quota)
        assert len(windows) == 4
        names = [f"{PREFIX}:{w.key}" for w in windows] + [
            f"{PREFIX}:{w.key}:amounts" for w in windows
        ]
        assert slots(names) == slots([f"{PREFIX}:{keys.quota_window_key('provider')}"])
    alone = limiter.windows("a1", AgentPolicy(max_tokens=100))
    assert len(slots([f"{PREFIX}:{w.key}" for w in alone])) == 1


def test_the_shared_keys_each_have_one_slot() -> None:
    cache = [keys.result_cache_key(PREFIX, n) for n in ("lru", "exp", "stats", "seq", "entry:x")]
    assert len(slots(cache)) == 1
    registry = [keys.registry_key(PREFIX, n) for n in ("agents", "quotas")]
    assert len(slots(registry)) == 1


def test_a_prefix_with_braces_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="key_prefix"):
        Settings(key_prefix="tp{x}")


class SlotCheckingRedis(redis.Redis):
    """A client that refuses, as Redis Cluster does, a script whose keys span slots."""

    checked: list[int]

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        self._check(numkeys, keys_and_args)
        return super().evalsha(sha, numkeys, *keys_and_args)

    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any:  # type: ignore[override]
        self._check(numkeys, keys_and_args)
        return super().eval(script, numkeys, *keys_and_args)

    def _check(self, numkeys: int, keys_and_args: tuple[Any, ...]) -> None:
        names = [str(k) for k in keys_and_args[:numkeys]]
        found = slots(names)
        assert len(found) <= 1, f"CROSSSLOT: {names}"
        self.checked.append(numkeys)


@pytest.fixture
def checking(redis_client: redis.Redis) -> Iterator[SlotCheckingRedis]:
    client = SlotCheckingRedis(connection_pool=redis_client.connection_pool)
    client.checked = []
    yield client


def test_the_plan_store_in_cluster_mode_sends_one_slot_per_script(
    checking: SlotCheckingRedis,
) -> None:
    bus = RedisEventBus(checking, prefix=PREFIX)
    store = RedisRunStore(checking, prefix=PREFIX, events=bus, cluster=True)
    tasks = [ExecutionTask(id=f"t{i}", type="function", target="noop") for i in range(3)]
    layout = PlanLayout(AllSettled(), Mode.WINDOW, (0, 1, 2), 1)
    assert store.create("run{1}", tasks, layout, time.time() + 60)
    assert store.start("run{1}", 0).action == "run"
    result = ExecutionResult(task_id="t0", status=TaskStatus.SUCCESS, result=1, confidence=0.9)
    assert store.finish("run{1}", 0, result, ran=True).recorded
    store.fill_missing("run{1}", TaskStatus.CANCELLED, "stop")
    store.end("run{1}", PlanState.CANCELLED)
    budgets = RedisBudgetBackend(checking, prefix=PREFIX)
    budgets.reserve("run{1}", 10)
    settled: list[object] = []
    budgets.settle("run{1}", held=(0, 0), spent=(1, 1), then=settled.append)
    assert len(settled) == 1
    # each outcome's event reached the stream, written after its outcome
    types = [event["type"] for event in bus.recent(10)]
    assert types.count("task:completed") == 1 and types.count("task:failed") == 2
    assert len(checking.checked) >= 6


def test_the_proxy_stores_and_the_cache_send_one_slot_per_script(
    checking: SlotCheckingRedis,
) -> None:
    breaker = RedisBreakerStorage(checking, "a}1", prefix=PREFIX)
    breaker.admit(now=time.time(), policy=BreakerPolicy(), lease_s=1.0, token="t")
    breaker.record("failure", now=time.time(), policy=BreakerPolicy(), token="t")
    RedisInFlightBackend(checking, prefix=PREFIX).take(
        "a}1", "t", now_ms=time.time() * 1000, limit=2, lease_ms=1000
    )
    limiter = RateLimiter(RedisLimiterBackend(checking, prefix=PREFIX))
    quota = Quota(name="provider", max_requests=10, max_tokens=1000)
    policy = AgentPolicy(max_tokens=100, quota="provider")
    member = limiter.reserve("a}1", deadline=time.time() + 60, policy=policy, quota=quota)
    limiter.settle("a}1", member=member, tokens=5, policy=policy, quota=quota)
    cache = RedisResultCache(checking, CacheConfig(), prefix=PREFIX)
    cache.set("k", ExecutionResult(task_id="t", status=TaskStatus.SUCCESS, confidence=0.9))
    assert cache.get("k") is not None
    assert cache.stats()["entries"] == 1
    assert len(checking.checked) >= 7
