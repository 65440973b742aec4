"""Agent faults through real workers: each classified, retried or not, as README "Retries" says.

The agents are the controllable servers of :mod:`tests.agents`; tasks go
through the engine, the broker and a worker process, which calls the agent.
The main cluster's workers retry twice after 50 ms and 100 ms, and their
breakers reset after 1.5 s.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionResult, TaskStatus
from tests.agents import GrpcAgentServer, HttpAgentServer
from tests.reliability.conftest import BREAKER_RESET_MS
from tests.reliability.support import Cluster, record_figures
from tests.support import wait_until

#: Retries after the first attempt (Settings default).
MAX_RETRIES = 2
#: Faults seen through the workers, for the figures file.
SEEN: dict[str, Any] = {}


def run(cluster: Cluster, agent_id: str, uid: str, **metadata: Any) -> ExecutionResult:
    """One agent task through the cluster, never from the cache."""
    task = {
        "id": f"t-{uid}",
        "type": "agent",
        "target": agent_id,
        "payload": {"q": uid},
        "metadata": {"cache": False, **metadata},
    }
    return cluster.engine.execute_task(task)


@pytest.fixture
def http_agent() -> Iterator[HttpAgentServer]:
    with HttpAgentServer() as agent:
        yield agent


@pytest.fixture
def grpc_agent() -> Iterator[GrpcAgentServer]:
    with GrpcAgentServer() as agent:
        yield agent


# mode, extra metadata, expected status, retried?, error fragment
HTTP_FAULTS = [
    ("fail", {}, TaskStatus.FAILURE, True, "HTTP 500"),
    ("unavailable", {}, TaskStatus.FAILURE, True, "HTTP 503"),
    ("throttle", {}, TaskStatus.FAILURE, True, "HTTP 429"),
    ("hang", {"timeout": 600}, TaskStatus.TIMEOUT, True, "did not answer"),
    ("slow", {"timeout": 300}, TaskStatus.TIMEOUT, True, "did not answer"),
    ("bad_json", {}, TaskStatus.FAILURE, False, "invalid JSON"),
    ("huge", {}, TaskStatus.FAILURE, False, "larger than"),
    ("reject", {}, TaskStatus.FAILURE, False, "HTTP 400"),
]
GRPC_FAULTS = [
    ("fail", {}, TaskStatus.FAILURE, True, "INTERNAL"),
    ("unavailable", {}, TaskStatus.FAILURE, True, "UNAVAILABLE"),
    ("throttle", {}, TaskStatus.FAILURE, True, "RESOURCE_EXHAUSTED"),
    ("hang", {"timeout": 600}, TaskStatus.TIMEOUT, True, ""),
    ("bad_json", {}, TaskStatus.FAILURE, False, ""),
    ("reject", {}, TaskStatus.FAILURE, False, "INVALID_ARGUMENT"),
]


@pytest.mark.parametrize(("mode", "metadata", "status", "retried", "fragment"), HTTP_FAULTS)
def test_http_agent_fault_is_classified(
    cluster: Cluster,
    http_agent: HttpAgentServer,
    uid: str,
    mode: str,
    metadata: dict[str, Any],
    status: TaskStatus,
    retried: bool,
    fragment: str,
) -> None:
    http_agent.mode, http_agent.delay_ms = mode, 1500
    cluster.engine.register_agent(f"h-{mode}-{uid}", http_agent.endpoint)
    result = run(cluster, f"h-{mode}-{uid}", uid, **metadata)
    attempts = MAX_RETRIES + 1 if retried else 1
    assert result.status is status, result.error
    assert fragment in (result.error or "")
    assert result.retries == attempts - 1
    assert result.metadata["attempts"] == attempts
    assert http_agent.calls == attempts
    if mode == "throttle":  # Retry-After: 1 beats the 50 ms / 100 ms backoff
        gaps = [b - a for a, b in itertools.pairwise(http_agent.timestamps)]
        assert all(gap >= 0.95 for gap in gaps), gaps
        SEEN["http_throttle_gaps_s"] = [round(g, 2) for g in gaps]
    SEEN[f"http_{mode}"] = {
        "status": result.status.value,
        "retries": result.retries,
        "calls": http_agent.calls,
        "ms": round(result.execution_time),
    }


@pytest.mark.parametrize(("mode", "metadata", "status", "retried", "fragment"), GRPC_FAULTS)
def test_grpc_agent_fault_is_classified(
    cluster: Cluster,
    grpc_agent: GrpcAgentServer,
    uid: str,
    mode: str,
    metadata: dict[str, Any],
    status: TaskStatus,
    retried: bool,
    fragment: str,
) -> None:
    grpc_agent.mode = mode
    cluster.engine.register_agent(f"g-{mode}-{uid}", grpc_agent.endpoint, protocol="grpc")
    result = run(cluster, f"g-{mode}-{uid}", uid, **metadata)
    attempts = MAX_RETRIES + 1 if retried else 1
    assert result.status is status, result.error
    assert fragment in (result.error or "")
    assert result.retries == attempts - 1
    assert grpc_agent.calls == attempts
    SEEN[f"grpc_{mode}"] = {
        "status": result.status.value,
        "retries": result.retries,
        "calls": grpc_agent.calls,
        "ms": round(result.execution_time),
    }


def test_unreachable_agent_is_retried_then_fails(cluster: Cluster, uid: str) -> None:
    with HttpAgentServer() as agent:
        endpoint = agent.endpoint
    cluster.engine.register_agent(f"gone-{uid}", endpoint)  # nothing listens there any more
    result = run(cluster, f"gone-{uid}", uid)
    assert result.status is TaskStatus.FAILURE
    assert "cannot reach agent" in (result.error or "")
    assert result.retries == MAX_RETRIES


def circuit_events(cluster: Cluster, agent_id: str) -> list[str]:
    events = cluster.engine.events.recent(2000)
    return [
        e["type"]
        for e in events
        if e["type"].startswith("circuit:") and e["data"].get("agentId") == agent_id
    ]


def test_breaker_opens_after_five_failures_and_recovers_through_half_open(
    cluster: Cluster, http_agent: HttpAgentServer, uid: str
) -> None:
    agent_id = f"brk-{uid}"
    http_agent.mode = "fail"
    cluster.engine.register_agent(agent_id, http_agent.endpoint)
    breaker = cluster.engine.proxy.breaker
    for n in range(5):
        failed = run(cluster, agent_id, f"{uid}-{n}", retries=0)
        assert failed.status is TaskStatus.FAILURE and "HTTP 500" in (failed.error or "")
    assert http_agent.calls == 5
    assert breaker.state(agent_id) == "open"
    opened_at = time.monotonic()

    fast = run(cluster, agent_id, f"{uid}-fast")  # default retries: open circuit is not retried
    assert fast.status is TaskStatus.FAILURE and "circuit" in (fast.error or "")
    assert fast.retries == 0 and http_agent.calls == 5

    # after the reset timeout the next call is the half-open trial (the stored state
    # moves on that call); it fails, so the circuit opens again at once
    time.sleep(BREAKER_RESET_MS / 1000 + 0.2)
    trial = run(cluster, agent_id, f"{uid}-trial1", retries=0)
    assert trial.status is TaskStatus.FAILURE and http_agent.calls == 6
    assert breaker.state(agent_id) == "open"
    refused = run(cluster, agent_id, f"{uid}-refused", retries=0)
    assert "circuit" in (refused.error or "") and http_agent.calls == 6

    # the agent heals; the next trial succeeds and closes the circuit
    http_agent.mode = "ok"
    time.sleep(BREAKER_RESET_MS / 1000 + 0.2)
    healed = run(cluster, agent_id, f"{uid}-trial2")
    assert healed.status is TaskStatus.SUCCESS, healed.error
    assert http_agent.calls == 7 and breaker.state(agent_id) == "closed"
    assert all(run(cluster, agent_id, f"{uid}-after{n}").ok for n in range(3))
    assert http_agent.calls == 10
    recovered_s = time.monotonic() - opened_at
    assert wait_until(lambda: len(circuit_events(cluster, agent_id)) >= 3, timeout_s=5)
    assert circuit_events(cluster, agent_id) == ["circuit:open", "circuit:open", "circuit:close"]
    SEEN["breaker"] = {"calls": http_agent.calls, "open_to_closed_s": round(recovered_s, 2)}


def test_client_errors_never_open_the_breaker(
    cluster: Cluster, http_agent: HttpAgentServer, uid: str
) -> None:
    agent_id = f"rej-{uid}"
    http_agent.mode = "reject"
    cluster.engine.register_agent(agent_id, http_agent.endpoint)
    results = [run(cluster, agent_id, f"{uid}-{n}") for n in range(7)]
    assert all(r.status is TaskStatus.FAILURE and r.retries == 0 for r in results)
    assert http_agent.calls == 7
    assert cluster.engine.proxy.breaker.state(agent_id) == "closed"


def test_zz_record_fault_figures() -> None:
    """Runs last in this module: write what the fault tests saw."""
    assert SEEN, "no fault test ran"
    record_figures("agent_faults", SEEN)
