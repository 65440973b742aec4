"""RabbitMQ as the broker: Redis keeps results, state and limits.

The plan tests (tests/integration/test_plans.py) all run against RabbitMQ
too, through the ``rabbit_cluster`` fixture; this checks the wiring itself.
When RabbitMQ cannot be reached the tests fail in CI (``CI`` set) and are
skipped elsewhere, with the reason.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskplane import TaskStatus

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
