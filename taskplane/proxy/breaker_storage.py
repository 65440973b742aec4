"""Where one agent's circuit breaker keeps its state: in memory or in Redis.

A storage is a :class:`pybreaker.CircuitBreakerStorage`: a
:class:`pybreaker.CircuitBreaker` reads its ``state``, ``counter`` and
``opened_at`` (see :mod:`taskplane.proxy.breaker`). pybreaker's own writes
(``increment_counter``, ``state = …``, ``opened_at = …``) are separate round
trips that two processes can interleave, so the state is changed only through
two atomic verbs of this interface, :meth:`BreakerStorage.admit` and
:meth:`BreakerStorage.record`. Each verb is one critical section: a lock in
memory, one Lua script (one round trip) in Redis, so a transition happens
exactly once however many processes race. Setting ``state`` remains, as an
operator's override.

The Redis storage lives in :mod:`taskplane.proxy.breaker_redis`.

The states (written out as classes below; the Lua scripts mirror them):

* **closed** - calls pass; failures are kept in a sliding window of
  ``monitoring_period``; the ``failure_threshold``-th failure in the window opens.
* **open** - calls fail fast until ``reset_timeout`` has passed since opening;
  the first caller after that becomes the half-open trial.
* **half-open** - exactly one trial call is in flight cluster-wide, others fail
  fast. Its success closes; its failure reopens. A trial that never reports
  (its process died) is replaced once its lease runs out.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import pybreaker

STATE_CLOSED = pybreaker.STATE_CLOSED
STATE_OPEN = pybreaker.STATE_OPEN
STATE_HALF_OPEN = pybreaker.STATE_HALF_OPEN

#: What a finished call tells the breaker: ``abandon`` means "no outcome" (e.g. it never ran).
Result = Literal["success", "failure", "abandon"]


@dataclass(frozen=True)
class BreakerPolicy:
    """When a breaker opens and how long it stays open (seconds)."""

    failure_threshold: int = 5
    monitoring_period_s: float = 60.0
    reset_timeout_s: float = 30.0


@dataclass(frozen=True)
class Gate:
    """A storage's answer to :meth:`BreakerStorage.admit`.

    Attributes:
        state: The state the call was let through (or refused) in.
        allowed: Whether the call may go ahead.
        retry_in_s: When refused, how long until a call may be let through.
        opened_trial: This admission moved the breaker from open to half-open.
    """

    state: str
    allowed: bool
    retry_in_s: float = 0.0
    opened_trial: bool = False


@dataclass(frozen=True)
class Transition:
    """What :meth:`BreakerStorage.record` changed: ``"open"``, ``"close"`` or ``""``."""

    change: str = ""
    failures: int = 0


class BreakerStorage(pybreaker.CircuitBreakerStorage):
    """The shared state of one agent's breaker.

    Args:
        name: The agent id.
    """

    @abstractmethod
    def admit(self, *, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        """Let a call through or not; a call let through half-open is the trial named *token*."""

    @abstractmethod
    def record(
        self,
        result: Result,
        *,
        now: float,
        policy: BreakerPolicy,
        token: str = "",
        member: str = "",
    ) -> Transition:
        """Record a finished call (*token* is the trial's, or ``""``; *member* a unique id)."""

    @property
    def success_counter(self) -> int:
        """Successes in half-open: always 0, as the trial's one success closes the breaker."""
        return 0


# -- the states, as the in-memory storage runs them ----------------------------------------


@dataclass
class _Record:
    state: str = STATE_CLOSED
    failures: list[float] = field(default_factory=list)
    opened_at: float = 0.0
    trial: str = ""
    trial_until: float = 0.0


def _open(rec: _Record, now: float, failures: int) -> Transition:
    rec.state, rec.opened_at = STATE_OPEN, now
    rec.failures, rec.trial, rec.trial_until = [], "", 0.0
    return Transition("open", failures)


def _start_trial(rec: _Record, now: float, lease_s: float, token: str) -> Gate:
    opened_trial = rec.state == STATE_OPEN
    rec.state, rec.trial, rec.trial_until = STATE_HALF_OPEN, token, now + lease_s
    return Gate(STATE_HALF_OPEN, True, opened_trial=opened_trial)


class ClosedState:
    """Calls pass; failures within the monitoring period are counted; the threshold opens."""

    @staticmethod
    def admit(rec: _Record, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        return Gate(STATE_CLOSED, True)

    @staticmethod
    def record(
        rec: _Record, result: Result, now: float, policy: BreakerPolicy, token: str
    ) -> Transition:
        if result != "failure" or token:
            return Transition()
        horizon = now - policy.monitoring_period_s
        rec.failures = [t for t in rec.failures if t > horizon] + [now]
        if len(rec.failures) >= policy.failure_threshold:
            return _open(rec, now, len(rec.failures))
        return Transition("", len(rec.failures))


class OpenState:
    """Calls fail fast until reset_timeout has passed; then the first caller is the trial."""

    @staticmethod
    def admit(rec: _Record, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        reopen_at = rec.opened_at + policy.reset_timeout_s
        if now < reopen_at:
            return Gate(STATE_OPEN, False, reopen_at - now)
        return _start_trial(rec, now, lease_s, token)

    @staticmethod
    def record(
        rec: _Record, result: Result, now: float, policy: BreakerPolicy, token: str
    ) -> Transition:
        return Transition()  # late outcomes of calls let through before opening change nothing


class HalfOpenState:
    """One trial call is in flight; its success closes, its failure reopens, others fail fast."""

    @staticmethod
    def admit(rec: _Record, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        if now < rec.trial_until:
            return Gate(STATE_HALF_OPEN, False, rec.trial_until - now)
        return _start_trial(rec, now, lease_s, token)

    @staticmethod
    def record(
        rec: _Record, result: Result, now: float, policy: BreakerPolicy, token: str
    ) -> Transition:
        if not token or token != rec.trial:
            return Transition()
        if result == "success":
            rec.state, rec.failures, rec.trial, rec.trial_until = STATE_CLOSED, [], "", 0.0
            return Transition("close")
        if result == "abandon":
            rec.trial, rec.trial_until = "", 0.0
            return Transition()
        return _open(rec, now, 1)


STATES: dict[str, type[ClosedState] | type[OpenState] | type[HalfOpenState]] = {
    STATE_CLOSED: ClosedState,
    STATE_OPEN: OpenState,
    STATE_HALF_OPEN: HalfOpenState,
}


class InMemoryBreakerStorage(BreakerStorage):
    """One agent's breaker state in this process's memory."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self._rec = _Record()
        self._lock = threading.Lock()

    def admit(self, *, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        with self._lock:
            return STATES[self._rec.state].admit(self._rec, now, policy, lease_s, token)

    def record(
        self,
        result: Result,
        *,
        now: float,
        policy: BreakerPolicy,
        token: str = "",
        member: str = "",
    ) -> Transition:
        with self._lock:
            return STATES[self._rec.state].record(self._rec, result, now, policy, token)

    @property
    def state(self) -> str:
        return self._rec.state

    @state.setter
    def state(self, state: str) -> None:
        """Force a state (an operator's override); ``closed`` forgets every failure."""
        with self._lock:
            if state == STATE_CLOSED:
                self._rec = _Record()
            else:
                self._rec.state, self._rec.trial, self._rec.trial_until = state, "", 0.0

    @property
    def counter(self) -> int:
        return len(self._rec.failures)

    @property
    def opened_at(self) -> datetime | None:
        if self._rec.state == STATE_CLOSED:
            return None
        return datetime.fromtimestamp(self._rec.opened_at, tz=UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._rec.opened_at = when.timestamp()
