"""The result cache: successful, confident results kept for a while, LRU-bounded.

A key is the SHA-256 of the canonical JSON ``{pattern, input, capabilities}``
(:func:`cache_key`). Only ``success`` results with a confidence at or above
``CacheConfig.confidence_threshold`` are stored, for ``CacheConfig.ttl``
seconds, at most ``CacheConfig.max_entries`` of them (least recently used
evicted first). Values are JSON, never pickle.

:class:`RedisResultCache` is shared by every worker: each read and each write
is one atomic Lua script, so recency, trimming and the hit/miss/eviction
counters stay right with any number of concurrent writers.
:class:`InMemoryResultCache` is the same contract in one process.
:class:`RunnerCache` adapts either one to the task runner's ``TaskCache``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import pydantic
import redis

from taskplane.aliases import Clock
from taskplane.config import CacheConfig
from taskplane.errors import TaskplaneError, ValidationError
from taskplane.keys import result_cache_key
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.redisio import load_script, translated
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)


DEFAULT_PREFIX = "taskplane"
#: Task types whose results carry a confidence; others are cached only on request.
CONFIDENT_TYPES = (TaskType.AGENT, TaskType.PATTERN)
#: At most one "cache unavailable" warning per this many seconds.
WARN_INTERVAL_S = 30.0


def cache_key(pattern: str, input: Any, capabilities: Iterable[str]) -> str:
    """The cache key of one call: SHA-256 hex of its canonical JSON.

    Key order inside *input* and the order of *capabilities* do not change it.

    Raises:
        ValidationError: *input* is not JSON-serialisable.
    """
    document = {"pattern": pattern, "input": input, "capabilities": sorted(capabilities)}
    try:
        text = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"cache input is not JSON-serialisable: {exc}") from exc
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class ResultCache(ABC):
    """Where finished results are kept for reuse.

    Args:
        config: TTL, confidence threshold, size bound, on/off switch.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.config = config

    def key_for(self, pattern: str, input: Any, capabilities: Iterable[str]) -> str:
        """The key of one call; see :func:`cache_key`."""
        return cache_key(pattern, input, capabilities)

    def accepts(self, result: ExecutionResult, *, require_confidence: bool = True) -> bool:
        """Whether *result* may be stored: a success confident enough.

        Args:
            result: The candidate.
            require_confidence: When False, a result that carries no confidence
                at all (a ``function``/``http`` task that opted in) is accepted.
        """
        if not self.config.enabled or result.status is not TaskStatus.SUCCESS:
            return False
        if result.confidence is None:
            return not require_confidence
        return result.confidence >= self.config.confidence_threshold

    @abstractmethod
    def get(self, key: str) -> ExecutionResult | None:
        """The live result under *key* (refreshing its recency), or None; counts a hit or miss."""

    @abstractmethod
    def set(self, key: str, result: ExecutionResult, *, require_confidence: bool = True) -> bool:
        """Store *result* under *key* if :meth:`accepts` it; returns whether it was stored."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Forget *key*."""

    @abstractmethod
    def clear(self) -> None:
        """Forget every entry and reset the counters."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """``{"entries", "hits", "misses", "hitRate", "evictions"}``; hitRate in 0…1.

        hitRate is rounded to :data:`HIT_RATE_DIGITS` decimals.
        """


#: Decimals of ``hitRate`` in :meth:`ResultCache.stats` (0.1667, not 0.16666666666666666).
HIT_RATE_DIGITS = 4


def _stats(entries: int, hits: int, misses: int, evictions: int) -> dict[str, Any]:
    lookups = hits + misses
    return {
        "entries": entries,
        "hits": hits,
        "misses": misses,
        "hitRate": round(hits / lookups, HIT_RATE_DIGITS) if lookups else 0.0,
        "evictions": evictions,
    }


def _decode(raw: str | bytes | None) -> ExecutionResult | None:
    """Rebuild a stored result; an unreadable value is logged and treated as a miss."""
    if raw is None:
        return None
    try:
        return ExecutionResult.model_validate(json.loads(raw))
    except (ValueError, pydantic.ValidationError):
        log.warning("discarding an unreadable cache entry", exc_info=True)
        return None


def _encode(result: ExecutionResult) -> str:
    return json.dumps(result.to_json_dict(), separators=(",", ":"), ensure_ascii=False)


class InMemoryResultCache(ResultCache):
    """The cache in one process's memory; thread-safe. For tests and local use.

    Args:
        config: TTL, threshold, size bound, on/off switch.
        clock: Epoch seconds; decides expiry.
    """

    def __init__(self, config: CacheConfig, *, clock: Clock = time.time) -> None:
        super().__init__(config)
        self.clock = clock
        # key -> (expires_at, JSON); ordered least recently used first.
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # key -> expires_at; ordered by write, which (one TTL for all) is expiry order.
        self._expiry: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def _forget(self, key: str) -> bool:
        self._expiry.pop(key, None)
        return self._entries.pop(key, None) is not None

    def _purge(self, now: float) -> None:
        while self._expiry:
            key, expires = next(iter(self._expiry.items()))
            if expires > now:
                break
            self._forget(key)

    def get(self, key: str) -> ExecutionResult | None:
        if not self.config.enabled:
            return None
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= self.clock():
                self._forget(key)
                self._misses += 1
                return None
            self._entries.move_to_end(key)
            self._hits += 1
        return _decode(entry[1])

    def set(self, key: str, result: ExecutionResult, *, require_confidence: bool = True) -> bool:
        if not self.accepts(result, require_confidence=require_confidence):
            return False
        value = _encode(result)
        with self._lock:
            now = self.clock()
            self._purge(now)
            expires = now + self.config.ttl
            self._entries[key] = (expires, value)
            self._entries.move_to_end(key)
            self._expiry[key] = expires
            self._expiry.move_to_end(key)
            while len(self._entries) > self.config.max_entries:
                self._forget(next(iter(self._entries)))
                self._evictions += 1
        return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._forget(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._expiry.clear()
            self._hits = self._misses = self._evictions = 0

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._purge(self.clock())
            return _stats(len(self._entries), self._hits, self._misses, self._evictions)


def describe_redis(client: redis.Redis) -> str:
    """Where *client* points, for error messages (no credentials)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None:  # a Redis Cluster client: name the node it started from
        node = client.get_default_node()  # type: ignore[attr-defined]
        return f"redis+cluster://{node.host}:{node.port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


class RedisResultCache(ResultCache):
    """The cache in Redis, shared by every worker on every host.

    Each operation is one atomic Lua script; expiry uses Redis's own clock
    (``SET … PXAT``), recency a global access counter, so hosts with skewed
    clocks still agree. Needs Redis ≥ 6.2 (not Redis Cluster: scripts touch
    entry keys they derive from the prefix).

    Args:
        redis_client: Any ``redis.Redis`` (``decode_responses`` either way).
        config: TTL, threshold, size bound, on/off switch.
        prefix: Namespace of every key this cache writes.

    Raises:
        BackendError: From every method when Redis cannot be reached.
    """

    def __init__(
        self, redis_client: redis.Redis, config: CacheConfig, *, prefix: str = DEFAULT_PREFIX
    ) -> None:
        super().__init__(config)
        self.redis = redis_client
        self.prefix = prefix
        self.entry_prefix = result_cache_key(prefix, "entry:")
        self._index_keys = [
            result_cache_key(prefix, name) for name in ("lru", "exp", "stats", "seq")
        ]
        self._where = f"result cache at {describe_redis(redis_client)}"
        self._scripts = {
            verb: load_script(redis_client, "taskplane", f"cache_{verb}.lua")
            for verb in ("get", "set", "delete", "clear", "stats")
        }

    def _run(self, verb: str, key: str, *args: Any) -> Any:
        with translated(self._where, verb):
            return self._scripts[verb](keys=[*self._index_keys, self.entry_prefix + key], args=args)

    def get(self, key: str) -> ExecutionResult | None:
        if not self.config.enabled:
            return None
        return _decode(self._run("get", key, key))

    def set(self, key: str, result: ExecutionResult, *, require_confidence: bool = True) -> bool:
        if not self.accepts(result, require_confidence=require_confidence):
            return False
        ttl_ms = self.config.ttl * 1000
        self._run(
            "set", key, key, _encode(result), ttl_ms, self.config.max_entries, self.entry_prefix
        )
        return True

    def delete(self, key: str) -> None:
        self._run("delete", key, key, self.entry_prefix)

    def clear(self) -> None:
        self._run("clear", "", self.entry_prefix)

    def stats(self) -> dict[str, Any]:
        entries, hits, misses, evictions = self._run("stats", "", self.entry_prefix)
        return _stats(int(entries), int(hits), int(misses), int(evictions))


class RunnerCache:
    """The task runner's ``TaskCache`` over a :class:`ResultCache`: where cache failures end.

    The key's pattern is ``metadata.pattern`` (else ``type:target``), its input
    the payload, its capabilities the agent's (none for other task types).

    The cache fails open, here and nowhere else: a lookup or store that fails
    (Redis unreachable, an agent's capabilities unreadable, a payload that
    cannot be keyed) is a miss or a lost store, counted in :attr:`failures`
    and logged at most once per :data:`WARN_INTERVAL_S`, so callers never
    wrap it. A disabled cache is not wrapped at all: the composition root
    gives the runner no cache.

    Args:
        cache: Where results live.
        capabilities_of: An agent id's capabilities (may raise ``BackendError``).
    """

    def __init__(self, cache: ResultCache, *, capabilities_of: Callable[[str], list[str]]) -> None:
        self.cache = cache
        self.capabilities_of = capabilities_of
        #: Lookups and stores that failed (each one a miss or a lost store).
        self.failures = 0
        self._warnings = LogThrottle(WARN_INTERVAL_S)

    def key_of(self, task: ExecutionTask) -> str:
        """The cache key of *task*."""
        pattern = task.metadata.pattern or f"{task.type.value}:{task.target}"
        capabilities = self.capabilities_of(task.target) if task.type is TaskType.AGENT else []
        return self.cache.key_for(pattern, task.payload, capabilities)

    def lookup(self, task: ExecutionTask) -> ExecutionResult | None:
        """A cached result for *task*, or None (also when the cache is unavailable)."""
        try:
            return self.cache.get(self.key_of(task))
        except TaskplaneError as exc:
            self._failed("lookup", task, exc)
            return None

    def store(self, task: ExecutionTask, result: ExecutionResult) -> None:
        """Offer *result* to the cache; results without a confidence only for opted-in types."""
        try:
            self.cache.set(
                self.key_of(task), result, require_confidence=task.type in CONFIDENT_TYPES
            )
        except TaskplaneError as exc:
            self._failed("store", task, exc)

    def _failed(self, action: str, task: ExecutionTask, exc: TaskplaneError) -> None:
        self.failures += 1
        if self._warnings.due():
            log.warning("result cache %s failed for task %s: %s", action, task.id, exc)
        else:
            log.debug("result cache %s failed for task %s: %s", action, task.id, exc)
