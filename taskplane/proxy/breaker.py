"""Per-agent circuit breakers whose state every worker shares, built on pybreaker.

Each agent has a :class:`pybreaker.CircuitBreaker` (named by the agent id)
over a :class:`pybreaker.CircuitBreakerStorage` that holds the shared state
(in memory or in Redis, :mod:`taskplane.proxy.breaker_storage`), with
pybreaker's state names and its ``exclude`` list
(:data:`taskplane.errors.BREAKER_IGNORED_ERRORS`). Listeners are
:class:`pybreaker.CircuitBreakerListener` objects; ``circuit:open`` and
``circuit:close`` come from one of them, :class:`CircuitEvents`.

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

A success in the closed state costs nothing (no storage round trip; building
an agent's pybreaker object reads its state once per process); excluded
errors (4xx and the like) are not failures, and on the half-open trial they
count as a success (the agent answered).

Listeners hear, as pybreaker would tell them: ``success(cb)`` and
``failure(cb, exc)`` for every call the breaker tracked (none while it fails
open), and ``state_change(cb, old,
new)`` for each transition (closed → open, open → half-open, half-open →
closed or open) exactly once cluster-wide, from the process whose atomic step
made it; the new state of an opening is a :class:`TrippedState`, which says
how many failures opened it (1 when a failed trial reopens).
``before_call`` is not called: no function is wrapped. The listeners are held
here, not on the pybreaker objects, because pybreaker also notifies its own
listeners when a process merely notices a change made elsewhere. A failing
listener is logged and does not break the call.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import pybreaker
import redis

from taskplane.aliases import Clock, Emit
from taskplane.config import CircuitBreakerConfig
from taskplane.errors import BREAKER_IGNORED_ERRORS, BackendError, CircuitOpenError
from taskplane.proxy.breaker_redis import RedisBreakerStorage
from taskplane.proxy.breaker_storage import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    BreakerPolicy,
    BreakerStorage,
    InMemoryBreakerStorage,
    Result,
)
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

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


class TrippedState(pybreaker.CircuitOpenState):
    """pybreaker's open state as announced by the process whose call opened the circuit.

    Attributes:
        failures: The failures in the window that opened it (1 for a failed trial).
    """

    def __init__(
        self,
        cb: pybreaker.CircuitBreaker,
        prev_state: pybreaker.CircuitBreakerState | None = None,
        *,
        failures: int,
    ) -> None:
        super().__init__(cb, prev_state)
        self.failures = failures


def _state_object(
    circuit: pybreaker.CircuitBreaker, name: str, *, failures: int = 0
) -> pybreaker.CircuitBreakerState:
    """pybreaker's object for state *name* (built without notifying anyone)."""
    if name == STATE_OPEN:
        return TrippedState(circuit, failures=failures)
    if name == STATE_HALF_OPEN:
        return pybreaker.CircuitHalfOpenState(circuit, None)
    return pybreaker.CircuitClosedState(circuit)


def _no_emit(event_type: str, data: dict[str, Any]) -> None:
    """Default emitter: drop the event."""


class CircuitEvents(pybreaker.CircuitBreakerListener):
    """The listener behind ``circuit:open{agentId, failures}`` and ``circuit:close{agentId}``.

    Args:
        emit: Receives each event; its errors are logged, not raised.
    """

    def __init__(self, emit: Emit) -> None:
        self.emit = emit

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if isinstance(new_state, TrippedState):
            log.warning(
                "circuit for agent %s opened after %d failures", cb.name, new_state.failures
            )
            self._emit("circuit:open", {"agentId": cb.name, "failures": new_state.failures})
        elif new_state.name == STATE_CLOSED:
            log.info("circuit for agent %s closed", cb.name)
            self._emit("circuit:close", {"agentId": cb.name})

    def _emit(self, event_type: str, data: dict[str, Any]) -> None:
        try:
            self.emit(event_type, data)
        except Exception:
            log.exception("emitting %s failed", event_type)


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


class CircuitBreaker:
    """The circuit breakers of every agent, one shared state per agent id.

    Args:
        config: Threshold, window and reset timeout (ms, as in settings).
        storage: Builds the storage of one agent's breaker from its id.
        emit: Receives ``circuit:open`` / ``circuit:close`` events (a
            :class:`CircuitEvents` listener, the first one).
        listeners: More pybreaker listeners (metrics, say), told about every agent.
        clock: Wall clock in epoch seconds (shared by every host).
    """

    def __init__(
        self,
        config: CircuitBreakerConfig | None = None,
        *,
        storage: StorageFactory = InMemoryBreakerStorage,
        emit: Emit = _no_emit,
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        clock: Clock = time.time,
    ) -> None:
        self.policy = policy_from_config(config or CircuitBreakerConfig())
        self._factory = storage
        self.listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (
            CircuitEvents(emit),
            *listeners,
        )
        self.clock = clock
        self._storages: dict[str, BreakerStorage] = {}
        self._circuits: dict[str, pybreaker.CircuitBreaker] = {}
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
        listeners: Iterable[pybreaker.CircuitBreakerListener] = (),
        clock: Clock = time.time,
    ) -> CircuitBreaker:
        """Breakers whose state lives in Redis under ``{prefix}:breaker:*``."""

        def storage(agent_id: str) -> BreakerStorage:
            return RedisBreakerStorage(client, agent_id, prefix=prefix)

        return cls(config, storage=storage, emit=emit, listeners=listeners, clock=clock)

    def storage(self, agent_id: str) -> BreakerStorage:
        """The (cached) storage of *agent_id*'s breaker."""
        found = self._storages.get(agent_id)
        if found is None:
            with self._lock:
                found = self._storages.setdefault(agent_id, self._factory(agent_id))
        return found

    def circuit(self, agent_id: str) -> pybreaker.CircuitBreaker:
        """*agent_id*'s pybreaker breaker over its storage (cached; never called through).

        Raises:
            BackendError: Building it reads the state, and the storage cannot be reached.
        """
        found = self._circuits.get(agent_id)
        if found is None:
            built = pybreaker.CircuitBreaker(
                fail_max=self.policy.failure_threshold,
                reset_timeout=self.policy.reset_timeout_s,
                exclude=BREAKER_IGNORED_ERRORS,
                state_storage=self.storage(agent_id),
                name=agent_id,
            )
            with self._lock:
                found = self._circuits.setdefault(agent_id, built)
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
        rules = policy or self.policy
        try:
            circuit = self.circuit(agent_id)
            gate = self.storage(agent_id).admit(
                now=self.clock(), policy=rules, lease_s=lease_s, token=token
            )
        except BackendError as exc:
            self._warn(exc)
            return Admission(agent_id, STATE_CLOSED, tracked=False, policy=policy)
        circuit.fail_max, circuit.reset_timeout = rules.failure_threshold, rules.reset_timeout_s
        if gate.opened_trial:
            self._changed(circuit, STATE_OPEN, STATE_HALF_OPEN)
        if not gate.allowed:
            raise CircuitOpenError(
                f"circuit for agent {agent_id} is {gate.state}; "
                f"retry in {max(gate.retry_in_s, 0.0):.1f} s"
            )
        trial = token if gate.state != STATE_CLOSED else ""
        return Admission(agent_id, gate.state, trial_token=trial, policy=policy)

    def record(self, admission: Admission, error: BaseException | None = None) -> None:
        """Record how an admitted call ended: *error* None is a success.

        An excluded error (pybreaker's ``is_system_error`` is false) is a success.
        """
        circuit = self._circuit_of(admission)
        if circuit is None:
            return
        if error is not None and circuit.is_system_error(error):
            self._notify(circuit, "failure", error)
            self._record(admission, circuit, "failure")
        else:
            self._notify(circuit, "success")
            self._record(admission, circuit, "success")

    def abandon(self, admission: Admission) -> None:
        """Record that an admitted call never reached the agent (frees a half-open trial)."""
        circuit = self._circuit_of(admission)
        if circuit is not None:
            self._record(admission, circuit, "abandon")

    def _circuit_of(self, admission: Admission) -> pybreaker.CircuitBreaker | None:
        """The circuit of a tracked admission (None: the breaker failed open for it)."""
        return self._circuits.get(admission.agent_id) if admission.tracked else None

    def _record(
        self, admission: Admission, circuit: pybreaker.CircuitBreaker, result: Result
    ) -> None:
        if result != "failure" and not admission.trial_token:
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
        before = STATE_HALF_OPEN if admission.trial_token else STATE_CLOSED
        if change.change == "open":
            self._changed(circuit, before, STATE_OPEN, failures=change.failures)
        elif change.change == "close":
            self._changed(circuit, before, STATE_CLOSED)

    def _changed(
        self, circuit: pybreaker.CircuitBreaker, old: str, new: str, *, failures: int = 0
    ) -> None:
        """Tell the listeners about a transition this process made."""
        before = _state_object(circuit, old)
        self._notify(
            circuit, "state_change", before, _state_object(circuit, new, failures=failures)
        )

    def _notify(self, circuit: pybreaker.CircuitBreaker, hook: str, *args: Any) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, hook)(circuit, *args)
            except Exception:
                log.exception("circuit breaker listener %r failed in %s", listener, hook)

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("circuit breaker storage unreachable, failing open: %s", exc)
