"""Per-agent sliding-window rate limits and shared quotas, kept for every worker.

At most ``max_requests`` calls start in any ``window_ms`` window, per agent,
across the whole cluster (the agent's policy, else the settings). An agent
whose policy names a :class:`~taskplane.proxy.policy.Quota` also needs a slot
in the quota's window, which all its agents share. A backend's one verb,
:meth:`LimiterBackend.reserve`, books the earliest instant every window
involved allows — now, or a moment in the future — in all of them at once,
and says how far away it is; in Redis that is one Lua script, one round trip.
A new booking never goes before one already made in the same window, so a
backlog drains in arrival order.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis

from taskplane.config import RateLimitConfig
from taskplane.errors import BackendError, RateLimitedError
from taskplane.proxy.policy import AgentPolicy, Quota
from taskplane.redisio import load_script
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: Least time between two "Redis unreachable" warnings (s).
BACKEND_WARNING_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Window:
    """One sliding window: at most *limit* calls per *window_ms*, stored under *key*."""

    key: str
    limit: int
    window_ms: int


def agent_window_key(agent_id: str) -> str:
    """Where an agent's own window lives (after the key prefix)."""
    return f"ratelimit:{agent_id}"


def quota_window_key(name: str) -> str:
    """Where a quota's window lives (after the key prefix)."""
    return f"quota:{name}:requests"


class LimiterBackend(ABC):
    """Keeps the sliding windows."""

    @abstractmethod
    def reserve(
        self, windows: Sequence[Window], *, now_ms: float, horizon_ms: float
    ) -> tuple[bool, float]:
        """Book the earliest instant free in every one of *windows*, in all of them.

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
        self, windows: Sequence[Window], *, now_ms: float, horizon_ms: float
    ) -> tuple[bool, float]:
        with self._lock:
            at = now_ms
            for spec in windows:
                window = self._windows.setdefault(spec.key, [])
                del window[: bisect.bisect_right(window, now_ms - spec.window_ms)]
                if window:
                    at = max(at, window[-1])
                if len(window) >= spec.limit:
                    at = max(at, window[len(window) - spec.limit] + spec.window_ms)
            if at - now_ms > horizon_ms:
                return False, at - now_ms
            for spec in windows:
                bisect.insort(self._windows[spec.key], at)
            return True, at - now_ms


class RedisLimiterBackend(LimiterBackend):
    """Windows as Redis sorted sets ``{prefix}:{window.key}``, shared by every process.

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "taskplane") -> None:
        self.client = client
        self.prefix = prefix
        self._script = load_script(client, "taskplane.proxy", "reserve_slot.lua")

    def reserve(
        self, windows: Sequence[Window], *, now_ms: float, horizon_ms: float
    ) -> tuple[bool, float]:
        args = [repr(now_ms), repr(horizon_ms), uuid.uuid4().hex]
        for spec in windows:
            args += [str(spec.window_ms), str(spec.limit)]
        keys = [f"{self.prefix}:{spec.key}" for spec in windows]
        try:
            booked, wait = self._script(keys=keys, args=args)
        except redis.RedisError as exc:
            raise BackendError(f"rate limiter windows {', '.join(keys)}: {exc}") from exc
        return bool(booked), float(wait.decode() if isinstance(wait, bytes) else wait)


class RateLimiter:
    """Books slots in agents' and quotas' windows.

    Args:
        backend: Where the windows live.
        config: ``max_requests`` per ``window_ms`` for agents whose policy sets none.
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

    def agent_window(self, agent_id: str, policy: AgentPolicy | None = None) -> Window:
        """The agent's own window: its policy's limit, else the settings'."""
        limit = self.config.max_requests
        window_ms = self.config.window_ms
        if policy is not None:
            limit = policy.max_requests or limit
            window_ms = policy.window_ms or window_ms
        return Window(agent_window_key(agent_id), limit, window_ms)

    def reserve(
        self,
        agent_id: str,
        *,
        deadline: float,
        policy: AgentPolicy | None = None,
        quota: Quota | None = None,
    ) -> None:
        """Book a slot for a call to *agent_id*; return when the call may start now.

        Args:
            agent_id: The agent about to be called.
            deadline: Epoch seconds past which the call is pointless.
            policy: The agent's policy (its ``maxRequests``/``windowMs``).
            quota: The quota the agent shares, if any: its window is booked too.

        Raises:
            RateLimitedError: The slot is ``wait_s`` away; ``reserved`` says
                whether it was booked (it is not when it is after *deadline*).
        """
        now = self.clock()
        try:
            windows = [self.agent_window(agent_id, policy)]
            if quota is not None:
                windows.append(
                    Window(quota_window_key(quota.name), quota.max_requests, quota.window_ms)
                )
            booked, wait_ms = self.backend.reserve(
                windows, now_ms=now * 1000.0, horizon_ms=max(deadline - now, 0.0) * 1000.0
            )
        except BackendError as exc:
            self._warn(exc)
            return
        if booked and wait_ms <= 0:
            return
        wait_s = wait_ms / 1000.0
        where = "booked" if booked else "after the deadline, not booked"
        limits = "rate limit" if quota is None else f"rate limit and quota {quota.name}"
        raise RateLimitedError(
            f"agent {agent_id}: {limits}, next slot in {wait_s:.3f} s ({where})",
            wait_s,
            reserved=booked,
        )

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("rate limiter backend unreachable, failing open: %s", exc)
