"""RabbitMQ as the broker: Redis keeps results, state and limits.

The plan tests (tests/integration/test_plans.py) all run against RabbitMQ
too, through the ``rabbit_cluster`` fixture; this checks the wiring itself.
When RabbitMQ cannot be reached the tests fail in CI (``CI`` set) and are
skipped elsewhere, with the reason.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionEngine, TaskStatus
from taskplane.devtools.cluster import start_worker, wait_ready
from tests.agents import HttpAgentServer
from tests.integration.conftest import (
    LOG_DIR,
    ON_REDIS_CLUSTER,
    ROOT,
    Cluster,
    drop_queue,
)
from tests.integration.small import ARRIVAL_JITTER_S, agent_task
from tests.support import rabbitmq_url, require_rabbitmq

pytestmark = pytest.mark.integration


def test_the_engine_sends_through_rabbitmq(rabbit_cluster: Any) -> None:
    conf = rabbit_cluster.engine.app.conf
    assert conf.broker_url.startswith("amqp://")
    assert conf.result_backend == rabbit_cluster.settings.result_backend_url


def test_rabbitmq_workers_run_the_tasks(rabbit_cluster: Any, uid: str) -> None:
    results = rabbit_cluster.engine.execute_parallel(
        {
            "id": f"rmq-{uid}",
            "strategy": "allSettled",
            "tasks": [
                {"id": f"t{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 1}}
                for i in range(6)
            ],
        }
    )
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 6
    names = {worker.name for worker in rabbit_cluster.workers}
    assert {r.metadata["worker"].split("@")[0] for r in results} <= names


@pytest.fixture(scope="module")
def quorum_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """One worker and an engine on a RabbitMQ quorum queue of this module's own."""
    if ON_REDIS_CLUSTER:
        pytest.skip("the Redis Cluster run has its own RabbitMQ settings")
    broker = rabbitmq_url()
    require_rabbitmq(broker)
    queue = f"taskplane-quorum-{uuid.uuid4().hex[:8]}"
    extra = {"TASKPLANE_BROKER_URL": broker, "TASKPLANE_QUEUE": queue}
    env = {**cluster.env, **extra, "TASKPLANE_RABBITMQ_QUEUE_TYPE": "quorum"}
    settings = cluster.settings.model_copy(
        update={"broker_url": broker, "queue": queue, "rabbitmq_queue_type": "quorum"}
    )
    engine = ExecutionEngine(settings)
    worker = start_worker(env, concurrency=8, name="qw0", log_dir=LOG_DIR, root=ROOT)
    try:
        wait_ready([worker], engine.app.control.ping)
        yield Cluster(env, settings, engine, [worker], cluster.state_url)
    finally:
        worker.stop()
        drop_queue(engine)
        engine.close()


def queue_type(name: str) -> str:
    """The type RabbitMQ gives queue *name* (``rabbitmqctl list_queues``)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_queues", "name", "type"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    types = dict(line.split("\t")[:2] for line in listed.splitlines() if "\t" in line)
    return types[name]


def test_a_quorum_queue_runs_plans_with_retries_and_booked_slots(
    quorum_cluster: Cluster, uid: str
) -> None:
    """Countdowns (a retry's backoff, a slot booked for later) need native delayed delivery."""
    engine = quorum_cluster.engine
    with HttpAgentServer("ok") as flaky, HttpAgentServer("ok") as limited:
        flaky.first_mode, flaky.first_calls = "unavailable", 1  # each task's first call: 503
        engine.register_agent(f"qflaky-{uid}", flaky.endpoint)
        engine.register_agent(
            f"qlimited-{uid}", limited.endpoint, policy={"maxRequests": 2, "windowMs": 1000}
        )
        tasks = [agent_task(f"f{i}", f"qflaky-{uid}") for i in range(3)]
        tasks += [agent_task(f"l{i}", f"qlimited-{uid}") for i in range(5)]
        started = time.monotonic()
        results = engine.execute_parallel(
            {"id": f"quorum-{uid}", "strategy": "allSettled", "tasks": tasks}
        )
        took = time.monotonic() - started
        stamps = sorted(limited.timestamps)
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 8, [r.error for r in results]
    assert [r.retries for r in results[:3]] == [1, 1, 1]  # retried after a countdown
    assert flaky.calls == 6 and limited.calls == 5
    assert stamps[-1] - stamps[0] >= 2.0 - ARRIVAL_JITTER_S  # 5 calls at 2/s: slots booked ahead
    assert took < 30.0
    assert queue_type(quorum_cluster.settings.queue) == "quorum"


def test_gevent_workers_on_rabbitmq_are_not_held_to_ten_messages_a_second(
    rabbit_cluster: Any, uid: str
) -> None:
    """Celery's green loop waited 0.1 s on the event connection after each round."""
    started = time.monotonic()
    results = rabbit_cluster.engine.execute_parallel(
        {"id": f"rmq-rate-{uid}", "maxConcurrency": 16, "strategy": "allSettled",
         "tasks": [{"id": f"n{i}", "type": "function", "target": "noop"} for i in range(300)]}
    )  # fmt: skip
    took = time.monotonic() - started
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 300
    # two workers at ten messages a second each took 15 s or more; now about 2-3 s
    assert took < 10.0, f"300 no-op tasks took {took:.1f} s"
