"""A cluster-wide cap on calls in flight to one agent (its policy's ``maxInFlight``).

A call takes a *lease* before it is sent and gives it back when it ends; at
most ``maxInFlight`` leases of one agent exist at a time, over every worker.
A lease expires on its own after the call's timeout plus a grace period, so
the place of a worker killed mid-call comes back without anyone releasing it.

A call that finds every lease taken does not wait in its thread: it raises
:class:`~taskplane.errors.RateLimitedError` and the task is rescheduled to
try again shortly (nobody can book the moment a call in flight will end, so
the retry comes after :data:`RETRY_AFTER_FULL_S`, or sooner if a lease
expires first). In Redis a lease is taken by one Lua script, one round trip.

**When Redis is unreachable the cap fails open**, like the rate limiter.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from abc import ABC, abstractmethod

import redis

from taskplane.aliases import Clock
from taskplane.errors import BackendError, RateLimitedError
from taskplane.keys import inflight_key
from taskplane.redisio import load_script, translated
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: A call that found the cap full tries again after at most this long (s).
RETRY_AFTER_FULL_S = 0.1
#: Least time between two "Redis unreachable" warnings (s).
BACKEND_WARNING_INTERVAL_S = 30.0


class InFlightBackend(ABC):
    """Keeps the leases of every agent."""

    @abstractmethod
    def take(
        self, agent_id: str, token: str, *, now_ms: float, limit: int, lease_ms: float
    ) -> tuple[bool, float]:
        """Take a lease for *token* if fewer than *limit* are held.

        Returns:
            ``(taken, ms_until_the_earliest_lease_expires)``.
        """

    @abstractmethod
    def release(self, agent_id: str, token: str) -> None:
        """Give back the lease *token* (nothing when it has expired)."""


class InMemoryInFlightBackend(InFlightBackend):
    """Leases in this process's memory, for tests and single-process use (same rule as Lua)."""

    def __init__(self) -> None:
        self._leases: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def take(
        self, agent_id: str, token: str, *, now_ms: float, limit: int, lease_ms: float
    ) -> tuple[bool, float]:
        with self._lock:
            leases = self._leases.setdefault(agent_id, {})
            for held, expires in list(leases.items()):
                if expires <= now_ms:
                    del leases[held]
            if len(leases) >= limit:
                return False, min(leases.values()) - now_ms
            leases[token] = now_ms + lease_ms
            return True, 0.0

    def release(self, agent_id: str, token: str) -> None:
        with self._lock:
            self._leases.get(agent_id, {}).pop(token, None)

    def held(self, agent_id: str) -> int:
        """Leases of *agent_id* held now (expired ones included until the next take)."""
        with self._lock:
            return len(self._leases.get(agent_id, {}))


class RedisInFlightBackend(InFlightBackend):
    """Leases as Redis sorted sets ``{prefix}:inflight:{agent}``, shared by every process.

    The agent id is the key's hash tag (:mod:`taskplane.keys`).

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "taskplane") -> None:
        self.client = client
        self.prefix = prefix
        self._script = load_script(client, "taskplane.proxy", "take_lease.lua")

    def key(self, agent_id: str) -> str:
        """The agent's lease set."""
        return inflight_key(self.prefix, agent_id)

    def take(
        self, agent_id: str, token: str, *, now_ms: float, limit: int, lease_ms: float
    ) -> tuple[bool, float]:
        args = [repr(now_ms), str(limit), token, repr(lease_ms)]
        with translated(f"calls in flight to {agent_id}", "taking a lease"):
            taken, wait = self._script(keys=[self.key(agent_id)], args=args)
        return bool(taken), float(wait.decode() if isinstance(wait, bytes) else wait)

    def release(self, agent_id: str, token: str) -> None:
        with translated(f"calls in flight to {agent_id}", "releasing a lease"):
            self.client.zrem(self.key(agent_id), token)


class InFlightLimiter:
    """Takes and gives back leases on calls in flight.

    Args:
        backend: Where the leases live.
        clock: Wall clock in epoch seconds (shared by every host).
    """

    def __init__(self, backend: InFlightBackend | None = None, *, clock: Clock = time.time) -> None:
        self.backend = backend if backend is not None else InMemoryInFlightBackend()
        self.clock = clock
        self._warnings = LogThrottle(BACKEND_WARNING_INTERVAL_S)

    def acquire(self, agent_id: str, *, limit: int, lease_s: float, deadline: float) -> str | None:
        """Take a lease for one call to *agent_id*; its token, or None when Redis is down.

        Args:
            agent_id: The agent about to be called.
            limit: Its ``maxInFlight``.
            lease_s: How long the lease lasts unless given back (the call's
                timeout and a grace period).
            deadline: Epoch seconds past which the call is pointless.

        Raises:
            RateLimitedError: Every lease is taken; try again ``wait_s`` from
                now (``reserved`` is false when that is after *deadline*).
        """
        now = self.clock()
        token = uuid.uuid4().hex
        try:
            taken, expiry_ms = self.backend.take(
                agent_id, token, now_ms=now * 1000.0, limit=limit, lease_ms=lease_s * 1000.0
            )
        except BackendError as exc:
            self._warn(exc)
            return None
        if taken:
            return token
        wait_s = max(min(RETRY_AFTER_FULL_S, expiry_ms / 1000.0), 0.0)
        in_time = now + wait_s < deadline
        where = "trying again" if in_time else "after the deadline"
        raise RateLimitedError(
            f"agent {agent_id}: {limit} calls in flight (maxInFlight), {where} in {wait_s:.3f} s",
            wait_s,
            reserved=in_time,
        )

    def release(self, agent_id: str, token: str | None) -> None:
        """Give back the lease *token* (None: none was taken)."""
        if token is None:
            return
        try:
            self.backend.release(agent_id, token)
        except BackendError as exc:
            self._warn(exc)  # the lease expires on its own

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("in-flight cap backend unreachable, failing open: %s", exc)
