"""``protocol="a2a"`` through real workers against real A2A agents (the example's).

Two agents built with the official ``a2a-sdk`` run in subprocesses on
127.0.0.1: one whose card says it streams, one that does not (so tasks are
followed by polling). What the remote side saw is read back with a plain
JSON-RPC ``ListTasks`` call, as any client of the agent would see it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from taskplane import ExecutionEngine, ExecutionResult, ExecutionTask, PlanFailedError
from taskplane.devtools.redis_server import free_port
from taskplane.models import TaskStatus
from tests.integration.conftest import ROOT
from tests.integration.test_proxy_mcp import wait_listening

pytestmark = pytest.mark.integration


def start_agent(*extra: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.agents.a2a_agent", "--port", str(port), *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_listening(port, proc)
    return f"http://127.0.0.1:{port}", proc


@pytest.fixture(scope="module", params=["streaming", "polling"])
def a2a_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url, proc = start_agent(*(["--no-streaming"] if request.param == "polling" else []))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def remote_tasks(url: str, taskplane_task_id: str) -> list[dict[str, Any]]:
    """The agent's tasks that taskplane opened for *taskplane_task_id* (A2A ``ListTasks``)."""
    request = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "ListTasks",
        "params": {"historyLength": 1},
    }
    reply = httpx.post(url, json=request, headers={"A2A-Version": "1.0"}, timeout=10).json()
    assert "result" in reply, reply
    return [
        task
        for task in reply["result"].get("tasks", [])
        if task.get("history")
        and task["history"][0].get("metadata", {}).get("taskplaneTaskId") == taskplane_task_id
    ]


def run(
    engine: ExecutionEngine, agent_id: str, task_id: str, payload: dict[str, Any], **meta: Any
) -> ExecutionResult:
    task = ExecutionTask(id=task_id, type="agent", target=agent_id, payload=payload, metadata=meta)
    return engine.execute_task(task)


def test_card_skills_become_capabilities_and_a_task_completes(
    engine: ExecutionEngine, a2a_url: str, uid: str
) -> None:
    info = engine.register_agent(f"a2a-{uid}", a2a_url, protocol="a2a", capabilities=["own"])
    assert info.healthy, info.health_message
    assert info.capabilities == ["own", "summarize", "wait"]
    result = run(engine, f"a2a-{uid}", f"ok-{uid}", {"prompt": "summarize three short words"})
    assert result.status == "success", result.error
    assert result.result == ["4 words", {"words": 4, "chars": 27}]
    assert result.metadata["a2aState"] == "completed"
    assert result.metadata["artifacts"] == ["text", "counts"]
    (remote,) = remote_tasks(a2a_url, f"ok-{uid}")
    assert remote["status"]["state"] == "TASK_STATE_COMPLETED"
    assert remote["id"] == result.metadata["a2aTaskId"]


def test_failed_is_retried_rejected_is_not(engine: ExecutionEngine, a2a_url: str, uid: str) -> None:
    engine.register_agent(f"a2a-{uid}", a2a_url, protocol="a2a")
    failed = run(engine, f"a2a-{uid}", f"fail-{uid}", {"prompt": "fail"}, retries=1)
    assert failed.status == "failure" and failed.retries == 1
    assert "ended failed: it went wrong" in (failed.error or "")
    assert len(remote_tasks(a2a_url, f"fail-{uid}")) == 2
    rejected = run(engine, f"a2a-{uid}", f"rej-{uid}", {"prompt": "reject"}, retries=2)
    assert rejected.status == "failure" and rejected.retries == 0
    assert "ended rejected: not my job" in (rejected.error or "")


@pytest.mark.parametrize(
    ("prompt", "state"), [("ask", "input-required"), ("login", "auth-required")]
)
def test_interrupted_states_end_the_attempt_naming_the_state(
    engine: ExecutionEngine, a2a_url: str, uid: str, prompt: str, state: str
) -> None:
    engine.register_agent(f"a2a-{uid}", a2a_url, protocol="a2a")
    started = time.monotonic()
    result = run(engine, f"a2a-{uid}", f"{prompt}-{uid}", {"prompt": prompt}, retries=2)
    assert result.status == "failure" and result.retries == 0
    assert f"ended {state}" in (result.error or "")
    assert time.monotonic() - started < 4.0  # no hang waiting for a human


def test_timeout_cancels_the_remote_task(engine: ExecutionEngine, a2a_url: str, uid: str) -> None:
    engine.register_agent(f"a2a-{uid}", a2a_url, protocol="a2a")
    result = run(
        engine, f"a2a-{uid}", f"to-{uid}", {"prompt": "slow 10000"}, timeout=800, retries=0
    )
    assert result.status == "timeout", result.error
    (remote,) = remote_tasks(a2a_url, f"to-{uid}")
    assert remote["status"]["state"] == "TASK_STATE_CANCELED"


def test_cancelling_the_plan_cancels_the_remote_task(
    engine: ExecutionEngine, a2a_url: str, uid: str
) -> None:
    engine.register_agent(f"a2a-{uid}", a2a_url, protocol="a2a")
    task_id = f"cancel-{uid}"
    plan = {
        "id": f"plan-{uid}",
        "tasks": [
            {
                "id": task_id,
                "type": "agent",
                "target": f"a2a-{uid}",
                "payload": {"prompt": "slow 20000"},
                "metadata": {"timeout": 12000},
            }
        ],
        "timeout": 30000,
    }
    handle = engine.submit(plan)
    deadline = time.monotonic() + 15
    while not remote_tasks(a2a_url, task_id):
        assert time.monotonic() < deadline, "the remote task never started"
        time.sleep(0.1)
    cancelled_at = time.monotonic()
    handle.cancel()
    with pytest.raises(PlanFailedError) as failed:
        handle.wait(15)
    assert [r.status for r in failed.value.results] == [TaskStatus.CANCELLED]
    while True:
        (remote,) = remote_tasks(a2a_url, task_id)
        if remote["status"]["state"] == "TASK_STATE_CANCELED":
            break
        assert time.monotonic() - cancelled_at < 5.0, f"remote task still {remote['status']}"
        time.sleep(0.1)
    assert remote["contextId"] == f"plan-{uid}"


def test_an_unreachable_agent_is_retried(engine: ExecutionEngine, uid: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    info = engine.register_agent(f"dead-{uid}", dead, protocol="a2a")
    assert info.healthy is False
    result = run(engine, f"dead-{uid}", f"dead-{uid}", {"prompt": "hi"}, retries=1)
    assert result.status == "failure" and result.retries == 1
    assert "cannot" in (result.error or "")


GEVENT_SCENARIO = """
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent
from taskplane.contract import CallContext
from taskplane.models import ExecutionTask
from taskplane.proxy.a2a import A2ATransport
from taskplane.proxy.registry import make_agent_info

transport = A2ATransport()
agent = make_agent_info("a", sys.argv[1], "a2a")
flag = {"cancelled": False}

def send(prompt, **call):
    task = ExecutionTask(id="x", type="agent", target="a", payload={"prompt": prompt})
    try:
        return transport.send(agent, task, CallContext(timeout_s=10, **call), timeout_s=10).result
    except Exception as exc:
        return type(exc).__name__

started = time.monotonic()
calls = [gevent.spawn(send, "slow 400") for _ in range(5)]
doomed = gevent.spawn(send, "slow 8000", is_cancelled=lambda: flag["cancelled"])
gevent.sleep(0.6)
flag["cancelled"] = True
gevent.joinall([*calls, doomed])
elapsed = time.monotonic() - started
transport.close()
print("REPORT " + json.dumps({"elapsed": elapsed, "results": [g.value for g in calls],
                             "doomed": doomed.value}))
"""


def test_greenlets_share_the_loop_and_a_cancel_reaches_the_agent(a2a_url: str) -> None:
    """Under gevent monkey-patching: concurrent calls, and the cancel flag read in the greenlet."""
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCENARIO, a2a_url],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["results"] == ["slept 400 ms"] * 5
    assert report["doomed"] == "TaskCancelledError"
    assert report["elapsed"] < 5.0  # neither serialised nor waiting out the 8 s task
