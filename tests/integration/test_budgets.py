"""Plan budgets hold across a fan-out spread over two workers.

A cluster of its own (its own broker and state databases) and an agent server
that reports 300 tokens a call: what reaches the agent is what the budget allows,
the rest of the plan comes back cancelled naming the budget, and the budget's
events fire once each.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from taskplane import ExecutionEngine, PlanFailedError, TaskStatus
from taskplane.events.bus import Event
from tests.agents import HttpAgentServer
from tests.integration.small import SmallCluster, agent_task, small_cluster

pytestmark = pytest.mark.integration

#: Broker and state databases of this cluster (test_policies uses 5 and 6, test_waiting 7 and 8).
BROKER_DB, STATE_DB = 1, 2
#: Tokens the agent reports for every call.
PER_CALL = 300


@pytest.fixture
def cluster(redis_url: str) -> Iterator[SmallCluster]:
    """An engine and two workers, 1000 calls/s per agent (no rate limit in the way)."""
    env = {
        "TASKPLANE_RATE_LIMIT__MAX_REQUESTS": "1000",
        "TASKPLANE_RATE_LIMIT__WINDOW_MS": "1000",
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "30",
        "TASKPLANE_EVENTS_ENABLED": "true",
    }
    with small_cluster(
        redis_url,
        broker_db=BROKER_DB,
        state_db=STATE_DB,
        env=env,
        default_timeout=10000,
        visibility_timeout_s=30,
    ) as small:
        small.add_worker("left", slots=8)
        small.add_worker("right", slots=8)
        yield small


def budget_events(engine: ExecutionEngine, plan_id: str, event_type: str) -> list[Event]:
    """The plan's events of *event_type*, once the workers' publishers have flushed them."""
    bus = engine.events
    found: list[Event] = []
    until = time.monotonic() + 5.0
    while time.monotonic() < until:
        found = [e for e in bus.recent(1000, event_type) if e["data"].get("planId") == plan_id]
        if found:
            time.sleep(0.5)  # a second one, were there one, would be published by now
            return [e for e in bus.recent(1000, event_type) if e["data"].get("planId") == plan_id]
        time.sleep(0.1)
    return found


@pytest.mark.parametrize(
    ("estimate", "most"),
    [
        (None, 20),  # the default estimate (1000) is over: calls wait, none overshoots
        (200, 20 + (10 * (PER_CALL - 200)) // PER_CALL + 1),  # under: in-flight error only
    ],
)
def test_a_token_budget_holds_across_a_fan_out_over_two_workers(
    cluster: SmallCluster, uid: str, estimate: int | None, most: int
) -> None:
    engine = cluster.engine
    plan_id = f"fan-{uid}"
    extra = {} if estimate is None else {"estimatedTokens": estimate}
    with HttpAgentServer("ok") as agent:
        agent.usage = {"inputTokens": 200, "outputTokens": 100}
        engine.register_agent(f"tok-{uid}", agent.endpoint)
        results = engine.execute_parallel(
            {"id": plan_id, "maxConcurrency": 10, "strategy": "allSettled",
             "budget": {"tokens": 20 * PER_CALL},
             "tasks": [agent_task(f"t{i}", f"tok-{uid}", **extra) for i in range(50)]}
        )  # fmt: skip
        calls = agent.calls
    done = [r for r in results if r.status is TaskStatus.SUCCESS]
    cancelled = [r for r in results if r.status is TaskStatus.CANCELLED]
    assert len(results) == 50 and len(done) + len(cancelled) == 50
    assert calls == len(done)
    assert 20 <= calls <= most, f"{calls} calls on a budget worth 20"
    # each names what was spent when it was refused: the budget, or more (calls in flight)
    for result in cancelled:
        spent = re.fullmatch(
            rf"plan budget exhausted: tokens (\d+) of {20 * PER_CALL}", result.error or ""
        )
        assert spent is not None, result.error
        assert 20 * PER_CALL <= int(spent.group(1)) <= calls * PER_CALL
    if estimate is None:
        assert {r.error for r in cancelled} == {"plan budget exhausted: tokens 6000 of 6000"}
    assert {r.metadata["attempts"] for r in cancelled} == {0}
    warned = budget_events(engine, plan_id, "plan:budget-warning")
    exhausted = budget_events(engine, plan_id, "plan:budget-exhausted")
    assert len(warned) == 1 and len(exhausted) == 1
    assert exhausted[0]["data"]["measure"] == "tokens"
    assert exhausted[0]["data"]["budget"] == {"tokens": 20 * PER_CALL, "calls": None}


def test_an_all_plan_fails_and_every_unstarted_task_names_the_budget(
    cluster: SmallCluster, uid: str
) -> None:
    engine = cluster.engine
    with HttpAgentServer("ok") as agent:
        engine.register_agent(f"all-{uid}", agent.endpoint)
        with pytest.raises(PlanFailedError) as caught:
            engine.execute_parallel(
                {"id": f"all-{uid}", "maxConcurrency": 2, "budget": {"calls": 4},
                 "tasks": [agent_task(f"a{i}", f"all-{uid}") for i in range(12)]}
            )  # fmt: skip
        calls = agent.calls
    results = caught.value.results
    assert calls == 4 and len(results) == 12
    cancelled = [r for r in results if r.status is TaskStatus.CANCELLED]
    assert len(cancelled) == 8
    assert {r.error for r in cancelled} == {"plan budget exhausted: calls 4 of 4"}


def test_a_calls_budget_stops_a_sequential_plan(cluster: SmallCluster, uid: str) -> None:
    engine = cluster.engine
    with HttpAgentServer("ok") as agent:
        engine.register_agent(f"seq-{uid}", agent.endpoint)
        with pytest.raises(PlanFailedError) as caught:
            engine.execute_sequential(
                {"id": f"seq-{uid}", "budget": {"calls": 5},
                 "tasks": [agent_task(f"s{i}", f"seq-{uid}") for i in range(8)]}
            )  # fmt: skip
        calls = agent.calls
    results = caught.value.results
    assert calls == 5
    assert [r.status for r in results[:6]] == [TaskStatus.SUCCESS] * 5 + [TaskStatus.CANCELLED]
    assert [r.error for r in results[5:]] == ["plan budget exhausted: calls 5 of 5"] * 3
    assert [r.status for r in results[6:]] == [TaskStatus.CANCELLED] * 2
    assert len(budget_events(engine, f"seq-{uid}", "plan:budget-exhausted")) == 1


def test_nested_pattern_runs_draw_from_the_plan_budget(cluster: SmallCluster, uid: str) -> None:
    engine = cluster.engine
    plan_id = f"nest-{uid}"
    with HttpAgentServer("ok") as agent:
        engine.register_agent(f"nest-{uid}", agent.endpoint)
        results = engine.execute_parallel(
            {"id": plan_id, "strategy": "allSettled", "budget": {"calls": 6},
             "tasks": [{"id": f"p{i}", "type": "pattern", "target": "t-agent-fan",
                        "payload": {"uid": uid}, "metadata": {"cache": False}}
                       for i in range(3)]}
        )  # fmt: skip
        calls = agent.calls
    assert calls == 6, f"{calls} calls on a budget of 6 across three nested runs of 4"
    assert len(results) == 3 and all(r.metadata["childPlanId"] for r in results)
    exhausted = budget_events(engine, plan_id, "plan:budget-exhausted")
    assert len(exhausted) == 1 and exhausted[0]["data"]["runId"].startswith(f"{plan_id}/")
