"""Per-agent sliding-window rate limits, shared by every worker.

At most ``max_requests`` calls start in any ``window_ms`` window, per agent,
across the whole cluster. A backend's one verb, :meth:`LimiterBackend.reserve`,
books the earliest slot the window allows — now, or a moment in the future —
and says how far away it is; in Redis that is one Lua script, one round trip.

A limited call never waits in a thread: :meth:`RateLimiter.reserve` returns
raises :class:`~taskplane.errors.RateLimitedError` saying when the booked
slot comes, and the task is rescheduled for it (a Celery retry with a
countdown). Booking in advance makes a backlog drain in arrival order at
exactly the limit, instead of every waiter waking at each freed slot to race
for it. A slot further away than the task's deadline is not booked
(``RateLimitedError.reserved`` is false): the task ends as ``timeout`` at once.

**When Redis is unreachable the limiter fails open**: the call proceeds, and a
warning is logged at most every :data:`BACKEND_WARNING_INTERVAL_S` seconds.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable

import redis

from taskplane.config import RateLimitConfig
from taskplane.errors import BackendError, RateLimitedError
from taskplane.redisio import load_script
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: Least time between two "Redis unreachable" warnings (s).
BACKEND_WARNING_INTERVAL_S = 30.0


class LimiterBackend(ABC):
    """Keeps the sliding windows."""

    @abstractmethod
    def reserve(
        self, key: str, *, now_ms: float, limit: int, window_ms: int, horizon_ms: float
    ) -> tuple[bool, float]:
        """Book the earliest slot in *key*'s window.

        Returns:
            ``(booked, ms_until_slot)``; nothing is booked when the slot is
            further than *horizon_ms* away.
        """


class InMemoryLimiterBackend(LimiterBackend):
    """Windows in this process's memory, for tests and single-process use (same rule as Lua)."""

    def __init__(self) -> None:
        self._windows: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def reserve(
        self, key: str, *, now_ms: float, limit: int, window_ms: int, horizon_ms: float
    ) -> tuple[bool, float]:
        with self._lock:
            window = self._windows.setdefault(key, [])
            del window[: bisect.bisect_right(window, now_ms - window_ms)]
            at = now_ms
            if len(window) >= limit:
                at = max(now_ms, window[len(window) - limit] + window_ms)
            if at - now_ms > horizon_ms:
                return False, at - now_ms
            bisect.insort(window, at)
            return True, at - now_ms


class RedisLimiterBackend(LimiterBackend):
    """Windows as Redis sorted sets ``{prefix}:ratelimit:{key}``, shared by every process.

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "taskplane") -> None:
        self.client = client
        self.prefix = prefix
        self._script = load_script(client, "taskplane.proxy", "reserve_slot.lua")

    def reserve(
        self, key: str, *, now_ms: float, limit: int, window_ms: int, horizon_ms: float
    ) -> tuple[bool, float]:
        args = [repr(now_ms), str(window_ms), str(limit), uuid.uuid4().hex, repr(horizon_ms)]
        try:
            booked, wait = self._script(keys=[f"{self.prefix}:ratelimit:{key}"], args=args)
        except redis.RedisError as exc:
            raise BackendError(f"rate limiter window for {key}: {exc}") from exc
        return bool(booked), float(wait.decode() if isinstance(wait, bytes) else wait)


class RateLimiter:
    """Books slots in agents' windows.

    Args:
        backend: Where the windows live.
        config: ``max_requests`` per ``window_ms``.
        clock: Wall clock in epoch seconds (shared by every host).
    """

    def __init__(
        self,
        backend: LimiterBackend | None = None,
        config: RateLimitConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.backend = backend if backend is not None else InMemoryLimiterBackend()
        self.config = config or RateLimitConfig()
        self.clock = clock
        self._warnings = LogThrottle(BACKEND_WARNING_INTERVAL_S)

    def reserve(self, agent_id: str, *, deadline: float) -> None:
        """Book a slot for a call to *agent_id*; return when the call may start now.

        Args:
            agent_id: The agent about to be called.
            deadline: Epoch seconds past which the call is pointless.

        Raises:
            RateLimitedError: The slot is ``wait_s`` away; ``reserved`` says
                whether it was booked (it is not when it is after *deadline*).
        """
        now = self.clock()
        try:
            booked, wait_ms = self.backend.reserve(
                agent_id,
                now_ms=now * 1000.0,
                limit=self.config.max_requests,
                window_ms=self.config.window_ms,
                horizon_ms=max(deadline - now, 0.0) * 1000.0,
            )
        except BackendError as exc:
            self._warn(exc)
            return
        if booked and wait_ms <= 0:
            return
        wait_s = wait_ms / 1000.0
        where = "booked" if booked else "after the deadline, not booked"
        raise RateLimitedError(
            f"agent {agent_id}: rate limit, next slot in {wait_s:.3f} s ({where})",
            wait_s,
            reserved=booked,
        )

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("rate limiter backend unreachable, failing open: %s", exc)
