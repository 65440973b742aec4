"""One agent's circuit breaker state in Redis, shared by every process.

Each verb of :class:`~taskplane.proxy.breaker_storage.BreakerStorage` is one
Lua script, one round trip, so a transition happens exactly once however many
processes race. The scripts mirror the state classes in
:mod:`taskplane.proxy.breaker_storage`; the same behaviour suite runs against both.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from taskplane.errors import BackendError
from taskplane.keys import breaker_key
from taskplane.proxy.breaker_storage import (
    STATE_CLOSED,
    BreakerPolicy,
    BreakerStorage,
    Gate,
    Result,
    Transition,
)

_ADMIT = """
-- KEYS[1] the breaker hash; ARGV: now, reset_timeout_s, lease_s, trial token.
-- Returns {state, allowed '1'|'0', retry_in_s, '1' when this call moved open -> half-open}.
local s = redis.call('HMGET', KEYS[1], 'state', 'opened_at', 'trial_until')
local state = s[1]
if not state or state == 'closed' then return {'closed', '1', '0', '0'} end
local now = tonumber(ARGV[1])
if state == 'open' then
  local reopen_at = tonumber(s[2]) + tonumber(ARGV[2])
  if now < reopen_at then return {'open', '0', tostring(reopen_at - now), '0'} end
else
  local trial_until = tonumber(s[3] or '0') or 0
  if now < trial_until then return {'half-open', '0', tostring(trial_until - now), '0'} end
end
redis.call('HSET', KEYS[1], 'state', 'half-open', 'trial', ARGV[4],
           'trial_until', tostring(now + tonumber(ARGV[3])))
return {'half-open', '1', '0', state == 'open' and '1' or '0'}
"""

_RECORD = """
-- KEYS[1] the breaker hash, KEYS[2] the failure window (sorted set);
-- ARGV: result, now, monitoring_period_s, failure_threshold, trial token, unique member.
-- Returns {change 'open'|'close'|'', failures}.
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
local result, token = ARGV[1], ARGV[5]
if state == 'half-open' then
  if token == '' or redis.call('HGET', KEYS[1], 'trial') ~= token then return {'', '0'} end
  if result == 'success' then redis.call('DEL', KEYS[1], KEYS[2]); return {'close', '0'} end
  if result == 'abandon' then
    redis.call('HDEL', KEYS[1], 'trial', 'trial_until'); return {'', '0'}
  end
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  redis.call('HDEL', KEYS[1], 'trial', 'trial_until')
  return {'open', '1'}
end
if state ~= 'closed' or result ~= 'failure' or token ~= '' then return {'', '0'} end
local now = tonumber(ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tostring(now - tonumber(ARGV[3])))
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[4]) then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', ARGV[2])
  return {'open', tostring(n)}
end
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[3]) * 1000))
return {'', tostring(n)}
"""


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
        self._admit = client.register_script(_ADMIT)
        self._record = client.register_script(_RECORD)

    def admit(self, *, now: float, policy: BreakerPolicy, lease_s: float, token: str) -> Gate:
        args = [repr(now), repr(policy.reset_timeout_s), repr(lease_s), token]
        try:
            state, allowed, retry_in, opened_trial = self._admit(keys=[self.key], args=args)
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc
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
        try:
            change, failures = self._record(keys=keys, args=args)
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc
        return Transition(_text(change), int(_text(failures)))

    def _field(self, name: str) -> str | None:
        try:
            raw = self.client.hget(self.key, name)
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc
        return None if raw is None else _text(raw)

    @property
    def state(self) -> str:
        return self._field("state") or STATE_CLOSED

    @state.setter
    def state(self, state: str) -> None:
        """Force a state (an operator's override); ``closed`` forgets every failure."""
        try:
            if state == STATE_CLOSED:
                self.client.delete(self.key, self.failures_key)
            else:
                self.client.hset(self.key, "state", state)
                self.client.hdel(self.key, "trial", "trial_until")
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc

    @property
    def counter(self) -> int:
        try:
            return int(self.client.zcard(self.failures_key))
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc

    @property
    def opened_at(self) -> datetime | None:
        raw = self._field("opened_at")
        return None if raw is None else datetime.fromtimestamp(float(raw), tz=UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        try:
            self.client.hset(self.key, "opened_at", repr(when.timestamp()))
        except redis.RedisError as exc:
            raise BackendError(f"circuit breaker state for {self.name}: {exc}") from exc
