"""RabbitMQ as the broker: plans run the same, Redis keeps results, state and limits.

One worker consumes from RabbitMQ (``TASKPLANE_BROKER_URL``); everything
else stays on the test Redis. RabbitMQ comes from
``TASKPLANE_TEST_RABBITMQ_URL`` (default: guest on 127.0.0.1:5672). When it
cannot be reached the tests fail in CI (``CI`` set) and are skipped
elsewhere, with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from kombu import Connection

from taskplane import ExecutionEngine, PlanFailedError, Settings, TaskStatus
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from tests.integration.conftest import LOG_DIR, ROOT, cluster_env

pytestmark = pytest.mark.integration

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


@dataclass
class RabbitCluster:
    engine: ExecutionEngine
    worker: WorkerProcess


def rabbitmq_url() -> str:
    return os.environ.get("TASKPLANE_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)


def require_rabbitmq(url: str) -> None:
    """Fail (in CI) or skip (elsewhere) unless RabbitMQ answers at *url*."""
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu raises the transport's own errors
        reason = f"RabbitMQ is not reachable at {url} (TASKPLANE_TEST_RABBITMQ_URL): {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.fixture(scope="module")
def rabbit(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    broker = rabbitmq_url()
    require_rabbitmq(broker)
    tracking = tmp_path_factory.mktemp("rabbitmq") / "tracking.db"
    env = {
        **cluster_env(redis_url),
        "TASKPLANE_BROKER_URL": broker,
        "TASKPLANE_DATABASE_URL": f"sqlite:///{tracking}",
    }
    settings = Settings(
        redis_url=env["TASKPLANE_REDIS_URL"],
        broker_url=broker,
        function_modules=["examples.functions", "tests.functions"],
        default_timeout=5000,
        database_url=env["TASKPLANE_DATABASE_URL"],
        retry_config={"initial_delay": 50},
    )
    engine = ExecutionEngine(settings)
    engine.app.control.purge()  # the taskplane queue on this RabbitMQ is ours alone
    worker = start_worker(env, concurrency=8, name="rmq0", log_dir=LOG_DIR, root=ROOT)
    try:
        wait_ready([worker], engine.app.control.ping)
        yield RabbitCluster(engine, worker)
    finally:
        worker.stop()
        engine.close()


def test_the_engine_sends_through_rabbitmq(rabbit: RabbitCluster) -> None:
    conf = rabbit.engine.app.conf
    assert conf.broker_url.startswith("amqp://")
    assert conf.result_backend.startswith("redis://")


def test_all_settled_plan(rabbit: RabbitCluster, uid: str) -> None:
    results = rabbit.engine.execute_parallel(
        {
            "id": f"rmq-settled-{uid}",
            "strategy": "allSettled",
            "maxConcurrency": 2,
            "tasks": [
                {"id": "a", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}},
                {"id": "b", "type": "function", "target": "fail", "payload": {"message": "no"}},
                {"id": "c", "type": "function", "target": "score", "payload": {"value": "v"}},
                {"id": "d", "type": "function", "target": "sleep", "payload": {"ms": 50}},
            ],
        }
    )
    assert [r.task_id for r in results] == ["a", "b", "c", "d"]
    assert [r.status for r in results] == [
        TaskStatus.SUCCESS,
        TaskStatus.FAILURE,
        TaskStatus.SUCCESS,
        TaskStatus.SUCCESS,
    ]
    assert results[0].result == 3 and "no" in (results[1].error or "")
    assert results[0].metadata["worker"].startswith("rmq0@")


def test_sequential_plan_passes_previous(rabbit: RabbitCluster, uid: str) -> None:
    results = rabbit.engine.execute_sequential(
        {
            "id": f"rmq-seq-{uid}",
            "tasks": [
                {"id": "one", "type": "function", "target": "add", "payload": {"a": 40, "b": 2}},
                {"id": "two", "type": "function", "target": "echo", "payload": {"x": 1}},
            ],
        }
    )
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 2
    assert results[1].result["previous"]["result"] == 42


def test_sequential_failure_cancels_the_rest(rabbit: RabbitCluster, uid: str) -> None:
    with pytest.raises(PlanFailedError) as info:
        rabbit.engine.execute_sequential(
            {
                "id": f"rmq-seq-fail-{uid}",
                "tasks": [
                    {"id": "one", "type": "function", "target": "fail"},
                    {"id": "two", "type": "function", "target": "add", "payload": {"a": 1, "b": 1}},
                ],
            }
        )
    assert [r.status for r in info.value.results] == [TaskStatus.FAILURE, TaskStatus.CANCELLED]


def test_race_plan_returns_the_first_success(rabbit: RabbitCluster, uid: str) -> None:
    started = time.monotonic()
    results = rabbit.engine.execute_parallel(
        {
            "id": f"rmq-race-{uid}",
            "strategy": "race",
            "tasks": [
                {"id": "slow", "type": "function", "target": "sleep", "payload": {"ms": 1500}},
                {"id": "bad", "type": "function", "target": "fail"},
                {"id": "fast", "type": "function", "target": "sleep", "payload": {"ms": 50}},
            ],
        }
    )
    assert len(results) == 1 and results[0].task_id == "fast"
    assert results[0].status is TaskStatus.SUCCESS
    assert time.monotonic() - started < 1.5
