"""The circuit breaker's state machine, with a fake clock, against memory and Redis storage."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pybreaker
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.aliases import Emit
from taskplane.config import CircuitBreakerConfig
from taskplane.devtools.redis_server import free_port
from taskplane.errors import CircuitOpenError, ClientError, TransportError, UpstreamError
from taskplane.proxy.breaker import CircuitBreaker
from taskplane.proxy.breaker_redis import RedisBreakerStorage
from taskplane.proxy.breaker_storage import (
    STATE_CLOSED,
    STATE_HALF_OPEN,
    STATE_OPEN,
    BreakerPolicy,
    BreakerStorage,
    InMemoryBreakerStorage,
)
from taskplane.proxy.policy import AgentPolicy

CONFIG = CircuitBreakerConfig(failure_threshold=3, reset_timeout=30_000, monitoring_period=60_000)
AGENT = "agent-1"


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Rig:
    clock: FakeClock
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    listeners: list[pybreaker.CircuitBreakerListener] = field(default_factory=list)
    emitter: Emit | None = None
    storage: Callable[[str], BreakerStorage] = InMemoryBreakerStorage

    def emit(self, event_type: str, data: dict[str, Any]) -> None:
        self.events.append((event_type, data))

    def build(self) -> CircuitBreaker:
        return CircuitBreaker(
            CONFIG,
            storage=self.storage,
            emit=self.emitter or self.emit,
            listeners=self.listeners,
            clock=self.clock,
        )


@pytest.fixture(params=["memory", "redis"])
def rig(request: pytest.FixtureRequest) -> Rig:
    rig = Rig(FakeClock())
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
        rig.storage = lambda agent_id: RedisBreakerStorage(client, agent_id, prefix="tp-unit")
    return rig


class Recorder(pybreaker.CircuitBreakerListener):
    """Remembers what pybreaker's listener interface was told."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, ...]] = []
        self.circuits: list[pybreaker.CircuitBreaker] = []

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.heard.append(("failure", type(exc).__name__))
        self.circuits.append(cb)

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self.heard.append(("success",))

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        self.heard.append((old_state.name, new_state.name))


def fail(breaker: CircuitBreaker, times: int = 1, error: Exception | None = None) -> None:
    for _ in range(times):
        breaker.record(breaker.before_call(AGENT), error or TransportError("refused"))


def test_threshold_failures_within_the_window_open_the_circuit_once(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 2)
    assert breaker.state(AGENT) == STATE_CLOSED
    fail(breaker)
    assert breaker.state(AGENT) == STATE_OPEN
    assert rig.events == [("circuit:open", {"agentId": AGENT, "failures": 3})]


def test_failures_spread_beyond_the_monitoring_period_do_not_open(rig: Rig) -> None:
    breaker = rig.build()
    for _ in range(6):
        fail(breaker)
        rig.clock.advance(31)  # two failures never share a 60 s window with a third
    assert breaker.state(AGENT) == STATE_CLOSED
    assert rig.events == []


def test_an_open_circuit_fails_fast_until_the_reset_timeout(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(29.5)
    with pytest.raises(CircuitOpenError, match=r"agent-1 is open; retry in 0\.5 s"):
        breaker.before_call(AGENT)


def test_half_open_lets_exactly_one_trial_through(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(30)
    trial = breaker.before_call(AGENT)
    assert trial.trial_token and trial.state == STATE_HALF_OPEN
    for _ in range(3):
        with pytest.raises(CircuitOpenError, match="half-open"):
            breaker.before_call(AGENT)


def test_trial_success_closes_and_emits_once(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(30)
    breaker.record(breaker.before_call(AGENT))
    assert breaker.state(AGENT) == STATE_CLOSED
    assert rig.events[-1] == ("circuit:close", {"agentId": AGENT})
    assert breaker.before_call(AGENT).trial_token == ""
    fail(breaker, 2)  # the failure window started afresh
    assert breaker.state(AGENT) == STATE_CLOSED


def test_trial_failure_reopens_for_another_reset_timeout(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(30)
    breaker.record(breaker.before_call(AGENT), UpstreamError("503", 503))
    assert breaker.state(AGENT) == STATE_OPEN
    assert rig.events[-1] == ("circuit:open", {"agentId": AGENT, "failures": 1})
    rig.clock.advance(29)
    with pytest.raises(CircuitOpenError):
        breaker.before_call(AGENT)
    rig.clock.advance(1)
    assert breaker.before_call(AGENT).trial_token


def test_client_errors_do_not_count_and_a_4xx_trial_closes(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 10, ClientError("400", 400))
    assert breaker.state(AGENT) == STATE_CLOSED
    fail(breaker, 3)
    rig.clock.advance(30)
    breaker.record(breaker.before_call(AGENT), ClientError("404", 404))
    assert breaker.state(AGENT) == STATE_CLOSED


def test_an_abandoned_trial_lets_the_next_caller_try(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(30)
    breaker.abandon(breaker.before_call(AGENT))
    assert breaker.state(AGENT) == STATE_HALF_OPEN
    assert breaker.before_call(AGENT).trial_token


def test_a_trial_that_never_reports_is_replaced_after_its_lease(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    rig.clock.advance(30)
    lost = breaker.before_call(AGENT, lease_s=10)
    rig.clock.advance(9.9)
    with pytest.raises(CircuitOpenError):
        breaker.before_call(AGENT)
    rig.clock.advance(0.2)
    second = breaker.before_call(AGENT, lease_s=10)
    breaker.record(lost)  # the lost trial's late success is ignored
    assert breaker.state(AGENT) == STATE_HALF_OPEN
    breaker.record(second)
    assert breaker.state(AGENT) == STATE_CLOSED


def test_late_failures_of_calls_admitted_before_opening_change_nothing(rig: Rig) -> None:
    breaker = rig.build()
    early = [breaker.before_call(AGENT) for _ in range(5)]
    for admission in early[:3]:
        breaker.record(admission, TransportError("x"))
    opened_at = breaker.storage(AGENT).opened_at
    rig.clock.advance(20)
    for admission in early[3:]:
        breaker.record(admission, TransportError("x"))
    assert breaker.storage(AGENT).opened_at == opened_at
    assert [name for name, _ in rig.events] == ["circuit:open"]


def test_agents_have_separate_breakers(rig: Rig) -> None:
    breaker = rig.build()
    fail(breaker, 3)
    assert breaker.before_call("agent-2").state == STATE_CLOSED


def test_storage_reads_back_like_a_pybreaker_storage(rig: Rig) -> None:
    breaker = rig.build()
    storage = breaker.storage(AGENT)
    fail(breaker, 2)
    assert (storage.state, storage.counter, storage.opened_at) == (STATE_CLOSED, 2, None)
    fail(breaker)
    assert storage.state == STATE_OPEN
    assert storage.opened_at is not None
    assert storage.opened_at.timestamp() == pytest.approx(rig.clock.now)
    storage.state = STATE_CLOSED  # an operator's override
    assert breaker.before_call(AGENT).state == STATE_CLOSED


def test_a_failing_emitter_does_not_break_the_call(rig: Rig, caplog: Any) -> None:
    def explode(event_type: str, data: dict[str, Any]) -> None:
        raise RuntimeError("listener down")

    rig.emitter = explode
    breaker = rig.build()
    with caplog.at_level(logging.ERROR):
        fail(breaker, 3)
    assert breaker.state(AGENT) == STATE_OPEN
    assert "emitting circuit:open failed" in caplog.text


def test_listeners_hear_calls_and_transitions_in_pybreakers_vocabulary(rig: Rig) -> None:
    recorder = Recorder()
    rig.listeners.append(recorder)
    breaker = rig.build()
    fail(breaker, 1, ClientError("400", 400))  # excluded: a success, as pybreaker says
    fail(breaker, 3)
    rig.clock.advance(30)
    breaker.abandon(breaker.before_call(AGENT))
    breaker.record(breaker.before_call(AGENT))  # a second trial: no new transition
    assert recorder.heard == [
        ("success",),
        *[("failure", "TransportError")] * 3,
        (STATE_CLOSED, STATE_OPEN),
        (STATE_OPEN, STATE_HALF_OPEN),
        ("success",),
        (STATE_HALF_OPEN, STATE_CLOSED),
    ]
    circuit = recorder.circuits[0]
    assert circuit is breaker.circuit(AGENT)
    assert (circuit.name, circuit.fail_max, circuit.reset_timeout) == (AGENT, 3, 30.0)
    assert circuit.current_state == STATE_CLOSED
    assert ClientError in circuit.excluded_exceptions


def test_a_failing_listener_is_contained(rig: Rig, caplog: Any) -> None:
    class Broken(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
            raise RuntimeError("metrics down")

    rig.listeners.append(Broken())
    breaker = rig.build()
    with caplog.at_level(logging.ERROR):
        fail(breaker, 3)
    assert breaker.state(AGENT) == STATE_OPEN
    assert rig.events == [("circuit:open", {"agentId": AGENT, "failures": 3})]
    assert "failed in state_change" in caplog.text


def test_redis_breakers_in_two_processes_share_one_state(redis_client: redis.Redis) -> None:
    clock = FakeClock()
    events: list[str] = []
    first, second = (
        CircuitBreaker.with_redis(
            redis_client, CONFIG, prefix="tp-unit", emit=lambda t, d: events.append(t), clock=clock
        )
        for _ in range(2)
    )
    fail(first, 2)
    fail(second, 1)
    with pytest.raises(CircuitOpenError):
        first.before_call(AGENT)
    clock.advance(30)
    trial = second.before_call(AGENT)
    with pytest.raises(CircuitOpenError):
        first.before_call(AGENT)
    second.record(trial)
    assert first.state(AGENT) == STATE_CLOSED
    assert events == ["circuit:open", "circuit:close"]


def test_redis_storage_works_with_a_bytes_client(redis_url: str, redis_client: redis.Redis) -> None:
    raw = redis.Redis.from_url(redis_url)  # decode_responses=False
    try:
        breaker = CircuitBreaker.with_redis(raw, CONFIG, prefix="tp-unit", clock=FakeClock())
        fail(breaker, 3)
        assert breaker.state(AGENT) == STATE_OPEN
        assert isinstance(breaker.storage(AGENT), RedisBreakerStorage)
    finally:
        raw.close()


def test_unreachable_redis_fails_open_and_warns(caplog: Any) -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    breaker = CircuitBreaker.with_redis(dead, CONFIG, clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        admissions = [breaker.before_call(AGENT) for _ in range(5)]
        for admission in admissions:
            breaker.record(admission, TransportError("refused"))
        admission = breaker.before_call(AGENT)
    assert admission.state == STATE_CLOSED and not admission.tracked
    assert caplog.text.count("failing open") == 1  # warnings are throttled


def test_an_agents_own_thresholds_govern_its_breaker(rig: Rig) -> None:
    touchy = BreakerPolicy(failure_threshold=1, monitoring_period_s=60.0, reset_timeout_s=5.0)
    breaker = rig.build()
    breaker.record(breaker.before_call(AGENT, policy=touchy), TransportError("refused"))
    assert breaker.state(AGENT) == STATE_OPEN  # one failure, not the settings' three
    for _ in range(2):  # another agent: the settings' threshold (3) counts
        breaker.record(breaker.before_call("agent-2"), TransportError("refused"))
    assert breaker.state("agent-2") == STATE_CLOSED
    rig.clock.advance(5.1)  # its own reset timeout, not the settings' 30 s
    trial = breaker.before_call(AGENT, policy=touchy)
    assert trial.trial_token
    breaker.record(trial)
    assert breaker.state(AGENT) == STATE_CLOSED


def test_a_policy_without_breaker_fields_keeps_the_settings() -> None:
    default = BreakerPolicy(failure_threshold=3, monitoring_period_s=60.0, reset_timeout_s=30.0)
    assert AgentPolicy().breaker_policy(default) is None
    own = AgentPolicy(reset_timeout=2500).breaker_policy(default)
    assert own == BreakerPolicy(failure_threshold=3, monitoring_period_s=60.0, reset_timeout_s=2.5)
