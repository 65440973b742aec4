"""The MCP transport's mapping and the shared event loop it runs on."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx2
import pytest
from mcp import MCPError
from mcp_types import INTERNAL_ERROR, INVALID_PARAMS, CallToolResult, TextContent

from taskplane.errors import (
    ClientError,
    InvalidPayloadError,
    NotFoundError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy.aio import LoopThread
from taskplane.proxy.mcp import (
    check_arguments,
    outcome_from_tool_result,
    tool_arguments,
    tool_of,
    translate,
)
from taskplane.proxy.registry import make_agent_info

SCHEMA = {
    "type": "object",
    "properties": {"text": {"type": "string", "minLength": 1}, "top": {"type": "integer"}},
    "required": ["text"],
}


def test_arguments_are_checked_against_the_schema() -> None:
    check_arguments({"text": "ok", "top": 2}, SCHEMA, "count")
    with pytest.raises(InvalidPayloadError) as refused:
        check_arguments({"text": "", "top": "2"}, SCHEMA, "count")
    message = str(refused.value)
    assert "payload.text: '' should be non-empty" in message
    assert "payload.top: '2' is not of type 'integer'" in message
    with pytest.raises(InvalidPayloadError, match=r"payload\.\(payload\): 'text' is a required"):
        check_arguments({}, SCHEMA, "count")


def test_results() -> None:
    structured = CallToolResult(
        content=[TextContent(type="text", text="{}")], structured_content={"n": 1}
    )
    assert outcome_from_tool_result(structured, "t", "w").result == {"n": 1}
    text = CallToolResult(content=[TextContent(type="text", text="hi")])
    assert outcome_from_tool_result(text, "t", "w").result == "hi"
    two = CallToolResult(
        content=[TextContent(type="text", text="a"), TextContent(type="text", text="b")]
    )
    assert outcome_from_tool_result(two, "t", "w").result == ["a", "b"]
    failed = CallToolResult(content=[TextContent(type="text", text="nope")], is_error=True)
    with pytest.raises(ClientError, match="tool t failed: nope"):
        outcome_from_tool_result(failed, "t", "w")


def test_the_tool_comes_from_metadata_then_policy() -> None:
    agent = make_agent_info("m", "http://mcp.test/mcp", "mcp", policy={"tool": "p"})
    task = ExecutionTask(id="t", type="agent", target="m")
    assert tool_of(agent, task) == "p"
    named = ExecutionTask(id="t", type="agent", target="m", metadata={"tool": "m"})
    assert tool_of(agent, named) == "m"
    with pytest.raises(InvalidPayloadError, match=r"metadata\.tool or policy\.tool"):
        tool_of(make_agent_info("m", "http://mcp.test/mcp", "mcp"), task)


def _status(code: int) -> httpx2.HTTPStatusError:
    request = httpx2.Request("POST", "http://mcp.test/mcp")
    return httpx2.HTTPStatusError("x", request=request, response=httpx2.Response(code))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ExceptionGroup("g", [httpx2.ConnectError("refused")]), TransportError),
        (ExceptionGroup("g", [ExceptionGroup("h", [TimeoutError()])]), TaskTimeoutError),
        (MCPError(INVALID_PARAMS, "bad"), InvalidPayloadError),
        (MCPError(INTERNAL_ERROR, "boom"), UpstreamError),
        (MCPError(-1, "other"), ClientError),
        (_status(503), UpstreamError),
        (_status(429), ThrottledError),
        (_status(404), ClientError),
        (ExceptionGroup("g", [NotFoundError("no tool")]), NotFoundError),
        (RuntimeError("odd"), TransportError),
    ],
)
def test_sdk_errors_are_translated(error: BaseException, kind: type[Exception]) -> None:
    assert type(translate(error, "w")) is kind


def test_one_loop_thread_runs_coroutines_from_many_threads() -> None:
    loop = LoopThread()
    seen: set[Any] = set()

    async def where(n: int) -> int:
        seen.add(threading.get_ident())
        await asyncio.sleep(0)
        return n * 2

    try:
        results: list[int] = []
        callers = [
            threading.Thread(target=lambda n=n: results.append(loop.run(where(n), timeout_s=5)))
            for n in range(8)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert sorted(results) == [n * 2 for n in range(8)]
        assert len(seen) == 1 and threading.get_ident() not in seen
    finally:
        loop.close()


def test_errors_propagate_and_a_closed_loop_restarts() -> None:
    loop = LoopThread()

    async def boom() -> None:
        raise ValueError("inside")

    async def one() -> int:
        return 1

    try:
        with pytest.raises(ValueError, match="inside"):
            loop.run(boom(), timeout_s=5)
        first = loop.loop()
        loop.close()
        assert loop.run(one(), timeout_s=5) == 1
        assert loop.loop() is not first
    finally:
        loop.close()


def test_closers_run_on_the_loop_before_it_stops() -> None:
    loop = LoopThread()
    ran: list[bool] = []

    async def closer() -> None:
        ran.append(asyncio.get_running_loop() is running)

    running = loop.loop()
    loop.at_close(closer)
    loop.close()
    assert ran == [True] and not loop.running
    loop.close()  # closing twice is harmless, closers ran once
    assert ran == [True]


def test_previous_is_passed_only_to_tools_that_declare_it() -> None:
    payload = {"text": "a", "previous": {"taskId": "t0"}}
    assert tool_arguments(payload, SCHEMA) == {"text": "a"}
    wants = {**SCHEMA, "properties": {**SCHEMA["properties"], "previous": {"type": "object"}}}
    assert tool_arguments(payload, wants) == payload
