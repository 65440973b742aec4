"""Plans end to end: real Redis, two real worker processes, real HTTP targets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from taskplane import ExecutionEngine, PlanFailedError, TaskStatus, ValidationError
from tests.httpserver import HttpTestServer
from tests.integration.conftest import ON_REDIS_CLUSTER
from tests.support import counter, monitored, rec, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "rabbitmq"])
def engine(request: pytest.FixtureRequest, cluster: Any) -> ExecutionEngine:
    """Every plan test runs with Redis and with RabbitMQ as the broker.

    On a Redis Cluster run the broker is RabbitMQ either way: the plan tests run once.
    """
    if request.param == "rabbitmq" and ON_REDIS_CLUSTER:
        pytest.skip("the Redis Cluster run has RabbitMQ as its only broker")
    if request.param == "redis":
        return cluster.engine  # type: ignore[no-any-return]
    return request.getfixturevalue("rabbit_cluster").engine  # type: ignore[no-any-return]


def test_function_task_round_trip(engine: ExecutionEngine) -> None:
    result = engine.execute_task(
        {"id": "t", "type": "function", "target": "add", "payload": {"a": 2, "b": 40}}
    )
    assert result.status is TaskStatus.SUCCESS
    assert result.result == 42
    assert result.metadata["attempts"] == 1 and result.metadata["cached"] is False
    names = {"tw0", "tw1"} if engine.settings.broker_url.startswith("redis") else {"rw0", "rw1"}
    if ON_REDIS_CLUSTER:
        names = {"tw0", "tw1"}
    assert result.metadata["worker"].split("@")[0] in names


def test_unknown_function_fails_clearly_without_retry(engine: ExecutionEngine) -> None:
    result = engine.execute_task({"id": "t", "type": "function", "target": "nope"})
    assert result.status is TaskStatus.FAILURE
    assert result.error == "Function nope not found"
    assert result.retries == 0


def test_failing_function_is_an_envelope(engine: ExecutionEngine) -> None:
    result = engine.execute_task({"id": "t", "type": "function", "target": "fail"})
    assert result.status is TaskStatus.FAILURE
    assert "RuntimeError: failed on purpose" in (result.error or "")


def test_http_task_retries_5xx_then_succeeds(engine: ExecutionEngine, uid: str) -> None:
    with HttpTestServer() as server:
        result = engine.execute_task(
            {"id": "h", "type": "http", "target": f"{server.url}/flaky/{uid}/2"}
        )
        assert result.status is TaskStatus.SUCCESS, result.error
        assert result.retries == 2
        assert result.result["status"] == 200 and result.result["body"]["ok"] is True
        assert server.calls(f"/flaky/{uid}/2") == 3


def test_http_task_4xx_is_not_retried(engine: ExecutionEngine) -> None:
    with HttpTestServer() as server:
        result = engine.execute_task(
            {"id": "h", "type": "http", "target": f"{server.url}/status/404"}
        )
        assert result.status is TaskStatus.FAILURE
        assert result.retries == 0 and "HTTP 404" in (result.error or "")
        assert server.calls("/status/404") == 1


def test_http_task_sends_method_headers_params_json(engine: ExecutionEngine) -> None:
    with HttpTestServer() as server:
        result = engine.execute_task(
            {
                "id": "h",
                "type": "http",
                "target": f"{server.url}/echo",
                "payload": {
                    "method": "POST",
                    "headers": {"X-Test": "yes"},
                    "params": {"q": "1"},
                    "json": {"hello": ["world", 1]},
                },
            }
        )
    body = result.result["body"]
    assert body["method"] == "POST" and body["query"] == {"q": "1"}
    assert body["headers"]["X-Test"] == "yes" and body["body"] == {"hello": ["world", 1]}


def test_http_task_refuses_metadata_address_even_via_redirect(engine: ExecutionEngine) -> None:
    direct = engine.execute_task(
        {"id": "h", "type": "http", "target": "http://169.254.169.254/latest/meta-data"}
    )
    assert direct.status is TaskStatus.FAILURE and "link-local" in (direct.error or "")
    with HttpTestServer() as server:
        redirected = engine.execute_task(
            {
                "id": "h",
                "type": "http",
                "target": f"{server.url}/redirect",
                "payload": {"params": {"to": "http://[::ffff:169.254.169.254]/"}},
            }
        )
    assert redirected.status is TaskStatus.FAILURE and "link-local" in (redirected.error or "")


def test_parallel_all_returns_every_result_in_order(engine: ExecutionEngine, uid: str) -> None:
    plan = {
        "id": f"all-{uid}",
        "strategy": "all",
        "tasks": [
            {"id": f"t{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 1}}
            for i in range(12)
        ],
    }
    results = engine.execute_parallel(plan)
    assert [r.task_id for r in results] == [f"t{i}" for i in range(12)]
    assert [r.result for r in results] == [i + 1 for i in range(12)]


@pytest.mark.single_redis  # MONITOR watches one Redis
def test_a_plan_whose_tasks_all_finished_is_not_read_again(
    engine: ExecutionEngine, uid: str
) -> None:
    plan_id = f"read-once-{uid}"
    task = {"id": "t", "type": "function", "target": "add", "payload": {"a": 0, "b": 1}}
    with monitored(engine.settings.redis_url) as commands:
        results = engine.execute_parallel({"id": plan_id, "tasks": [task]})
        time.sleep(0.5)  # the worker settles the run just after the waiting client wakes
    assert [r.result for r in results] == [1]
    # no side reads every task and result to record missing outcomes: none are missing
    store = engine.store
    reads = {f"HGETALL {store.key(plan_id, 'tasks')}", f"HKEYS {store.key(plan_id, 'results')}"}
    assert not [c for c in commands if c in reads]


def test_parallel_all_fails_fast_and_cancels_the_rest(
    engine: ExecutionEngine, cluster: Any, uid: str
) -> None:
    tasks = [rec("bad", cluster, f"{uid}:bad", fail=True)]
    tasks += [rec(f"slow{i}", cluster, f"{uid}:slow{i}", ms=300) for i in range(6)]
    started = time.monotonic()
    with pytest.raises(PlanFailedError) as info:
        engine.execute_parallel({"id": f"ff-{uid}", "tasks": tasks, "maxConcurrency": 2})
    assert time.monotonic() - started < 2.0
    statuses = [r.status for r in info.value.results]
    assert statuses[0] is TaskStatus.FAILURE
    assert TaskStatus.CANCELLED in statuses
    time.sleep(1.0)
    never_called = [i for i in range(6) if counter(cluster, f"{uid}:slow{i}") == 0]
    assert len(never_called) >= 4  # the window was 2: at most one slow task had started


def test_all_settled_returns_every_outcome(engine: ExecutionEngine) -> None:
    results = engine.execute_parallel(
        {
            "id": "settled-" + str(time.time_ns()),
            "strategy": "allSettled",
            "tasks": [
                {"id": "ok", "type": "function", "target": "add", "payload": {"a": 1, "b": 1}},
                {"id": "bad", "type": "function", "target": "fail"},
            ],
        }
    )
    assert [r.status for r in results] == [TaskStatus.SUCCESS, TaskStatus.FAILURE]


def test_race_returns_first_success_and_cancels_others(engine: ExecutionEngine, uid: str) -> None:
    results = engine.execute_parallel(
        {
            "id": f"race-{uid}",
            "strategy": "race",
            "tasks": [
                {"id": "slow", "type": "function", "target": "sleep", "payload": {"ms": 1500}},
                {"id": "bad", "type": "function", "target": "fail"},
                {"id": "fast", "type": "function", "target": "sleep", "payload": {"ms": 50}},
            ],
        }
    )
    assert len(results) == 1 and results[0].task_id == "fast"


def test_race_where_all_fail_raises(engine: ExecutionEngine, uid: str) -> None:
    with pytest.raises(PlanFailedError) as info:
        engine.execute_parallel(
            {
                "id": f"race-fail-{uid}",
                "strategy": "race",
                "tasks": [{"id": f"b{i}", "type": "function", "target": "fail"} for i in range(3)],
            }
        )
    assert [r.status for r in info.value.results] == [TaskStatus.FAILURE] * 3


def test_weighted_runs_by_priority_and_stops_when_confident(
    engine: ExecutionEngine, cluster: Any, uid: str
) -> None:
    tasks = [
        {**rec("low", cluster, f"{uid}:low", confidence=0.95), "metadata": {"priority": 1}},
        {**rec("high", cluster, f"{uid}:high", confidence=0.5), "metadata": {"priority": 9}},
        {**rec("mid", cluster, f"{uid}:mid", confidence=0.85), "metadata": {"priority": 5}},
    ]
    results = engine.execute_parallel({"id": f"w-{uid}", "strategy": "weighted", "tasks": tasks})
    assert [r.task_id for r in results] == ["high", "mid"]
    assert results[-1].confidence == 0.85
    assert counter(cluster, f"{uid}:low") == 0


@pytest.mark.parametrize("strategy", ["all", "allSettled", "race", "weighted"])
def test_empty_plan_returns_at_once(engine: ExecutionEngine, strategy: str) -> None:
    started = time.monotonic()
    assert engine.execute_parallel({"id": "empty", "strategy": strategy, "tasks": []}) == []
    assert time.monotonic() - started < 0.5


def test_max_concurrency_holds_across_workers(
    engine: ExecutionEngine, cluster: Any, uid: str
) -> None:
    key = f"{uid}:conc"
    tasks = [rec(f"t{i}", cluster, key, ms=150) for i in range(12)]
    results = engine.execute_parallel({"id": f"mc-{uid}", "tasks": tasks, "maxConcurrency": 3})
    assert all(r.ok for r in results)
    assert counter(cluster, key) == 12
    assert 2 <= counter(cluster, key, "max") <= 3
    assert len({r.metadata["worker"] for r in results}) == 2  # both workers took part


def test_deadline_returns_timeouts_for_unfinished_tasks(engine: ExecutionEngine, uid: str) -> None:
    with HttpTestServer() as server:
        started = time.monotonic()
        settled = engine.execute_parallel(
            {
                "id": f"dl-settled-{uid}",
                "strategy": "allSettled",
                "timeout": 1000,
                "tasks": [{"id": "hang", "type": "http", "target": f"{server.url}/hang"}],
            }
        )
        assert [r.status for r in settled] == [TaskStatus.TIMEOUT]
        assert time.monotonic() - started < 2.0
        started = time.monotonic()
        with pytest.raises(PlanFailedError) as info:
            engine.execute_parallel(
                {
                    "id": f"dl-{uid}",
                    "strategy": "all",
                    "timeout": 1000,
                    "tasks": [
                        {
                            "id": "quick",
                            "type": "function",
                            "target": "add",
                            "payload": {"a": 1, "b": 1},
                        },
                        {"id": "hang", "type": "http", "target": f"{server.url}/hang"},
                    ],
                }
            )
        elapsed = time.monotonic() - started
    assert elapsed < 2.0
    by_id = {r.task_id: r.status for r in info.value.results}
    assert by_id == {"quick": TaskStatus.SUCCESS, "hang": TaskStatus.TIMEOUT}


def test_cancel_stops_tasks_not_yet_called(engine: ExecutionEngine, cluster: Any, uid: str) -> None:
    tasks = [rec(f"t{i}", cluster, f"{uid}:c{i}", ms=300) for i in range(5)]
    handle = engine.submit({"id": f"cancel-{uid}", "tasks": tasks, "maxConcurrency": 1})
    assert wait_until(lambda: handle.status()["running"] == 1)
    handle.cancel()
    with pytest.raises(PlanFailedError) as info:
        handle.wait(5)
    statuses = [r.status for r in info.value.results]
    assert statuses.count(TaskStatus.CANCELLED) >= 4
    time.sleep(0.5)
    assert sum(counter(cluster, f"{uid}:c{i}") for i in range(5)) == 1


def test_sequential_forwards_previous_result(engine: ExecutionEngine, uid: str) -> None:
    results = engine.execute_sequential(
        {
            "id": f"seq-{uid}",
            "tasks": [
                {"id": "one", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}},
                {"id": "two", "type": "function", "target": "echo", "payload": {"x": 1}},
            ],
        }
    )
    previous = results[1].result["previous"]
    assert previous == {
        "taskId": "one",
        "status": "success",
        "result": 3,
        "confidence": None,
        "error": None,
    }


@pytest.mark.parametrize("continue_on_error", [False, True])
def test_sequential_failure(engine: ExecutionEngine, uid: str, continue_on_error: bool) -> None:
    plan = {
        "id": f"seqf-{uid}",
        "continueOnError": continue_on_error,
        "tasks": [
            {"id": "bad", "type": "function", "target": "fail"},
            {"id": "after", "type": "function", "target": "echo", "payload": {}},
        ],
    }
    if continue_on_error:
        results = engine.execute_sequential(plan)
        assert [r.status for r in results] == [TaskStatus.FAILURE, TaskStatus.SUCCESS]
        assert results[1].result["previous"]["status"] == "failure"
    else:
        with pytest.raises(PlanFailedError) as info:
            engine.execute_sequential(plan)
        assert [r.status for r in info.value.results] == [TaskStatus.FAILURE, TaskStatus.CANCELLED]


def test_resubmitting_a_plan_id_attaches_to_the_run(
    engine: ExecutionEngine, cluster: Any, uid: str
) -> None:
    plan = {"id": f"again-{uid}", "tasks": [rec(f"t{i}", cluster, f"{uid}:a{i}") for i in range(3)]}
    first = engine.execute_parallel(plan)
    second = engine.execute_parallel(plan)
    assert [r.model_dump() for r in first] == [r.model_dump() for r in second]
    assert [counter(cluster, f"{uid}:a{i}") for i in range(3)] == [1, 1, 1]


def test_invalid_plan_names_the_field_and_enqueues_nothing(
    engine: ExecutionEngine, uid: str
) -> None:
    with pytest.raises(ValidationError) as info:
        engine.execute_parallel(
            {
                "id": f"bad-{uid}",
                "maxConcurrency": 0,
                "tasks": [{"id": "a", "type": "function", "target": "add"}] * 2,
            }
        )
    assert "maxConcurrency" in str(info.value) and "appears more than once" in str(info.value)
    assert engine.store.meta(f"bad-{uid}") == {}
