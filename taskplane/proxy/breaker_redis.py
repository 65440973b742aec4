"""One agent's circuit breaker state in Redis, shared by every process.

Each verb of :class:`~taskplane.proxy.breaker_storage.BreakerStorage` is one
Lua script, one round trip, so a transition happens exactly once however many
processes race. The scripts mirror the state classes in
:mod:`taskplane.proxy.breaker_storage`; the same behaviour suite runs against both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from taskplane.keys import breaker_key
from taskplane.proxy.breaker_storage import (
    STATE_CLOSED,
    BreakerPolicy,
    BreakerStorage,
    Gate,
    Result,
    Transition,
)
from taskplane.redisio import load_script, translated


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBreakerStorage(BreakerStorage):
    """One agent's breaker state in Redis, shared by every process.

    Keys (:func:`taskplane.keys.breaker_key`, tagged by agent): ``{prefix}:breaker:{agent}``
    (a hash: state, opened_at, trial) and ``…:failures`` (a sorted set, the failure window).

    Raises:
        BackendError: From every method, when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, name: str, *, prefix: str = "taskplane") -> None:
        super().__init__(name)
        self.client = client
        self.key = breaker_key(prefix, name)
        self.failures_key = f"{self.key}:failures"
        self._admit = load_script(client, "taskplane.proxy", "breaker_admit.lua")
        self._record = load_script(client, "taskplane.proxy", "breaker_record.lua")

    def admit(self, *, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        args = [repr(now), repr(policy.reset_timeout_s), repr(lease_s), token]
        with translated(f"circuit breaker {self.name}", "admitting a call"):
            state, allowed, retry_in, opened_trial = self._admit(keys=[self.key], args=args)
        return Gate(
            _text(state),
            _text(allowed) == "1",
            float(_text(retry_in)),
            opened_trial=_text(opened_trial) == "1",
        )

    def record(
        self,
        result: Result,
        *,
        now: float,
        policy: BreakerPolicy,
        token: str = "",
        member: str = "",
    ) -> Transition:
        keys = [self.key, self.failures_key]
        args = [
            result,
            repr(now),
            repr(policy.monitoring_period_s),
            str(policy.failure_threshold),
            token,
            member or repr(now),
        ]
        with translated(f"circuit breaker {self.name}", "recording an outcome"):
            change, failures = self._record(keys=keys, args=args)
        return Transition(_text(change), int(_text(failures)))

    def _field(self, name: str) -> str | None:
        with translated(f"circuit breaker {self.name}", "reading its state"):
            raw = self.client.hget(self.key, name)
        return None if raw is None else _text(raw)

    @property
    def state(self) -> str:
        return self._field("state") or STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        """Force a state (an operator's override); ``closed`` forgets every failure."""
        with translated(f"circuit breaker {self.name}", "forcing its state"):
            if state == STATE_CLOSED:
                self.client.delete(self.key, self.failures_key)
            else:
                self.client.hset(self.key, "state", state)
                self.client.hdel(self.key, "trial", "trial_until")

    @property
    def counter(self) -> int:
        with translated(f"circuit breaker {self.name}", "counting failures"):
            return int(self.client.zcard(self.failures_key))

    @property
    def opened_at(self) -> datetime | None:
        raw = self._field("opened_at")
        return None if raw is None else datetime.fromtimestamp(float(raw), tz=UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        with translated(f"circuit breaker {self.name}", "setting when it opened"):
            self.client.hset(self.key, "opened_at", repr(when.timestamp()))
