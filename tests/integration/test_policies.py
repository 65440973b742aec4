"""Per-agent limits and shared quotas hold cluster-wide, across two workers.

A cluster of its own (its own broker and state databases), a generous
settings-wide limit, and agents whose policies set their own limits or name
a quota: what the agent servers see is what the limits allow.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import TaskStatus
from tests.agents import HttpAgentServer
from tests.integration.small import ARRIVAL_JITTER_S, SmallCluster, agent_task, small_cluster
from tests.support import wait_until

pytestmark = pytest.mark.integration

#: Broker and state databases of this cluster (test_waiting uses 7 and 8, the shared one 13, 14).
BROKER_DB, STATE_DB = 5, 6


@pytest.fixture
def cluster(redis_url: str) -> Iterator[SmallCluster]:
    """An engine and no workers yet, 100 calls/s per agent unless its policy says otherwise."""
    env = {
        "TASKPLANE_RATE_LIMIT__MAX_REQUESTS": "100",
        "TASKPLANE_RATE_LIMIT__WINDOW_MS": "1000",
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "12",
    }
    with small_cluster(
        redis_url,
        broker_db=BROKER_DB,
        state_db=STATE_DB,
        env=env,
        default_timeout=5000,  # the workers' (cluster_env): within the visibility timeout
        visibility_timeout_s=12,
    ) as small:
        yield small


def busiest_window(stamps: list[float]) -> int:
    """Most calls seen within one window (less the allowed arrival lateness)."""
    window = 1.0 - ARRIVAL_JITTER_S
    return max(sum(1 for s in stamps if first <= s < first + window) for first in stamps)


def test_agents_on_one_quota_hold_it_together_and_an_agent_limit_holds_alone(
    cluster: SmallCluster, uid: str
) -> None:
    cluster.add_worker("left", slots=8)
    cluster.add_worker("right", slots=8)
    engine = cluster.engine
    with (
        HttpAgentServer("ok") as first,
        HttpAgentServer("ok") as second,
        HttpAgentServer("ok") as third,
    ):
        engine.register_quota(f"team-{uid}", max_requests=4, window_ms=1000)
        for name, server in (("a", first), ("b", second)):
            engine.register_agent(f"{name}-{uid}", server.endpoint, policy={"quota": f"team-{uid}"})
        engine.register_agent(
            f"c-{uid}", third.endpoint, policy={"maxRequests": 3, "windowMs": 1000}
        )
        shared = engine.submit(
            {"id": f"ab-{uid}", "maxConcurrency": 12, "strategy": "allSettled",
             "tasks": [agent_task(f"t{i}", f"{'ab'[i % 2]}-{uid}") for i in range(12)]}
        )  # fmt: skip
        alone = engine.submit(
            {"id": f"c-{uid}", "maxConcurrency": 9, "strategy": "allSettled",
             "tasks": [agent_task(f"c{i}", f"c-{uid}") for i in range(9)]}
        )  # fmt: skip
        results = shared.wait(30) + alone.wait(30)
        on_quota = sorted(first.timestamps + second.timestamps)
        own = sorted(third.timestamps)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 21
    assert first.calls == second.calls == 6 and third.calls == 9
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(on_quota)]
    assert busiest_window(on_quota) <= 4, f"quota overrun; gaps {gaps}"
    # 12 calls at 4/s over both agents: two more windows; each agent alone could do 100/s
    assert on_quota[-1] - on_quota[0] >= 2.0 - ARRIVAL_JITTER_S
    assert on_quota[-1] - on_quota[0] < 4.0, f"the quota drained slower than its limit: {gaps}"
    # the third agent is held by its own policy (3/s), not by the quota or the settings
    assert busiest_window(own) <= 3
    assert 2.0 - ARRIVAL_JITTER_S <= own[-1] - own[0] < 4.0


def test_max_in_flight_holds_across_two_workers_without_holding_their_slots(
    cluster: SmallCluster, uid: str
) -> None:
    cluster.add_worker("left", slots=8)
    cluster.add_worker("right", slots=8)
    engine = cluster.engine
    with HttpAgentServer("slow", delay_ms=200) as capped, HttpAgentServer("ok") as free:
        engine.register_agent(f"cap-{uid}", capped.endpoint, policy={"maxInFlight": 3})
        engine.register_agent(f"free-{uid}", free.endpoint)
        backlog = engine.submit(
            {"id": f"cap-{uid}", "maxConcurrency": 16, "strategy": "allSettled",
             "tasks": [agent_task(f"t{i}", f"cap-{uid}") for i in range(15)]}
        )  # fmt: skip
        # 15 calls wait for one of 3 places on 16 worker slots: the slots stay free for others
        started = time.monotonic()
        others = engine.execute_parallel(
            {"id": f"free-{uid}", "tasks": [agent_task(f"f{i}", f"free-{uid}") for i in range(4)]}
        )
        took = time.monotonic() - started
        results = backlog.wait(30)
        peak = capped.max_in_flight
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 15
    assert [r.status for r in others] == [TaskStatus.SUCCESS] * 4
    assert capped.calls == 15 and peak <= 3, f"{peak} calls in flight at once"
    assert peak == 3  # the cap, not something lower, was the bound
    assert took < 1.0, f"the free agent's plan took {took:.2f} s behind the capped backlog"
    assert {r.retries for r in results} == {0}  # waiting for a place is not an attempt


def test_a_token_limit_and_a_request_limit_hold_together_across_two_workers(
    cluster: SmallCluster, uid: str
) -> None:
    cluster.add_worker("left", slots=8)
    cluster.add_worker("right", slots=8)
    engine = cluster.engine
    usages: dict[str, Any] = {}

    def completed(event: dict[str, Any]) -> None:
        if event["data"]["planId"] == f"tok-{uid}":
            usages[event["data"]["taskId"]] = event["data"]["usage"]

    engine.on("task:completed", completed)
    with HttpAgentServer("ok") as agent:
        agent.usage = {"inputTokens": 200, "outputTokens": 100}  # 300 tokens a call
        engine.register_agent(
            f"tok-{uid}",
            agent.endpoint,
            policy={"maxRequests": 5, "maxTokens": 2000, "windowMs": 1000, "estimatedTokens": 300},
        )
        results = engine.execute_parallel(
            {"id": f"tok-{uid}", "maxConcurrency": 25, "strategy": "allSettled",
             "tasks": [agent_task(f"t{i}", f"tok-{uid}") for i in range(25)]}
        )  # fmt: skip
        stamps = sorted(agent.timestamps)
    wait_until(lambda: len(usages) >= 25)
    engine.off("task:completed", completed)
    # task:completed carries each call's usage
    assert usages == {f"t{i}": {"inputTokens": 200, "outputTokens": 100} for i in range(25)}
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 25
    assert {tuple(r.metadata["usage"].items()) for r in results} == {
        (("inputTokens", 200), ("outputTokens", 100))
    }
    busiest = busiest_window(stamps)
    gaps = [round(s - stamps[0], 3) for s in stamps]
    assert busiest <= 5 and busiest * 300 <= 2000, f"{busiest} calls within one window: {gaps}"
    # 25 calls at 5/s: four more windows, drained at the limit
    assert 4.0 - ARRIVAL_JITTER_S <= stamps[-1] - stamps[0] < 6.0


def test_calls_without_an_estimate_learn_the_agents_mean(cluster: SmallCluster, uid: str) -> None:
    cluster.add_worker("left", slots=8)
    engine = cluster.engine
    with HttpAgentServer("ok") as agent:
        agent.usage = {"prompt_tokens": 400, "completion_tokens": 100}  # 500 tokens a call
        engine.register_agent(
            f"mean-{uid}", agent.endpoint, policy={"maxTokens": 2000, "windowMs": 1000}
        )
        first = engine.execute_task(agent_task("warm", f"mean-{uid}"))  # reserves the default
        assert first.status == TaskStatus.SUCCESS
        assert first.metadata["usage"] == {"inputTokens": 400, "outputTokens": 100}
        results = engine.execute_parallel(
            {"id": f"mean-{uid}", "maxConcurrency": 8, "strategy": "allSettled",
             "tasks": [agent_task(f"t{i}", f"mean-{uid}") for i in range(8)]}
        )  # fmt: skip
        stamps = sorted(agent.timestamps)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 8
    # each reserves the recent mean (500), not the default (1000): with the warm call's
    # 500 in the window, three more fit at once (a 1000 reservation would let one)
    at_once = [s for s in stamps[1:] if s - stamps[0] < 0.5]
    assert len(at_once) == 3, f"{len(at_once)} calls started beside the warm one"
    # the other five waited for the window to move on
    assert all(s - stamps[0] >= 1.0 - ARRIVAL_JITTER_S for s in stamps[4:])


def test_each_agent_has_its_own_breaker_timeout_and_retries(
    cluster: SmallCluster, uid: str
) -> None:
    """One agent's policy opens its circuit after 1 failure, retries never and times out fast."""
    cluster.add_worker("left", slots=8)
    engine = cluster.engine
    with (
        HttpAgentServer("fail") as touchy,
        HttpAgentServer("fail") as steady,
        HttpAgentServer("slow", delay_ms=1500) as slow,
    ):
        engine.register_agent(
            f"touchy-{uid}",
            touchy.endpoint,
            policy={"failureThreshold": 1, "resetTimeout": 60000, "maxRetries": 0},
        )
        engine.register_agent(f"steady-{uid}", steady.endpoint)  # settings: 5 failures, 2 retries
        engine.register_agent(
            f"slow-{uid}", slow.endpoint, policy={"timeout": 300, "maxRetries": 1}
        )
        first = engine.execute_task(agent_task("first", f"touchy-{uid}"))
        second = engine.execute_task(agent_task("second", f"touchy-{uid}"))
        steady_result = engine.execute_task(agent_task("steady", f"steady-{uid}"))
        own_timeout = engine.execute_task(agent_task("own", f"slow-{uid}"))
        overridden = engine.execute_task(agent_task("long", f"slow-{uid}", timeout=3000, retries=0))
        breakers = {
            a.agent_id: engine.proxy.breaker.state(a.agent_id) for a in engine.list_agents()
        }
    # touchy: one call, no retry, and its circuit opened at once; the second fails fast
    assert (first.status, first.retries, first.metadata["attempts"]) == (TaskStatus.FAILURE, 0, 1)
    assert second.status is TaskStatus.FAILURE and "circuit" in (second.error or "")
    assert touchy.calls == 1 and breakers[f"touchy-{uid}"] == "open"
    # steady: the settings' breaker (3 failures < 5 keep it closed) and 2 retries
    assert steady_result.retries == 2 and steady.calls == 3
    assert breakers[f"steady-{uid}"] == "closed"
    # slow: the policy's 300 ms timeout and 1 retry; a task's own metadata wins over the policy
    assert own_timeout.status is TaskStatus.TIMEOUT and own_timeout.metadata["attempts"] == 2
    assert overridden.status is TaskStatus.SUCCESS and overridden.metadata["attempts"] == 1
    assert slow.calls == 3
