"""``protocol="mcp"`` through real workers against a real MCP server (the example's tools).

The server is ``examples/agents/mcp_server.py`` (official ``mcp`` SDK,
streamable HTTP) in a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from taskplane import ExecutionEngine, ExecutionResult, ExecutionTask
from taskplane.devtools.redis_server import free_port
from taskplane.errors import ValidationError
from tests.integration.conftest import ROOT

pytestmark = pytest.mark.integration

#: How long the server may take to listen (s).
START_TIMEOUT_S = 30.0


def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the MCP server exited"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"the MCP server is not listening on {port}")


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "examples.agents.mcp_server", "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(
    engine: ExecutionEngine, agent_id: str, payload: dict[str, Any], **meta: Any
) -> ExecutionResult:
    task = ExecutionTask(id="t1", type="agent", target=agent_id, payload=payload, metadata=meta)
    return engine.execute_task(task)


def test_structured_content_is_the_result(engine: ExecutionEngine, mcp_url: str, uid: str) -> None:
    info = engine.register_agent(
        f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "count_words"}
    )
    assert info.healthy, info.health_message
    result = run(engine, f"mcp-{uid}", {"text": "to be or not to be", "top": 2})
    assert result.status == "success", result.error
    assert result.result == {"words": 6, "distinct": 4, "top": ["to", "be"]}
    assert result.confidence is None
    assert result.metadata["tool"] == "count_words" and result.metadata["protocol"] == "mcp"


def test_metadata_names_another_tool(engine: ExecutionEngine, mcp_url: str, uid: str) -> None:
    engine.register_agent(f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "count_words"})
    result = run(engine, f"mcp-{uid}", {"text": "quiet"}, tool="shout")
    assert result.status == "success", result.error
    assert result.result == {"result": "QUIET"}


def test_a_payload_the_schema_refuses_is_not_sent_nor_retried(
    engine: ExecutionEngine, mcp_url: str, uid: str
) -> None:
    engine.register_agent(f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "count_words"})
    result = run(engine, f"mcp-{uid}", {"text": 42, "top": 0}, retries=2)
    assert result.status == "failure"
    assert result.retries == 0
    error = result.error or ""
    assert "payload.text: 42 is not of type 'string'" in error
    assert "payload.top: 0 is less than the minimum of 1" in error


def test_is_error_is_a_failure(engine: ExecutionEngine, mcp_url: str, uid: str) -> None:
    engine.register_agent(f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "fail"})
    result = run(engine, f"mcp-{uid}", {"reason": "no thanks"}, retries=2)
    assert result.status == "failure" and result.retries == 0
    assert "failed: no thanks" in (result.error or "")


def test_timeout(engine: ExecutionEngine, mcp_url: str, uid: str) -> None:
    engine.register_agent(f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "sleep"})
    started = time.monotonic()
    result = run(engine, f"mcp-{uid}", {"ms": 5000}, timeout=700, retries=0)
    assert result.status == "timeout", result.error
    assert time.monotonic() - started < 4.0


def test_unknown_tool_and_unreachable_server(
    engine: ExecutionEngine, mcp_url: str, uid: str
) -> None:
    info = engine.register_agent(f"mcp-{uid}", mcp_url, protocol="mcp", policy={"tool": "nope"})
    assert info.healthy is False and "no tool 'nope'" in info.health_message
    result = run(engine, f"mcp-{uid}", {}, retries=2)
    assert result.status == "failure" and result.retries == 0
    assert "has no tool 'nope'" in (result.error or "")
    dead = f"http://127.0.0.1:{free_port()}/mcp"
    engine.register_agent(f"dead-{uid}", dead, protocol="mcp", policy={"tool": "x"})
    down = run(engine, f"dead-{uid}", {}, retries=1)
    assert down.status == "failure" and down.retries == 1
    assert "cannot reach" in (down.error or "")


def test_registration_checks_the_endpoint(engine: ExecutionEngine) -> None:
    with pytest.raises(ValidationError, match="endpoint"):
        engine.register_agent("bad", "127.0.0.1:9/mcp", protocol="mcp")


GEVENT_SCENARIO = """
from gevent import monkey; monkey.patch_all()
import json, sys, time
import gevent
from taskplane.contract import CallContext
from taskplane.models import ExecutionTask
from taskplane.proxy.mcp import MCPTransport
from taskplane.proxy.registry import make_agent_info

transport = MCPTransport()
agent = make_agent_info("m", sys.argv[1], "mcp", policy={"tool": "sleep"})
task = ExecutionTask(id="x", type="agent", target="m", payload={"ms": 400})
ticks = []

def ticker():
    for _ in range(30):
        ticks.append(time.monotonic())
        gevent.sleep(0.02)

started = time.monotonic()
beat = gevent.spawn(ticker)
calls = [gevent.spawn(transport.send, agent, task, CallContext(timeout_s=10), timeout_s=10)
         for _ in range(10)]
gevent.joinall(calls, raise_error=True)
elapsed = time.monotonic() - started
beat.join()
transport.close()
gaps = [b - a for a, b in zip(ticks, ticks[1:])]
print("REPORT " + json.dumps({"elapsed": elapsed, "results": [g.value.result for g in calls],
                             "max_gap": max(gaps)}))
"""


def test_calls_from_gevent_greenlets_run_concurrently(mcp_url: str) -> None:
    """Under gevent monkey-patching, greenlets share the loop thread and the hub keeps running."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", GEVENT_SCENARIO, mcp_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    (line,) = [row for row in done.stdout.splitlines() if row.startswith("REPORT ")]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["results"] == [{"result": "slept"}] * 10
    assert report["elapsed"] < 10 * 0.4  # not one after the other
    assert report["max_gap"] < 1.0  # other greenlets were not starved while calls waited
