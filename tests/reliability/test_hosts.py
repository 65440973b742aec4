"""Three worker hosts; one is cut off Redis (broker and state) mid-plan, then comes back.

Each worker runs in a network namespace of its own (:mod:`tests.reliability.hosts`)
and reaches Redis — the broker and everything else — and the HTTP agent
through a switch, on the root namespace's end of its uplink. While a 60-task window plan of 300 ms
agent calls runs, one host is cut off: a blackhole, packets dropped both
ways, connections hang. Either from the Redis port only (the agent stays
reachable, so the cut host's breaker, limiter and cache have something to
decide) or from everything; until the plan has completed, or (Redis only)
for 5 s. The last two run in ``make reliability`` only.

What the test checks (see RELIABILITY.md §10 for the figures):

* the plan completes on the other two hosts while the host is cut, every
  task successful: the cut host's unacknowledged messages come back to the
  others after the visibility timeout (the redelivery sweep), and those
  deliveries take over their tasks' leases; cut briefly, the host carries on
  with the plan once it is back;
* every task's outcome is recorded exactly once (one result, one
  ``task:completed`` event per task, the plan's order stream holds 60),
  also after the cut host comes back and its stuck runs end;
* agent calls are counted per task: a call in flight on the cut host may be
  made again elsewhere (at-least-once delivery), never more than twice, and
  only for tasks the cut host was running;
* the cut host starts no call later than a few seconds after the cut (only
  those its tasks had already been let through: breaker, limiter and cache
  fail open for them);
* no worker exits; restored, the host answers a ping and runs tasks of the
  plans that follow (each asks for more slots than the other hosts have).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionResult, TaskStatus
from taskplane.devtools.cluster import WorkerProcess, wait_ready
from taskplane.keys import plan_key
from tests.agents import HttpAgentServer
from tests.reliability.conftest import SHORT, fresh_dir
from tests.reliability.hosts import HostNetwork, NamespaceError, refuse, require_namespaces
from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import Cluster, Outcomes, record_figures, running_cluster
from tests.support import wait_until

HOSTS = 3
THREADS = 4
TASKS = 60
TASK_MS = 300
CONCURRENCY = 6
SECOND_TASKS = 24
PLAN_TIMEOUT_MS = 90_000
VISIBILITY_S = 10
#: Outcomes recorded before the cut.
CUT_AFTER = 12
#: The plan must complete within this long of the cut, while the host is still cut (s):
#: a redelivery (visibility timeout + sweep), or a lost message's resend by the waiting
#: client (its stall, visibility timeout + 2 sweeps + 5 s, then up to 10 s more to notice).
COMPLETE_WITHIN_S = 60.0
#: A call the cut host had already admitted may still go out this long after the cut (s):
#: each Redis step before the call (registry, breaker, limiter) gives up after 1 s.
ADMITTED_GRACE_S = 5.0
#: The restored host must answer a ping, and take tasks again, within this long (s).
REJOIN_WITHIN_S = 60.0
AGENT = "hosts-agent"


@pytest.fixture
def network() -> Iterator[HostNetwork]:
    require_namespaces()
    try:
        network = HostNetwork(HOSTS).__enter__()
    except NamespaceError as exc:
        refuse(f"cannot make network namespaces here: {exc}")
    try:
        yield network
    finally:
        network.close()


def agent_plan(plan_id: str, count: int, concurrency: int) -> dict[str, Any]:
    return {
        "id": plan_id,
        "strategy": "allSettled",
        "maxConcurrency": concurrency,
        "timeout": PLAN_TIMEOUT_MS,
        "tasks": [
            {"id": f"t{i}", "type": "agent", "target": AGENT, "payload": {"plan": plan_id, "n": i}}
            for i in range(count)
        ],
    }


def arrivals(agent: HttpAgentServer) -> list[tuple[float, dict[str, Any]]]:
    """Every call the agent received: (arrival in epoch s, request)."""
    with agent.lock:
        return list(zip(agent.timestamps, agent.requests, strict=True))


def task_index(request: dict[str, Any], plan_id: str) -> int | None:
    """The index of the task of *plan_id* that made *request* (None: another plan's)."""
    body = request["body"]
    return body["n"] if isinstance(body, dict) and body.get("plan") == plan_id else None


def calls_by_task(agent: HttpAgentServer, plan_id: str) -> Counter[int]:
    """Agent calls per task index of *plan_id*."""
    indexes = (task_index(r, plan_id) for _, r in arrivals(agent))
    return Counter(i for i in indexes if i is not None)


def calls_by_peer(agent: HttpAgentServer, plan_id: str) -> dict[int, set[str]]:
    """The hosts (addresses) that called the agent, per task index of *plan_id*."""
    seen: dict[int, set[str]] = {}
    for _, request in arrivals(agent):
        index = task_index(request, plan_id)
        if index is not None:
            seen.setdefault(index, set()).add(request["peer"])
    return seen


def call_times(agent: HttpAgentServer, plan_id: str, index: int, since: float) -> list[float]:
    """When task *index* of *plan_id* reached the agent, in seconds after *since*."""
    pairs = arrivals(agent)
    return [round(t - since, 2) for t, r in pairs if task_index(r, plan_id) == index]


def calls_from(agent: HttpAgentServer, address: str, since: float) -> list[float]:
    """When calls from *address* reached the agent, in seconds after *since* (epoch s)."""
    return [round(t - since, 2) for t, r in arrivals(agent) if r["peer"] == address and t >= since]


def calling_now(agent: HttpAgentServer, address: str) -> int:
    """Calls from *address* that arrived less than a task's time ago (so in flight now)."""
    recent = time.time() - TASK_MS / 1000 * 0.8
    return sum(r["peer"] == address and t > recent for t, r in arrivals(agent))


def worker_of(result: ExecutionResult) -> str:
    """The name of the worker that recorded *result*."""
    return str(result.metadata.get("worker", "")).split("@", 1)[0]


def answers_ping(cluster: Cluster, worker: WorkerProcess) -> bool:
    replies = cluster.engine.app.control.ping(timeout=1.0) or []
    return any(key.split("@", 1)[0] == worker.name for reply in replies for key in reply)


#: A brief cut: shorter than the cut host's Redis connections take to time out (s).
BRIEF_CUT_S = 5.0
#: What the cut host loses — Redis only (the agent stays reachable) or everything — and
#: for how long: until the plan has completed (None), or briefly.
CUTS = [("redis", None)] if SHORT else [("redis", None), ("host", None), ("redis", BRIEF_CUT_S)]


@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    ("cut", "cut_for_s"), CUTS, ids=[f"{c}-{'brief' if s else 'long'}" for c, s in CUTS]
)
def test_a_host_cut_off_mid_plan_and_back(
    network: HostNetwork, cut: str, cut_for_s: float | None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="taskplane")
    gateway = network.gateway
    server = PrivateRedis(fresh_dir("redis-hosts"), bind=("127.0.0.1", gateway))
    agent = HttpAgentServer("slow", delay_ms=TASK_MS, host=gateway)
    with (
        server,
        agent,
        running_cluster(
            server,
            workers=0,
            name="hosts",
            TASKPLANE_VISIBILITY_TIMEOUT_S=str(VISIBILITY_S),
            TASKPLANE_DEFAULT_TIMEOUT="3000",
            TASKPLANE_RATE_LIMIT__MAX_REQUESTS="100000",
        ) as cluster,
    ):
        on_hosts = {
            "TASKPLANE_REDIS_URL": server.url(1, host=gateway),
            "TASKPLANE_BROKER_URL": server.url(0, host=gateway),
        }
        workers = [
            cluster.start_worker(
                f"host{host.index}-{uuid.uuid4().hex[:4]}",
                concurrency=THREADS,
                env=on_hosts,
                wrapper=host.wrapper,
            )
            for host in network.hosts
        ]
        wait_ready(workers, cluster.engine.app.control.ping, timeout_s=60)
        engine = cluster.engine
        engine.register_agent(AGENT, agent.endpoint, capabilities=["echo"])
        victim, cut_worker = network.hosts[0], workers[0]

        plan_id = f"hosts-{uuid.uuid4().hex[:8]}"
        outcomes = Outcomes(plan_id)
        engine.on("*", outcomes)
        state = server.client(1)
        results_key = plan_key("taskplane", plan_id, "results")
        started = time.monotonic()
        handle = engine.submit(agent_plan(plan_id, TASKS, CONCURRENCY))
        in_flight = [0]  # the victim's calls in flight when the cut was decided

        def mid_plan() -> bool:  # and the victim host has a call in flight
            in_flight[0] = calling_now(agent, victim.address)
            return in_flight[0] > 0 and state.hlen(results_key) >= CUT_AFTER

        assert wait_until(mid_plan, timeout_s=60, interval_s=0.01)
        recorded_before = set(state.hkeys(results_key))
        in_flight_at_cut = in_flight[0]
        cut_at, cut_wall = time.monotonic(), time.time()
        victim.cut(ports=(server.port,) if cut == "redis" else ())
        restored_at: float | None = None
        try:
            if cut_for_s is not None:
                time.sleep(cut_for_s)
                restored_at = time.monotonic()
                victim.restore()
            results = handle.wait(timeout=COMPLETE_WITHIN_S)
            completed_after_cut_s = time.monotonic() - cut_at
            still_cut = victim.cut_ports is not None
            calls_while_cut = calls_by_task(agent, plan_id)
            peers = calls_by_peer(agent, plan_id)
            victim_calls_after_cut = calls_from(agent, victim.address, cut_wall)
        finally:
            if restored_at is None:
                restored_at = time.monotonic()
                victim.restore()
        cut_s = restored_at - cut_at

        rejoined = wait_until(
            lambda: answers_ping(cluster, cut_worker), timeout_s=REJOIN_WITHIN_S, interval_s=0.2
        )
        ping_after_restore_s = time.monotonic() - restored_at
        # more tasks at once than the other hosts have slots: the rest wait for host 0
        second: list[ExecutionResult] = []
        second_plans = 0
        while not any(worker_of(r) == cut_worker.name for r in second):
            if time.monotonic() - restored_at > REJOIN_WITHIN_S:
                break
            second_plans += 1
            second_id = f"hosts2-{second_plans}-{uuid.uuid4().hex[:8]}"
            second = engine.submit(agent_plan(second_id, SECOND_TASKS, HOSTS * THREADS)).wait(60)
        second_after_restore_s = time.monotonic() - restored_at
        # the cut host's stuck runs end (their Redis calls time out or go through): none of
        # them may record a second outcome or call the agent a third time
        time.sleep(2.0)
        calls = calls_by_task(agent, plan_id)
        stream = state.xrange(plan_key("taskplane", plan_id, "order")) or []
        order = [str(entry_id) for entry_id, _ in stream]
        order_len = len(order)
        results_len = state.hlen(results_key)
        state.close()
        exits = [w.name for w in workers if not w.alive()]

    by_host = Counter(worker_of(r) for r in results)
    second_by_host = Counter(worker_of(r) for r in second)
    repeated = sorted(i for i, n in calls.items() if n > 1)
    figures = {
        "cut": cut,
        "cut_for_s": cut_for_s,
        "hosts": HOSTS,
        "threads_per_worker": THREADS,
        "tasks": TASKS,
        "task_ms": TASK_MS,
        "max_concurrency": CONCURRENCY,
        "visibility_timeout_s": VISIBILITY_S,
        "cut_at_s": round(cut_at - started, 2),
        "recorded_before_cut": len(recorded_before),
        "victim_calls_in_flight_at_cut": in_flight_at_cut,
        "plan_completed_after_cut_s": round(completed_after_cut_s, 2),
        "completed_while_cut": still_cut,
        "cut_s": round(cut_s, 2),
        "packets_dropped": victim.dropped,
        "statuses": dict(Counter(r.status.value for r in results)),
        "outcomes_by_host": {name: by_host[name] for name in sorted(by_host)},
        "outcomes_recorded": results_len,
        "order_stream_len": order_len,
        # when the last outcomes were recorded (the stream's ids are Redis's clock, in ms)
        "last_outcomes_after_cut_s": [
            round(int(entry_id.split("-")[0]) / 1000 - cut_wall, 2) for entry_id in order[-4:]
        ],
        "events_per_task_max": max(outcomes.by_task.values(), default=0),
        "events_total": sum(outcomes.by_task.values()),
        "agent_calls": sum(calls.values()),
        "agent_calls_while_cut": sum(calls_while_cut.values()),
        "victim_calls_after_cut_s": victim_calls_after_cut,
        "tasks_called_twice": len(repeated),
        "tasks_called_more": sum(n > 2 for n in calls.values()),
        "repeated_tasks": repeated,
        "repeated_calls_after_cut_s": {
            i: call_times(agent, plan_id, i, cut_wall) for i in repeated
        },
        "resent_by_the_client": [r.getMessage() for r in caplog.records],
        "ping_after_restore_s": round(ping_after_restore_s, 2),
        "second_plan_done_after_restore_s": round(second_after_restore_s, 2),
        "second_plans_until_host_0_took_part": second_plans,
        "second_plan_by_host": {name: second_by_host[name] for name in sorted(second_by_host)},
        "worker_exits": exits,
    }
    record_figures(f"hosts_cut_{cut}_{'brief' if cut_for_s else 'long'}", figures)

    assert not exits, f"workers exited: {exits}"
    if cut_for_s is None:
        assert still_cut, "the plan must complete on the other hosts while the host is cut"
    else:  # back in time: it carries on with the plan
        assert any(t > cut_for_s for t in victim_calls_after_cut), victim_calls_after_cut
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * TASKS, figures
    # every outcome recorded exactly once, also after the cut host's stuck runs ended
    assert results_len == order_len == TASKS
    assert outcomes.by_task == {f"t{i}": 1 for i in range(TASKS)}
    assert sorted(calls) == list(range(TASKS)), "a task never reached the agent"
    assert all(n <= 2 for n in calls.values()), f"a call ran more than twice: {calls}"
    for index in repeated:  # only what the cut host was running is called again
        assert victim.address in peers.get(index, set()), (index, peers.get(index))
        assert f"t{index}" not in recorded_before
    assert in_flight_at_cut >= 1
    # the cut host starts nothing new: only calls it had admitted before the cut go out
    admitted = [t for t in victim_calls_after_cut if t <= (cut_for_s or COMPLETE_WITHIN_S)]
    assert all(t <= ADMITTED_GRACE_S for t in admitted), victim_calls_after_cut
    # the cut host rejoins: it answers a ping and runs tasks of the next plan
    assert rejoined, f"the restored host did not answer a ping within {REJOIN_WITHIN_S} s"
    assert [r.status for r in second] == [TaskStatus.SUCCESS] * SECOND_TASKS
    assert second_by_host[cut_worker.name] >= 1, f"host 0 took no task of {second_plans} plans"
