"""Per-agent sliding-window rate limits and shared quotas, kept for every worker.

At most ``max_requests`` calls start in any ``window_ms`` window, per agent,
across the whole cluster (the agent's policy, else the settings). An agent
whose policy names a :class:`~taskplane.proxy.policy.Quota` also needs a slot
in the quota's window, which all its agents share. A backend's one verb,
:meth:`LimiterBackend.reserve`, books the earliest instant every window
involved allows — now, or a moment in the future — in all of them at once,
and says how far away it is; in Redis that is one Lua script, one round trip.
In a full window a new booking never goes before one already made there,
so a backlog drains in arrival order.

Token windows (an agent's ``maxTokens``, a quota's) count tokens instead of
calls: a booking reserves an estimate, and :meth:`RateLimiter.settle` sets it
to the usage the agent reported once the call ends (and folds that into the
window's recent mean, the estimate of calls that give none). Each keeps a
running total, so a booking reads the calls' amounts only when the window is
full. A booking for later is named by the caller, so the rescheduled call —
another delivery, perhaps on another worker — settles the right one.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from taskplane.aliases import Clock
from taskplane.config import RateLimitConfig
from taskplane.errors import BackendError, RateLimitedError
from taskplane.keys import agent_tokens_key, agent_window_key, quota_tokens_key, quota_window_key
from taskplane.proxy.policy import AgentPolicy, Quota
from taskplane.redisio import load_script, translated
from taskplane.throttle import LogThrottle
from taskplane.write_behind import WriteBehind

log = logging.getLogger(__name__)

#: Least time between two "Redis unreachable" warnings (s).
BACKEND_WARNING_INTERVAL_S = 30.0


@dataclass(frozen=True)
class Window:
    """One sliding window, stored under *key*: at most *limit* per *window_ms*.

    A request window (*cost* 0) counts calls. A token window counts tokens:
    a call reserves *cost* tokens, or with *cost* -1 the window's recent mean
    per call (else *default*), and is settled to what it used when it ends.
    """

    key: str
    limit: int
    window_ms: int
    cost: int = 0
    default: int = 0

    @property
    def counts_tokens(self) -> bool:
        """Whether calls are counted in tokens."""
        return self.cost != 0


#: A window's recent mean gives the newest call this weight (an exponential mean).
MEAN_WEIGHT = 0.2
#: Tokens a call reserves when neither the task, the window's history nor the policy says.
DEFAULT_ESTIMATED_TOKENS = 1000


class LimiterBackend(ABC):
    """Keeps the sliding windows."""

    @abstractmethod
    def reserve(
        self,
        windows: Sequence[Window],
        *,
        member: str,
        later: str,
        now_ms: float,
        horizon_ms: float,
    ) -> tuple[bool, float, int]:
        """Book the earliest instant free in every one of *windows*, in all of them.

        The booking is named *member*, except in token windows when it is in
        the future: *later* there, so the rescheduled call can settle it.

        Returns:
            ``(booked, ms_until_slot, tokens_reserved)``; nothing is booked
            when the slot is further than *horizon_ms* away.
        """

    @abstractmethod
    def settle(self, windows: Sequence[Window], *, member: str, tokens: int) -> None:
        """Set *member*'s tokens in each token window to *tokens*, and fold them into its mean."""


class InMemoryLimiterBackend(LimiterBackend):
    """Windows in this process's memory, for tests and single-process use (same rule as Lua)."""

    def __init__(self) -> None:
        self._windows: dict[str, list[tuple[float, str]]] = {}
        self._tokens: dict[str, dict[str, float]] = {}
        self._means: dict[str, float] = {}
        self._lock = threading.Lock()

    def reserve(
        self,
        windows: Sequence[Window],
        *,
        member: str,
        later: str,
        now_ms: float,
        horizon_ms: float,
    ) -> tuple[bool, float, int]:
        with self._lock:
            at, reserved, costs = now_ms, 0, []
            for spec in windows:
                window = self._windows.setdefault(spec.key, [])
                tokens = self._tokens.setdefault(spec.key, {})
                gone = bisect.bisect_right(window, now_ms - spec.window_ms, key=lambda c: c[0])
                for _, old in window[:gone]:
                    tokens.pop(old, None)
                del window[:gone]
                cost = spec.cost
                if cost != 0:
                    if cost < 0:
                        cost = int(self._means.get(spec.key, spec.default))
                    cost = max(min(cost, spec.limit), 1)
                    reserved = cost
                costs.append(cost)
                if cost == 0:
                    full = len(window) >= spec.limit
                    if full:
                        at = max(at, window[len(window) - spec.limit][0] + spec.window_ms)
                else:
                    excess = sum(tokens.get(m, 0.0) for _, m in window) + cost - spec.limit
                    full = excess > 0
                    for started, old in window:
                        if excess <= 0:
                            break
                        excess -= tokens.get(old, 0.0)
                        if excess <= 0:
                            at = max(at, started + spec.window_ms)
                if full:  # never before a call already booked in a full window
                    at = max(at, window[-1][0])
            if at - now_ms > horizon_ms:
                return False, at - now_ms, reserved
            named = later if at > now_ms else member
            for spec, cost in zip(windows, costs, strict=True):
                name = named if cost != 0 else member
                bisect.insort(self._windows[spec.key], (at, name), key=lambda c: c[0])
                if cost != 0:
                    self._tokens[spec.key][name] = float(cost)
            return True, at - now_ms, reserved

    def settle(self, windows: Sequence[Window], *, member: str, tokens: int) -> None:
        with self._lock:
            for spec in windows:
                held = self._tokens.setdefault(spec.key, {})
                if member in held:
                    held[member] = float(tokens)
                mean = self._means.get(spec.key, float(tokens))
                self._means[spec.key] = mean * (1 - MEAN_WEIGHT) + tokens * MEAN_WEIGHT


class RedisLimiterBackend(LimiterBackend):
    """Windows as Redis sorted sets ``{prefix}:{window.key}``, shared by every process.

    A token window keeps each call's tokens, and its recent mean (field
    ``avg``), in the hash ``{prefix}:{window.key}:amounts``.

    Args:
        client: Where the windows live.
        prefix: Namespace of every key.
        behind: Sends settling behind the caller's back (see
            :class:`taskplane.redisio.WriteBehind`); None: settling waits for Redis.

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "taskplane", behind: WriteBehind | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.behind = behind
        self._script = load_script(client, "taskplane.proxy", "reserve_slot.lua")
        self._settle = load_script(client, "taskplane.proxy", "settle_tokens.lua")

    def _keys(self, windows: Sequence[Window]) -> list[str]:
        keys = []
        for spec in windows:
            keys += [f"{self.prefix}:{spec.key}", f"{self.prefix}:{spec.key}:amounts"]
        return keys

    def reserve(
        self,
        windows: Sequence[Window],
        *,
        member: str,
        later: str,
        now_ms: float,
        horizon_ms: float,
    ) -> tuple[bool, float, int]:
        args = [repr(now_ms), repr(horizon_ms), member, later]
        for spec in windows:
            args += [str(spec.window_ms), str(spec.limit), str(spec.cost), str(spec.default)]
        keys = self._keys(windows)
        with translated(f"rate limiter windows {', '.join(keys[::2])}", "reserving a slot"):
            booked, wait, reserved = self._script(keys=keys, args=args)
        return bool(booked), float(_text(wait)), int(float(_text(reserved)))

    def settle(self, windows: Sequence[Window], *, member: str, tokens: int) -> None:
        keys = self._keys(windows)
        args = [member, str(tokens), repr(MEAN_WEIGHT)]
        if self.behind is not None:
            self.behind.submit(self._settle, keys, args)
            return
        with translated(f"token windows {', '.join(keys[::2])}", "settling tokens"):
            self._settle(keys=keys, args=args)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


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
        clock: Clock = time.time,
    ) -> None:
        self.backend = backend if backend is not None else InMemoryLimiterBackend()
        self.config = config or RateLimitConfig()
        self.clock = clock
        self._warnings = LogThrottle(BACKEND_WARNING_INTERVAL_S)

    def agent_window(
        self, agent_id: str, policy: AgentPolicy | None = None, quota: Quota | None = None
    ) -> Window:
        """The agent's own request window: its policy's limit, else the settings'.

        It lives in *quota*'s slot when the agent shares one (see :mod:`taskplane.keys`).
        """
        limit = self.config.max_requests
        window_ms = self.config.window_ms
        if policy is not None:
            limit = policy.max_requests or limit
            window_ms = policy.window_ms or window_ms
        owner = quota.name if quota is not None else None
        return Window(agent_window_key(agent_id, owner), limit, window_ms)

    def windows(
        self,
        agent_id: str,
        policy: AgentPolicy | None = None,
        quota: Quota | None = None,
        *,
        estimate: int | None = None,
    ) -> list[Window]:
        """Every window a call to *agent_id* books: request windows, then token windows.

        Args:
            estimate: Tokens the call is expected to use; None: each token
                window's recent mean, else the policy's ``estimatedTokens``,
                else :data:`DEFAULT_ESTIMATED_TOKENS`.
        """
        own = self.agent_window(agent_id, policy, quota)
        windows = [own]
        cost = estimate if estimate is not None else -1
        default = DEFAULT_ESTIMATED_TOKENS
        if policy is not None and policy.estimated_tokens is not None:
            default = policy.estimated_tokens
        if quota is not None and quota.max_requests is not None:
            windows.append(
                Window(quota_window_key(quota.name), quota.max_requests, quota.window_ms)
            )
        if policy is not None and policy.max_tokens is not None:
            windows.append(
                Window(
                    agent_tokens_key(agent_id, quota.name if quota is not None else None),
                    policy.max_tokens,
                    own.window_ms,
                    cost,
                    default,
                )
            )
        if quota is not None and quota.max_tokens is not None:
            windows.append(
                Window(
                    quota_tokens_key(quota.name), quota.max_tokens, quota.window_ms, cost, default
                )
            )
        return windows

    def reserve(
        self,
        agent_id: str,
        *,
        deadline: float,
        policy: AgentPolicy | None = None,
        quota: Quota | None = None,
        later: str | None = None,
        estimate: int | None = None,
    ) -> str:
        """Book a slot for a call to *agent_id*; return its name when the call may start now.

        Args:
            agent_id: The agent about to be called.
            deadline: Epoch seconds past which the call is pointless.
            policy: The agent's policy (its ``maxRequests``/``maxTokens``/``windowMs``).
            quota: The quota the agent shares, if any: its windows are booked too.
            later: Names a booking for later, so the rescheduled call can
                :meth:`settle` it (a fresh name when None); a booking for now
                gets a fresh name, returned.
            estimate: Tokens the call is expected to use (see :meth:`windows`).

        Raises:
            RateLimitedError: The slot is ``wait_s`` away; ``reserved`` says
                whether it was booked (it is not when it is after *deadline*).
        """
        now = self.clock()
        windows = self.windows(agent_id, policy, quota, estimate=estimate)
        member = uuid.uuid4().hex
        try:
            booked, wait_ms, _ = self.backend.reserve(
                windows,
                member=member,
                later=later or uuid.uuid4().hex,
                now_ms=now * 1000.0,
                horizon_ms=max(deadline - now, 0.0) * 1000.0,
            )
        except BackendError as exc:
            self._warn(exc)
            return member
        if booked and wait_ms <= 0:
            return member
        wait_s = wait_ms / 1000.0
        where = "booked" if booked else "after the deadline, not booked"
        limits = "rate limit" if quota is None else f"rate limit and quota {quota.name}"
        raise RateLimitedError(
            f"agent {agent_id}: {limits}, next slot in {wait_s:.3f} s ({where})",
            wait_s,
            reserved=booked,
        )

    def settle(
        self,
        agent_id: str,
        *,
        member: str,
        tokens: int,
        policy: AgentPolicy | None = None,
        quota: Quota | None = None,
    ) -> None:
        """Settle the booking *member* to the *tokens* the call used (token windows only)."""
        windows = [w for w in self.windows(agent_id, policy, quota) if w.counts_tokens]
        if not windows:
            return
        try:
            self.backend.settle(windows, member=member, tokens=max(int(tokens), 0))
        except BackendError as exc:
            self._warn(exc)

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("rate limiter backend unreachable, failing open: %s", exc)
