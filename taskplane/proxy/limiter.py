"""Per-agent sliding-window rate limits, shared by every worker.

At most ``max_requests`` calls start in any ``window_ms`` window, per agent,
across the whole cluster. A backend's one verb, :meth:`LimiterBackend.try_acquire`,
either takes a slot or says how long until the oldest call in the window
leaves it; in Redis that is one Lua script, one round trip.

A limited call *waits* (with the injected ``sleep``) and tries again, bounded
by its deadline; if the wait would pass the deadline it raises
:class:`~taskplane.errors.TaskTimeoutError` at once rather than sleeping in
vain. Waiters are not queued: when a slot frees, whichever asks first gets it.

**When Redis is unreachable the limiter fails open**: the call proceeds, and a
warning is logged at most every :data:`BACKEND_WARNING_INTERVAL_S` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable

import redis

from taskplane.config import RateLimitConfig
from taskplane.errors import BackendError, TaskTimeoutError
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: Least time between two "Redis unreachable" warnings (s).
BACKEND_WARNING_INTERVAL_S = 30.0
#: Added to every wait so a waiter wakes just after its slot frees, not just before (s).
WAKE_MARGIN_S = 0.001


class LimiterBackend(ABC):
    """Keeps the sliding windows."""

    @abstractmethod
    def try_acquire(self, key: str, *, now_ms: float, limit: int, window_ms: int) -> float:
        """Take a slot in *key*'s window: 0 if taken, else ms until one may free."""


class InMemoryLimiterBackend(LimiterBackend):
    """Windows in this process's memory, for tests and single-process use."""

    def __init__(self) -> None:
        self._windows: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def try_acquire(self, key: str, *, now_ms: float, limit: int, window_ms: int) -> float:
        with self._lock:
            window = self._windows.setdefault(key, deque())
            while window and window[0] <= now_ms - window_ms:
                window.popleft()
            if len(window) < limit:
                window.append(now_ms)
                return 0.0
            return window[len(window) - limit] + window_ms - now_ms


_ACQUIRE = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tostring(now - window))
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window))
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
return tostring(tonumber(oldest[2]) + window - now)
"""


class RedisLimiterBackend(LimiterBackend):
    """Windows as Redis sorted sets ``{prefix}:ratelimit:{key}``, shared by every process.

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "taskplane") -> None:
        self.client = client
        self.prefix = prefix
        self._script = client.register_script(_ACQUIRE)

    def try_acquire(self, key: str, *, now_ms: float, limit: int, window_ms: int) -> float:
        args = [repr(now_ms), str(window_ms), str(limit), uuid.uuid4().hex]
        try:
            reply = self._script(keys=[f"{self.prefix}:ratelimit:{key}"], args=args)
        except redis.RedisError as exc:
            raise BackendError(f"rate limiter window for {key}: {exc}") from exc
        return float(reply.decode() if isinstance(reply, bytes) else reply)


class RateLimiter:
    """Waits for a slot in an agent's window.

    Args:
        backend: Where the windows live.
        config: ``max_requests`` per ``window_ms``.
        clock: Wall clock in epoch seconds (shared by every host).
        sleep: Waits for a slot.
    """

    def __init__(
        self,
        backend: LimiterBackend | None = None,
        config: RateLimitConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.backend = backend if backend is not None else InMemoryLimiterBackend()
        self.config = config or RateLimitConfig()
        self.clock = clock
        self.sleep = sleep
        self._warnings = LogThrottle(BACKEND_WARNING_INTERVAL_S)

    def acquire(self, agent_id: str, *, deadline: float) -> float:
        """Take a slot for a call to *agent_id*, waiting for one if needed.

        Args:
            agent_id: The agent about to be called.
            deadline: Epoch seconds past which the call is pointless.

        Returns:
            Seconds spent waiting.

        Raises:
            TaskTimeoutError: No slot frees before *deadline*.
        """
        started = self.clock()
        while True:
            now = self.clock()
            try:
                wait_ms = self.backend.try_acquire(
                    agent_id,
                    now_ms=now * 1000.0,
                    limit=self.config.max_requests,
                    window_ms=self.config.window_ms,
                )
            except BackendError as exc:
                self._warn(exc)
                return now - started
            if wait_ms <= 0:
                return now - started
            wait_s = wait_ms / 1000.0 + WAKE_MARGIN_S
            if now + wait_s > deadline:
                raise TaskTimeoutError(
                    f"rate limit wait exceeded the deadline for agent {agent_id} "
                    f"(next slot in {wait_s:.3f} s)"
                )
            self.sleep(wait_s)

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("rate limiter backend unreachable, failing open: %s", exc)
