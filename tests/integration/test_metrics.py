"""A real worker serves Prometheus metrics: a scrape after plans holds exact counts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskplane import ExecutionEngine, TaskStatus
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from taskplane.devtools.redis_server import free_port
from tests.agents import HttpAgentServer
from tests.integration.conftest import LOG_DIR, ROOT
from tests.integration.small import small_cluster

pytestmark = pytest.mark.integration

#: Broker and state databases of this test's cluster (the shared test cluster uses 13 and 14).
BROKER_DB, STATE_DB = 3, 4


@pytest.fixture
def metered(redis_url: str) -> Iterator[tuple[ExecutionEngine, WorkerProcess, int]]:
    """An engine and one worker serving /metrics, on databases of their own."""
    port = free_port()
    env = {
        "TASKPLANE_METRICS_PORT": str(port),
        "TASKPLANE_CIRCUIT_BREAKER__FAILURE_THRESHOLD": "2",
        "TASKPLANE_EVENTS_ENABLED": "false",
        "TASKPLANE_TRACKING_ENABLED": "false",
    }
    with small_cluster(
        redis_url, broker_db=BROKER_DB, state_db=STATE_DB, env=env, default_timeout=5000
    ) as cluster:
        worker = cluster.add_worker("metered", slots=4)
        yield cluster.engine, worker, port


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the worker's /metrics, keyed by name and labels."""
    deadline = time.monotonic() + 10
    while True:
        try:
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            break
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def agent(task_id: str, agent_id: str, payload: Any, **metadata: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "agent", "target": agent_id, "payload": payload,
            "metadata": metadata}  # fmt: skip


def run(engine: ExecutionEngine, plan_id: str, *tasks: dict[str, Any]) -> list[Any]:
    plan = {"id": plan_id, "strategy": "allSettled", "tasks": list(tasks)}
    return engine.execute_parallel(plan)


def test_a_scrape_counts_calls_retries_cache_breaker_and_tokens(
    metered: tuple[ExecutionEngine, WorkerProcess, int], uid: str
) -> None:
    engine, _worker, port = metered
    ok_id, flaky_id, down_id = f"ok-{uid}", f"flaky-{uid}", f"down-{uid}"
    with (
        HttpAgentServer("ok") as ok,
        HttpAgentServer("ok") as flaky,
        HttpAgentServer("fail") as down,
    ):
        ok.usage = {"inputTokens": 10, "outputTokens": 4}
        flaky.first_mode, flaky.first_calls = "unavailable", 1
        engine.register_agent(ok_id, ok.endpoint)
        engine.register_agent(flaky_id, flaky.endpoint)
        engine.register_agent(down_id, down.endpoint)

        first = run(engine, f"p1-{uid}", agent("a", ok_id, {"q": 1}),
                    agent("b", flaky_id, {"q": 2}, cache=False))  # fmt: skip
        assert [r.status for r in first] == [TaskStatus.SUCCESS] * 2
        assert first[1].retries == 1
        (hit,) = run(engine, f"p2-{uid}", agent("a", ok_id, {"q": 1}))
        assert hit.metadata["cached"] is True
        # two failures open the breaker (threshold 2); the third call is refused
        for n in range(3):
            (failed,) = run(engine, f"p3-{uid}-{n}", agent("d", down_id, {"n": n}, retries=0))
            assert failed.status is TaskStatus.FAILURE
        assert down.calls == 2 and ok.calls == 1 and flaky.calls == 2
        # a nested pattern: two function tasks in a child run of their own
        nested = {"id": "l", "type": "pattern", "target": "t-leaf", "payload": {"word": uid},
                  "metadata": {"cache": False}}  # fmt: skip
        (leaf,) = run(engine, f"p4-{uid}", nested)
        assert leaf.status is TaskStatus.SUCCESS
    samples = scrape(port)

    def value(name: str, **labels: str) -> float:
        return samples.get((name, frozenset(labels.items())), 0.0)

    calls = "taskplane_agent_calls_total"
    assert value(calls, agent=ok_id, outcome="success") == 1
    assert value(calls, agent=flaky_id, outcome="upstream_error") == 1
    assert value(calls, agent=flaky_id, outcome="success") == 1
    assert value(calls, agent=down_id, outcome="upstream_error") == 2
    assert value(calls, agent=down_id, outcome="circuit_open") == 1
    assert value("taskplane_retries_total", agent=flaky_id, reason="upstream_error") == 1
    assert sum(v for (n, _), v in samples.items() if n == "taskplane_retries_total") == 1
    assert value("taskplane_cache_requests_total", result="hit") == 1
    # misses: the first "a" and the three "d" (cacheable; "b" opted out)
    assert value("taskplane_cache_requests_total", result="miss") == 4
    assert value("taskplane_tasks_total", type="agent", status="success") == 3
    assert value("taskplane_tasks_total", type="agent", status="failure") == 3
    assert value("taskplane_tokens_total", agent=ok_id, direction="input") == 10
    assert value("taskplane_tokens_total", agent=ok_id, direction="output") == 4
    assert value("taskplane_breaker_state", agent=down_id) == 2  # open
    assert value("taskplane_breaker_state", agent=ok_id) == 0
    duration = "taskplane_agent_call_duration_seconds_count"
    assert value(duration, agent=ok_id) == 1
    assert value(duration, agent=flaky_id) == 2
    assert value(duration, agent=down_id) == 2  # the refused call made no call
    assert value("taskplane_confidence_count", agent=ok_id) == 1  # the cache hit is not counted
    assert value("taskplane_confidence_sum", agent=ok_id) == pytest.approx(0.9)
    assert value("taskplane_confidence_bucket", agent=ok_id, le="0.8") == 0
    assert value("taskplane_confidence_bucket", agent=ok_id, le="0.9") == 1
    assert value("taskplane_agent_in_flight", agent=ok_id) == 0
    assert value("taskplane_tasks_total", type="pattern", status="success") == 1
    assert value("taskplane_tasks_total", type="function", status="success") == 2
    assert value(calls, agent="function", outcome="success") == 2
    # six plans and the pattern's child run, each ended on this worker by its last outcome
    plans = [v for (n, _), v in samples.items() if n == "taskplane_plans_total"]
    assert plans == [7]  # allSettled ends completed, failures included
    assert value("taskplane_plans_total", strategy="allSettled", state="completed") == 7
    assert value("taskplane_plan_duration_seconds_count", strategy="allSettled") == 7
    # labels are bounded: no task or plan id anywhere
    labels = {v for (_, pairs) in samples for _, v in pairs}
    assert not [label for label in labels if label.startswith(("p1-", "p2-", "p3-", "p4-"))]


def test_a_worker_finding_its_metrics_port_taken_says_so_and_runs_on(
    metered: tuple[ExecutionEngine, WorkerProcess, int], uid: str
) -> None:
    engine, first, port = metered
    second = start_worker(first.env, concurrency=2, name="second", log_dir=LOG_DIR, root=ROOT)
    try:
        wait_ready([second], engine.app.control.ping)
        deadline = time.monotonic() + 10
        while "TASKPLANE_METRICS_PORT" not in second.log_path.read_text():
            assert time.monotonic() < deadline, second.log_path.read_text()
            time.sleep(0.1)
        lines = [
            line
            for line in second.log_path.read_text().splitlines()
            if "TASKPLANE_METRICS_PORT" in line
        ]
        assert len(lines) == 1 and f"TASKPLANE_METRICS_PORT={port}: cannot serve" in lines[0]
        assert second.alive()
        served = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)  # still the first's
        assert served.status_code == 200 and "taskplane_agent_calls_total" in served.text
    finally:
        second.stop()
