"""Flower against the test cluster: every task of a plan shows up, in its true state.

States, names and arguments are read through Flower's own HTTP API.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from taskplane import PlanFailedError, TaskStatus
from taskplane.devtools.cluster import worker_env
from taskplane.devtools.redis_server import free_port
from taskplane.observability.celery_view import SENDER_NODE
from tests.httpserver import HttpTestServer
from tests.integration.celery_events import LIFECYCLE, CeleryEvents
from tests.integration.conftest import LOG_DIR, ROOT, Cluster
from tests.support import wait_until

pytestmark = pytest.mark.integration

#: Seconds Flower gets to start answering, and a plan's tasks to show up in it.
STARTUP_TIMEOUT_S = 30.0
EVENTS_TIMEOUT_S = 20.0
AUTH = ("tp", "flower-test")


@dataclass
class Flower:
    url: str
    process: subprocess.Popen[bytes]

    def get(self, path: str, **params: Any) -> Any:
        reply = httpx.get(f"{self.url}{path}", params=params, auth=AUTH, timeout=5)
        reply.raise_for_status()
        return reply.json()


@pytest.fixture
def flower(cluster: Cluster) -> Iterator[Flower]:
    port = free_port()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "celery", "-A", "taskplane.celery_app", "flower",
        f"--port={port}", "--address=127.0.0.1", f"--basic-auth={AUTH[0]}:{AUTH[1]}",
    ]  # fmt: skip
    with (LOG_DIR / "flower.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            env=worker_env(cluster.env, root=ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flower = Flower(f"http://127.0.0.1:{port}", proc)
    try:
        _wait_until_up(flower)
        yield flower
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    assert proc.poll() is not None


def _wait_until_up(flower: Flower) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if flower.process.poll() is not None:
            log = (LOG_DIR / "flower.log").read_text(errors="replace")
            raise RuntimeError(f"flower exited:\n{log[-3000:]}")
        try:
            flower.get("/api/workers", refresh="1")
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise RuntimeError(f"flower not answering after {STARTUP_TIMEOUT_S}s")


def _wait_until_listening(flower: Flower, cluster: Cluster, uid: str) -> None:
    """Run one-task plans until Flower lists one: its event receiver is then connected."""
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    attempt = 0
    while time.monotonic() < deadline:
        plan_id = f"flower-warmup-{uid}-{attempt}"
        task = {"id": "w", "type": "function", "target": "noop", "payload": {}}
        cluster.engine.execute_parallel({"id": plan_id, "tasks": [task]})
        for _ in range(10):
            if _plan_tasks(flower, plan_id):
                return
            time.sleep(0.2)
        attempt += 1
    raise RuntimeError(f"flower received no task events within {EVENTS_TIMEOUT_S}s")


def _plan_tasks(flower: Flower, plan_id: str) -> list[dict[str, Any]]:
    tasks = flower.get("/api/tasks", limit="1000")
    return [t for t in tasks.values() if f'"{plan_id}"' in (t.get("kwargs") or "")]


def _wait_for(flower: Flower, plan_id: str, done: Any) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = _plan_tasks(flower, plan_id)
        if done(seen):
            break
        time.sleep(0.3)
    return seen


def test_flower_lists_a_plans_tasks_with_readable_kwargs(
    cluster: Cluster, flower: Flower, uid: str
) -> None:
    _wait_until_listening(flower, cluster, uid)
    plan_id = f"flower-{uid}"
    tasks = [
        {"id": f"t{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 1}}
        for i in range(3)
    ]
    results = cluster.engine.execute_parallel({"id": plan_id, "tasks": tasks})
    assert [r.result for r in results] == [1, 2, 3]

    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    while time.monotonic() < deadline:
        seen = _plan_tasks(flower, plan_id)
        if len(seen) == 3 and all(t["state"] == "SUCCESS" for t in seen):
            break
        time.sleep(0.3)
    assert len(seen) == 3, seen
    assert {t["name"] for t in seen} == {"function:add"}
    assert all(t["state"] == "SUCCESS" for t in seen), [t["state"] for t in seen]
    assert {t["worker"].split("@")[0] for t in seen} <= {w.name for w in cluster.workers}
    kwargs = [json.loads(t["kwargs"]) for t in seen]  # JSON, never pickled bytes
    assert {k["plan_id"] for k in kwargs} == {plan_id}
    assert sorted(k["index"] for k in kwargs) == [0, 1, 2]
    assert {k["task"]["target"] for k in kwargs} == {"add"}
    assert sorted(k["task"]["payload"]["a"] for k in kwargs) == [0, 1, 2]


SECRET = "sk-flower-must-not-see-this"


def test_flower_shows_success_retry_failure_and_cancel(
    cluster: Cluster, flower: Flower, uid: str
) -> None:
    _wait_until_listening(flower, cluster, uid)
    plan_id = f"flower-states-{uid}"
    with HttpTestServer() as server:
        tasks = [
            {"id": "ok", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}},
            {"id": "boom", "type": "function", "target": "fail", "payload": {"token": SECRET}},
            {
                "id": "flaky",
                "type": "http",
                "target": f"{server.url}/flaky/{uid}/1?key={SECRET}",
                "payload": {"headers": {"Authorization": f"Bearer {SECRET}"}},
            },
        ]
        plan = {"id": plan_id, "tasks": tasks, "strategy": "allSettled"}
        results = {r.task_id: r for r in cluster.engine.execute_parallel(plan)}
    assert results["ok"].status is TaskStatus.SUCCESS
    assert results["boom"].status is TaskStatus.FAILURE
    assert results["flaky"].status is TaskStatus.SUCCESS and results["flaky"].retries == 1

    def settled(seen: list[dict[str, Any]]) -> bool:  # a worker's events come in batches
        states = sorted(t["state"] for t in seen)
        return states == ["FAILURE", "SUCCESS", "SUCCESS"]

    seen = _wait_for(flower, plan_id, settled)
    by_name = {t["name"]: t for t in seen}
    host = "127.0.0.1"
    assert set(by_name) == {"function:add", "function:fail", f"http:GET {host}"}, by_name
    assert by_name["function:add"]["state"] == "SUCCESS"
    assert by_name["function:fail"]["state"] == "FAILURE"
    assert "failed on purpose" in by_name["function:fail"]["exception"]
    http = by_name[f"http:GET {host}"]
    assert http["state"] == "SUCCESS" and http["retries"] == 1
    for task in seen:
        assert SECRET not in json.dumps(task), task["name"]
        assert len(task["kwargs"]) <= 1024
    assert json.loads(http["kwargs"])["task"]["payload"]["headers"] == "***"
    assert json.loads(by_name["function:fail"]["kwargs"])["plan_id"] == plan_id


def test_flower_shows_a_cancelled_task_as_revoked(
    cluster: Cluster, flower: Flower, uid: str
) -> None:
    _wait_until_listening(flower, cluster, uid)
    plan_id = f"flower-cancel-{uid}"
    tasks = [
        {"id": "slow", "type": "function", "target": "sleep", "payload": {"ms": 800}},
        {"id": "after", "type": "function", "target": "add", "payload": {"a": 1, "b": 1}},
    ]
    handle = cluster.engine.submit({"id": plan_id, "tasks": tasks, "kind": "sequential"})
    assert wait_until(lambda: handle.status()["running"] == 1)  # cancelled while "slow" runs
    handle.cancel()
    with pytest.raises(PlanFailedError) as info:
        handle.wait(10)
    recorded = {r.task_id: r.status for r in info.value.results}
    assert recorded["after"] is TaskStatus.CANCELLED
    # what Flower shows is what the plan store recorded
    celery_state = {TaskStatus.SUCCESS: "SUCCESS", TaskStatus.CANCELLED: "REVOKED"}
    expected = {
        "function:sleep": celery_state[recorded["slow"]],
        "function:add": "REVOKED",
    }
    seen = _wait_for(flower, plan_id, lambda s: {t["name"]: t["state"] for t in s} == expected)
    assert {t["name"]: t["state"] for t in seen} == expected


def test_every_sending_process_is_one_node_of_its_host_in_flower(
    flower: Flower, cluster: Cluster, uid: str, tmp_path: Any
) -> None:
    _wait_until_listening(flower, cluster, uid)
    plan = {"id": f"flower-cli-{uid}", "tasks": [{"id": "c", "type": "function", "target": "noop"}]}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    for _ in range(2):  # two CLI runs: two more processes sending tasks
        done = subprocess.run(
            [sys.executable, "-m", "taskplane.cli", "run", str(tmp_path / "plan.json"), "--json"],
            env={**worker_env(cluster.env, root=ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
    wanted = f"{SENDER_NODE}@{socket.gethostname()}"
    senders: set[str] = set()
    deadline = time.monotonic() + EVENTS_TIMEOUT_S
    while time.monotonic() < deadline:
        reply = httpx.get(f"{flower.url}/metrics", auth=AUTH, timeout=5)
        reply.raise_for_status()
        senders = {
            sample.labels["worker"]
            for family in text_string_to_metric_families(reply.text)
            if family.name == "flower_events"
            for sample in family.samples
            if sample.labels.get("type") == "task-sent"
        }
        if senders:
            break
        time.sleep(0.3)
    # this process and both CLI runs sent tasks; Flower knows one sender on this host
    assert senders == {wanted}
    workers = flower.get("/api/workers", refresh="1")
    assert not [name for name in workers if name.startswith("gen")]


def test_a_gevent_workers_task_events_come_in_batches_in_order(cluster: Cluster, uid: str) -> None:
    plan_id = f"events-batched-{uid}"
    count = 20
    tasks = [{"id": f"n{i}", "type": "function", "target": "noop"} for i in range(count)]
    with CeleryEvents(cluster.engine) as seen:
        cluster.engine.execute_parallel({"id": plan_id, "tasks": tasks})

        def by_task() -> dict[str, list[str]]:
            ours = {
                e["uuid"]
                for e in seen.of_type("task-received")
                if plan_id in (e.get("kwargs") or "")
            }
            types: dict[str, list[str]] = {u: [] for u in ours}
            for event in list(seen.seen):
                if event.get("uuid") in ours and event["type"] != "task-sent":
                    types[event["uuid"]].append(event["type"])
            return types

        assert wait_until(
            lambda: (
                len(by_task()) == count and all(t == list(LIFECYCLE) for t in by_task().values())
            ),
            timeout_s=EVENTS_TIMEOUT_S,
        ), by_task()
    worker_events = [e for e in seen.seen if e["type"] in LIFECYCLE]
    # every task's three events arrived in their order, several to a message
    assert len(worker_events) >= count * len(LIFECYCLE)
    assert seen.task_messages <= len(worker_events) / 3, (seen.task_messages, len(worker_events))
