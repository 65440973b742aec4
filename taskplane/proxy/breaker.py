"""Per-agent circuit breakers whose state every worker shares.

Agent calls are never routed through :meth:`pybreaker.CircuitBreaker.call`:
it holds a lock for the whole call, which would serialise every call to one
agent in a process. Instead a call is bracketed by two short atomic steps on
the shared storage (see :mod:`taskplane.proxy.breaker_storage` for the state
machine)::

    admission = breaker.before_call(agent_id)      # CircuitOpenError when open
    try:
        outcome = transport.send(...)
    except ExecutionError as exc:
        breaker.record(admission, exc)
        raise
    breaker.record(admission)

A success in the closed state costs nothing (no storage round trip); errors in
:data:`taskplane.errors.BREAKER_IGNORED_ERRORS` (4xx and the like) are not
failures, and on the half-open trial they count as a success (the agent
answered). Transitions emit ``circuit:open{agentId, failures}`` and
``circuit:close{agentId}`` exactly once cluster-wide, from the process whose
atomic step made the transition; ``failures`` is 1 when a failed trial reopens.

**When Redis is unreachable the breaker fails open**: calls proceed as if the
circuit were closed (an agent outage must not be compounded by a Redis one),
nothing is counted, and a warning is logged at most every
:data:`BACKEND_WARNING_INTERVAL_S` seconds. How long "unreachable" takes to
find out is the Redis client's business: give the client on this path short
socket timeouts and few retries (redis-py retries three times with backoff by
default, seconds per call while Redis is down).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from taskplane.config import CircuitBreakerConfig
from taskplane.errors import BREAKER_IGNORED_ERRORS, BackendError, CircuitOpenError
from taskplane.proxy.breaker_redis import RedisBreakerStorage
from taskplane.proxy.breaker_storage import (
    STATE_CLOSED,
    BreakerPolicy,
    BreakerStorage,
    InMemoryBreakerStorage,
    Result,
)
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], None]
StorageFactory = Callable[[str], BreakerStorage]

#: How long a half-open trial may stay unreported before another caller replaces it (s).
DEFAULT_TRIAL_LEASE_S = 60.0
#: Least time between two "Redis unreachable" warnings from one breaker (s).
BACKEND_WARNING_INTERVAL_S = 30.0


def policy_from_config(config: CircuitBreakerConfig) -> BreakerPolicy:
    """Convert the settings (ms) into a policy (s)."""
    return BreakerPolicy(
        failure_threshold=config.failure_threshold,
        monitoring_period_s=config.monitoring_period / 1000.0,
        reset_timeout_s=config.reset_timeout / 1000.0,
    )


@dataclass(frozen=True)
class Admission:
    """A call the breaker let through; hand it back to :meth:`CircuitBreaker.record`.

    Attributes:
        agent_id: The agent called.
        state: The breaker state when the call was let through.
        trial_token: Non-empty when this call is the half-open trial.
        tracked: False when the storage was unreachable and the breaker failed open.
        policy: The thresholds this call was admitted under (None: the breaker's own).
    """

    agent_id: str
    state: str
    trial_token: str = ""
    tracked: bool = True
    policy: BreakerPolicy | None = None


def _no_emit(event_type: str, data: dict[str, Any]) -> None:
    """Default emitter: drop the event."""


class CircuitBreaker:
    """The circuit breakers of every agent, one shared state per agent id.

    Args:
        config: Threshold, window and reset timeout (ms, as in settings).
        storage: Builds the storage of one agent's breaker from its id.
        emit: Receives ``circuit:open`` / ``circuit:close`` events; its errors are logged.
        clock: Wall clock in epoch seconds (shared by every host).
    """

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        storage: StorageFactory = InMemoryBreakerStorage,
        emit: Emit = _no_emit,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy_from_config(config or CircuitBreakerConfig())
        self._factory = storage
        self.emit = emit
        self.clock = clock
        self._storages: dict[str, BreakerStorage] = {}
        self._lock = threading.Lock()
        self._warnings = LogThrottle(BACKEND_WARNING_INTERVAL_S)

    @classmethod
    def with_redis(
        cls,
        client: redis.Redis,
        config: CircuitBreakerConfig | None = None,
        *,
        prefix: str = "taskplane",
        emit: Emit = _no_emit,
        clock: Callable[[], float] = time.time,
    ) -> CircuitBreaker:
        """Breakers whose state lives in Redis under ``{prefix}:breaker:*``."""

        def storage(agent_id: str) -> BreakerStorage:
            return RedisBreakerStorage(client, agent_id, prefix=prefix)

        return cls(config, storage=storage, emit=emit, clock=clock)

    def storage(self, agent_id: str) -> BreakerStorage:
        """The (cached) storage of *agent_id*'s breaker."""
        found = self._storages.get(agent_id)
        if found is None:
            with self._lock:
                found = self._storages.setdefault(agent_id, self._factory(agent_id))
        return found

    def state(self, agent_id: str) -> str:
        """``"closed"``, ``"open"`` or ``"half-open"`` as the shared storage says.

        Raises:
            BackendError: The storage cannot be reached.
        """
        return self.storage(agent_id).state

    def before_call(
        self,
        agent_id: str,
        *,
        lease_s: float = DEFAULT_TRIAL_LEASE_S,
        policy: BreakerPolicy | None = None,
    ) -> Admission:
        """Let a call to *agent_id* through, or fail fast.

        Args:
            agent_id: The agent about to be called.
            lease_s: If this call becomes the half-open trial, how long others
                wait for its outcome before one of them replaces it.
            policy: The agent's own thresholds (None: the breaker's, from settings).

        Raises:
            CircuitOpenError: The circuit is open, or half-open with a trial in flight.
        """
        token = uuid.uuid4().hex
        try:
            gate = self.storage(agent_id).admit(
                now=self.clock(), policy=policy or self.policy, lease_s=lease_s, token=token
            )
        except BackendError as exc:
            self._warn(exc)
            return Admission(agent_id, STATE_CLOSED, tracked=False, policy=policy)
        if not gate.allowed:
            raise CircuitOpenError(
                f"circuit for agent {agent_id} is {gate.state}; "
                f"retry in {max(gate.retry_in_s, 0.0):.1f} s"
            )
        trial = token if gate.state != STATE_CLOSED else ""
        return Admission(agent_id, gate.state, trial_token=trial, policy=policy)

    def record(self, admission: Admission, error: BaseException | None = None) -> None:
        """Record how an admitted call ended: *error* None is a success."""
        if error is None or isinstance(error, BREAKER_IGNORED_ERRORS):
            self._record(admission, "success")
        else:
            self._record(admission, "failure")

    def abandon(self, admission: Admission) -> None:
        """Record that an admitted call never reached the agent (frees a half-open trial)."""
        self._record(admission, "abandon")

    def _record(self, admission: Admission, result: Result) -> None:
        if not admission.tracked or (result != "failure" and not admission.trial_token):
            return
        try:
            change = self.storage(admission.agent_id).record(
                result,
                now=self.clock(),
                policy=admission.policy or self.policy,
                token=admission.trial_token,
                member=uuid.uuid4().hex,
            )
        except BackendError as exc:
            self._warn(exc)
            return
        if change.change == "open":
            log.warning(
                "circuit for agent %s opened after %d failures", admission.agent_id, change.failures
            )
            self._emit("circuit:open", {"agentId": admission.agent_id, "failures": change.failures})
        elif change.change == "close":
            log.info("circuit for agent %s closed", admission.agent_id)
            self._emit("circuit:close", {"agentId": admission.agent_id})

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            self.emit(event_type, data)
        except Exception:
            log.exception("emitting %s failed", event_type)

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("circuit breaker storage unreachable, failing open: %s", exc)
