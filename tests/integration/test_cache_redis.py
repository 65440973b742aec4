"""Result cache behaviour, run against the in-memory cache and a real Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from taskplane.cache import InMemoryResultCache, RedisResultCache, ResultCache
from taskplane.config import CacheConfig
from taskplane.errors import BackendError
from taskplane.keys import result_cache_key
from taskplane.models import ExecutionResult, TaskStatus

pytestmark = pytest.mark.integration

PREFIX = "tp-test-cache"
MakeCache = Callable[..., ResultCache]


def result(task_id: str = "t1", *, confidence: float | None = 0.9, **kw: Any) -> ExecutionResult:
    return ExecutionResult(
        task_id=task_id,
        status=kw.pop("status", TaskStatus.SUCCESS),
        result={"answer": task_id, "text": "café ✓"},
        confidence=confidence,
        execution_time=12.5,
        retries=1,
        metadata={"agentId": "a1", "cached": False, "attempts": 2},
    )


@pytest.fixture(params=["memory", "redis"])
def make_cache(request: pytest.FixtureRequest) -> Iterator[MakeCache]:
    if request.param == "memory":
        yield lambda **cfg: InMemoryResultCache(CacheConfig(**cfg))
        return
    client: redis.Redis = request.getfixturevalue("redis_client")
    yield lambda **cfg: RedisResultCache(client, CacheConfig(**cfg), prefix=PREFIX)


# --- behaviour suite: both backends --------------------------------------------------------


def test_round_trips_an_execution_result(make_cache: MakeCache) -> None:
    cache = make_cache()
    stored = result()
    assert cache.set("k", stored) is True
    assert cache.get("k") == stored


def test_lru_evicts_the_least_recently_used(make_cache: MakeCache) -> None:
    cache = make_cache(max_entries=2)
    cache.set("k1", result("1"))
    cache.set("k2", result("2"))
    assert cache.get("k1") is not None
    cache.set("k3", result("3"))
    assert cache.get("k2") is None
    assert cache.get("k1") is not None
    assert cache.get("k3") is not None
    assert cache.stats()["evictions"] == 1


def test_rewriting_an_entry_does_not_evict(make_cache: MakeCache) -> None:
    cache = make_cache(max_entries=2)
    cache.set("k1", result("1"))
    cache.set("k2", result("2"))
    cache.set("k1", result("1b"))
    assert cache.stats()["entries"] == 2
    assert cache.stats()["evictions"] == 0
    hit = cache.get("k1")
    assert hit is not None and hit.task_id == "1b"


@pytest.mark.parametrize(
    ("status", "confidence", "stored"),
    [
        (TaskStatus.SUCCESS, 0.8, True),
        (TaskStatus.SUCCESS, 0.95, True),
        (TaskStatus.SUCCESS, 0.79, False),
        (TaskStatus.SUCCESS, None, False),
        (TaskStatus.FAILURE, 0.99, False),
        (TaskStatus.TIMEOUT, 0.99, False),
    ],
)
def test_stores_only_confident_successes(
    make_cache: MakeCache, status: TaskStatus, confidence: float | None, stored: bool
) -> None:
    cache = make_cache(confidence_threshold=0.8)
    assert cache.set("k", result(status=status, confidence=confidence)) is stored
    assert (cache.get("k") is not None) is stored


def test_result_without_confidence_stored_when_not_required(make_cache: MakeCache) -> None:
    cache = make_cache()
    assert cache.set("k", result(confidence=None), require_confidence=False) is True
    assert cache.set("f", result(status=TaskStatus.FAILURE), require_confidence=False) is False
    assert cache.get("k") is not None


def test_disabled_cache_stores_and_finds_nothing(make_cache: MakeCache) -> None:
    cache = make_cache(enabled=False)
    assert cache.set("k", result()) is False
    assert cache.get("k") is None
    assert cache.stats()["entries"] == 0


def test_delete_and_clear(make_cache: MakeCache) -> None:
    cache = make_cache()
    for key in ("a", "b", "c"):
        cache.set(key, result(key))
    cache.get("a")
    cache.delete("a")
    assert cache.get("a") is None
    assert cache.stats()["entries"] == 2
    cache.clear()
    assert cache.get("b") is None
    assert cache.stats() == {"entries": 0, "hits": 0, "misses": 1, "hitRate": 0.0, "evictions": 0}


def test_stats_count_hits_misses_and_rate(make_cache: MakeCache) -> None:
    cache = make_cache()
    cache.set("k", result())
    cache.get("k")
    cache.get("k")
    cache.get("k")
    cache.get("nope")
    assert cache.stats() == {"entries": 1, "hits": 3, "misses": 1, "hitRate": 0.75, "evictions": 0}


# --- Redis only ----------------------------------------------------------------------------


def test_redis_entry_expires_for_real(redis_client: redis.Redis) -> None:
    cache = RedisResultCache(redis_client, CacheConfig(ttl=1), prefix=PREFIX)
    cache.set("k", result())
    assert cache.get("k") is not None
    time.sleep(1.1)
    assert cache.stats()["entries"] == 0
    assert cache.get("k") is None
    assert redis_client.zcard(result_cache_key(PREFIX, "lru")) == 0
    assert redis_client.zcard(result_cache_key(PREFIX, "exp")) == 0


def test_redis_cache_is_shared_between_clients(redis_url: str, redis_client: redis.Redis) -> None:
    other = redis.Redis.from_url(redis_url)  # bytes responses, a different pool
    try:
        writer = RedisResultCache(redis_client, CacheConfig(), prefix=PREFIX)
        reader = RedisResultCache(other, CacheConfig(), prefix=PREFIX)
        writer.set("k", result())
        assert reader.get("k") == result()
        assert reader.stats()["hits"] == 1
    finally:
        other.close()


def test_redis_values_are_json(redis_client: redis.Redis) -> None:
    RedisResultCache(redis_client, CacheConfig(), prefix=PREFIX).set("k", result())
    raw = redis_client.get(result_cache_key(PREFIX, "entry:k"))
    assert isinstance(raw, str) and raw.startswith("{") and '"taskId":"t1"' in raw


def test_concurrent_writers_keep_the_bound_and_the_index(
    redis_url: str, redis_client: redis.Redis
) -> None:
    threads_n, writes_n, bound = 8, 200, 50
    config = CacheConfig(max_entries=bound)
    index = result_cache_key(PREFIX, "lru")
    peak = 0
    done = threading.Event()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            cache = RedisResultCache(client, config, prefix=PREFIX)
            for i in range(writes_n):
                cache.set(f"w{n}-{i}", result(f"{n}-{i}"))
                if i % 3 == 0:
                    cache.get(f"w{n}-{i // 2}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            client.close()

    def watcher() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, int(redis_client.zcard(index)))

    watch = threading.Thread(target=watcher)
    watch.start()
    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads_n)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    done.set()
    watch.join()

    assert errors == []
    stats = RedisResultCache(redis_client, config, prefix=PREFIX).stats()
    assert stats["entries"] == bound
    assert stats["evictions"] == threads_n * writes_n - bound
    assert peak <= bound
    members = set(redis_client.zrange(index, 0, -1))
    stored = {
        key.removeprefix(result_cache_key(PREFIX, "entry:"))
        for key in redis_client.scan_iter(result_cache_key(PREFIX, "entry:*"))
    }
    assert members == stored
    assert set(redis_client.zrange(result_cache_key(PREFIX, "exp"), 0, -1)) == members


def test_redis_down_raises_backend_error_naming_the_url() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    cache = RedisResultCache(client, CacheConfig(), prefix=PREFIX)
    with pytest.raises(BackendError, match=r"redis://127\.0\.0\.1:1/0") as info:
        cache.get("k")
    assert isinstance(info.value.__cause__, redis.RedisError)
    with pytest.raises(BackendError):
        cache.set("k", result())
    with pytest.raises(BackendError):
        cache.stats()
