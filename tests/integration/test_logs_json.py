"""``TASKPLANE_LOG_FORMAT=json``: a real worker's log lines about a task are JSON objects."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

from taskplane import ExecutionEngine, PlanFailedError, Settings
from taskplane.devtools import redis_server
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from tests.integration.conftest import LOG_DIR, ROOT, cluster_env

pytestmark = pytest.mark.integration

BROKER_DB, STATE_DB = 10, 11


@pytest.fixture
def json_worker(redis_url: str) -> Iterator[tuple[ExecutionEngine, WorkerProcess]]:
    env = {
        **cluster_env(redis_url),
        "TASKPLANE_REDIS_URL": redis_server.with_db(redis_url, STATE_DB),
        "TASKPLANE_BROKER_URL": redis_server.with_db(redis_url, BROKER_DB),
        "TASKPLANE_LOG_FORMAT": "json",
    }
    for db in (BROKER_DB, STATE_DB):
        client = redis.Redis.from_url(redis_server.with_db(redis_url, db))
        client.flushdb()
        client.close()
    settings = Settings(
        redis_url=env["TASKPLANE_REDIS_URL"], broker_url=env["TASKPLANE_BROKER_URL"]
    )
    engine = ExecutionEngine(settings)
    worker = start_worker(env, name="jsonlog", log_dir=LOG_DIR, root=ROOT, loglevel="INFO")
    try:
        wait_ready([worker], engine.app.control.ping)
        yield engine, worker
    finally:
        worker.stop()
        engine.close()


def test_task_log_lines_are_json_with_the_plan_context(
    json_worker: tuple[ExecutionEngine, WorkerProcess], uid: str
) -> None:
    engine, worker = json_worker
    plan_id = f"jsonlog-{uid}"
    task = {"id": "boom", "type": "function", "target": "fail", "payload": {}}
    with pytest.raises(PlanFailedError):
        engine.execute_sequential({"id": plan_id, "tasks": [task]})
    worker.stop()
    lines = [line for line in worker.log_path.read_text().splitlines() if plan_id in line]
    assert lines, worker.log_path.read_text()[-2000:]
    records = [json.loads(line) for line in lines]  # every one a JSON object
    failed = [r for r in records if "failed on purpose" in r["message"]]
    assert failed, records
    assert failed[0]["plan_id"] == plan_id and failed[0]["task_id"] == "boom"
    assert failed[0]["attempt"] == 1 and failed[0]["level"] == "INFO"
    assert set(failed[0]) >= {"time", "logger", "agent", "trace_id"}
