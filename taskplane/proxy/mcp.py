"""The MCP transport: call one tool on a Model Context Protocol server (streamable HTTP).

Built on the official ``mcp`` SDK. The endpoint is the server's streamable
HTTP URL (e.g. ``http://127.0.0.1:8765/mcp``); the tool is the task's
``metadata.tool``, else the agent's ``policy.tool``.

One attempt: connect (the SDK negotiates the protocol version), list the
tools, check the payload (less a sequential plan's ``previous``, unless the
tool declares it) against the tool's ``inputSchema`` with
``jsonschema`` (a payload it refuses is ``InvalidPayloadError``, never sent
and not retried), call the tool, disconnect. The result is the tool's
``structuredContent``, else its text content (one text block as a string,
several as a list); ``isError`` is a failure carrying the tool's text.
The whole attempt is bounded by the call's timeout.

The SDK is asyncio; calls run on the process's one shared loop
(:class:`~taskplane.proxy.aio.LoopThread`), so ``send`` stays synchronous and
works from threads and from gevent greenlets alike. The SDK is imported on
first use (it takes about a second), so clients that never call an MCP tool
do not pay for it.

Errors, translated in :func:`translate` (one table, :func:`error_map`):

================================================  ==========================================
What happened                                     Raised
================================================  ==========================================
cannot connect, connection dropped                ``TransportError``
the attempt outlived its timeout                  ``TaskTimeoutError``
HTTP 429 / 5xx from the server                    ``UpstreamError`` (retried)
other HTTP 4xx                                    ``ClientError``
JSON-RPC ``INVALID_PARAMS``                       ``InvalidPayloadError``
JSON-RPC ``INTERNAL_ERROR``, connection closed    ``UpstreamError``
other JSON-RPC errors                             ``ClientError``
unknown tool; no tool named                       ``NotFoundError``; ``InvalidPayloadError``
``isError``; a reply the SDK cannot parse         ``ClientError``; ``InvalidReplyError``
================================================  ==========================================

``isError`` is the tool saying no to these arguments, not the server being
unwell, so it is not retried and does not count against the breaker.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from typing import Any

import anyio
import pydantic

from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ClientError,
    ExecutionError,
    InvalidPayloadError,
    InvalidReplyError,
    NotFoundError,
    TaskTimeoutError,
    TransportError,
    UpstreamError,
)
from taskplane.httpio import reply_error
from taskplane.models import ExecutionTask
from taskplane.observability import tracing
from taskplane.proxy.aio import LoopThread
from taskplane.proxy.registry import AgentInfo
from taskplane.proxy.transport import AgentTransport, HealthReport

#: How many problems a refused payload's error lists.
MAX_SCHEMA_PROBLEMS = 5


def _leaves(error: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, or *error* itself."""
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]


def _rpc_error(error: Any, where: str) -> ExecutionError:
    from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_PARAMS, REQUEST_TIMEOUT

    message = f"{where} answered JSON-RPC error {error.code}: {error.message}"
    if error.code == INVALID_PARAMS:
        return InvalidPayloadError(message)
    if error.code in (INTERNAL_ERROR, CONNECTION_CLOSED):
        return UpstreamError(message, error.code)
    if error.code == REQUEST_TIMEOUT:
        return TaskTimeoutError(message)
    return ClientError(message, error.code)


def _status_error(error: Any, where: str) -> ExecutionError:
    status = error.response.status_code
    return reply_error(status, f"{where} answered HTTP {status}")


ErrorMap = tuple[tuple[type[BaseException], Callable[[Any, str], ExecutionError]], ...]


@functools.cache
def error_map() -> ErrorMap:
    """Foreign exception type → how it becomes ours (first match wins); built on first use."""
    import httpx2
    from mcp import MCPError

    def timeout(e: Any, where: str) -> ExecutionError:
        return TaskTimeoutError(f"{where} did not answer in time")

    def unreachable(e: Any, where: str) -> ExecutionError:
        return TransportError(f"cannot reach {where}: {e!r}")

    def closed(e: Any, where: str) -> ExecutionError:
        return TransportError(f"{where} closed the stream")

    return (
        (ExecutionError, lambda e, where: e),
        (MCPError, _rpc_error),
        (TimeoutError, timeout),
        (httpx2.TimeoutException, timeout),
        (httpx2.HTTPStatusError, _status_error),
        (httpx2.TransportError, unreachable),
        (anyio.ClosedResourceError, closed),
        (anyio.EndOfStream, closed),
        (OSError, unreachable),
        (pydantic.ValidationError, lambda e, where: InvalidReplyError(f"{where}: bad reply: {e}")),
    )


def translate(error: BaseException, where: str) -> ExecutionError:
    """Map an SDK failure (possibly an exception group) to the error tree (module table)."""
    for leaf in _leaves(error):
        for kind, make in error_map():
            if isinstance(leaf, kind):
                return make(leaf, where)
    return TransportError(f"{where} failed: {error!r}")


def check_arguments(arguments: dict[str, Any], schema: dict[str, Any], tool: str) -> None:
    """Check *arguments* against the tool's input schema.

    Raises:
        InvalidPayloadError: Names each offending field (at most a few).
    """
    import jsonschema

    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema)
    problems = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not problems:
        return
    described = []
    for problem in problems[:MAX_SCHEMA_PROBLEMS]:
        field = ".".join(str(part) for part in problem.absolute_path) or "(payload)"
        described.append(f"payload.{field}: {problem.message}")
    raise InvalidPayloadError(f"tool {tool} refuses the payload: " + "; ".join(described))


def tool_arguments(payload: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """The payload as a tool's arguments: a sequential plan's ``previous`` is dropped
    unless the tool's schema asks for it (strict schemas would refuse it)."""
    properties = schema.get("properties")
    if "previous" in payload and not (isinstance(properties, dict) and "previous" in properties):
        return {key: value for key, value in payload.items() if key != "previous"}
    return payload


def outcome_from_tool_result(result: Any, tool: str, where: str) -> Outcome:
    """Turn a ``CallToolResult`` into an :class:`Outcome` (structured, else text content).

    Raises:
        ClientError: The tool reported an error (``isError``).
    """
    texts = [block.text for block in result.content if getattr(block, "type", "") == "text"]
    if result.is_error:
        raise ClientError(f"{where}: tool {tool} failed: {' '.join(texts)[:500]}", "isError")
    if result.structured_content is not None:
        value: Any = result.structured_content
    elif len(texts) == 1:
        value = texts[0]
    else:
        value = texts
    kinds = sorted({getattr(block, "type", "?") for block in result.content})
    return Outcome(result=value, confidence=None, metadata={"tool": tool, "contentTypes": kinds})


def tool_of(agent: AgentInfo, task: ExecutionTask) -> str:
    """The tool a task calls: ``metadata.tool``, else ``policy.tool``.

    Raises:
        InvalidPayloadError: Neither names one.
    """
    extra = task.metadata.model_extra or {}
    tool = extra.get("tool") or agent.policy.tool
    if not isinstance(tool, str) or not tool:
        raise InvalidPayloadError(
            f"agent {agent.agent_id}: no MCP tool named (metadata.tool or policy.tool)"
        )
    return tool


#: Connect, write and pool timeout of the HTTP client a traced MCP call makes (s).
HTTP_TIMEOUT_S = 30.0


async def _server(
    stack: contextlib.AsyncExitStack, endpoint: str, headers: dict[str, str], timeout_s: float
) -> Any:
    """What ``mcp.Client`` connects to: the endpoint, or (with *headers* to send) a
    streamable HTTP transport over a client that adds them to every request."""
    if not headers:
        return endpoint
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    timeout = httpx2.Timeout(HTTP_TIMEOUT_S, read=timeout_s)
    http = await stack.enter_async_context(httpx2.AsyncClient(headers=headers, timeout=timeout))
    return streamable_http_client(endpoint, http_client=http)


class MCPTransport(AgentTransport):
    """Calls tools on MCP servers over streamable HTTP.

    Args:
        loop: The process's shared event loop thread (closed by :meth:`close`).
    """

    def __init__(self, *, loop: LoopThread | None = None) -> None:
        self.loop = loop or LoopThread()

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        tool = tool_of(agent, task)
        where = f"MCP agent {agent.agent_id}"
        arguments = dict(task.payload)
        headers = tracing.outgoing_headers()  # the call span is current here, not on the loop
        try:
            return self.loop.run(
                self._call(agent.endpoint, tool, arguments, where, timeout_s, headers),
                timeout_s=timeout_s,
            )
        except ExecutionError:
            raise
        except Exception as exc:  # an SDK failure, possibly an exception group
            raise translate(exc, where) from exc

    @staticmethod
    async def _call(
        endpoint: str,
        tool: str,
        arguments: dict[str, Any],
        where: str,
        timeout_s: float,
        headers: dict[str, str],
    ) -> Outcome:
        from mcp import Client

        with anyio.fail_after(timeout_s):
            async with contextlib.AsyncExitStack() as stack:
                server = await _server(stack, endpoint, headers, timeout_s)
                client = await stack.enter_async_context(
                    Client(server, read_timeout_seconds=timeout_s, cache=None)
                )
                listing = await client.list_tools()
                found = next((t for t in listing.tools if t.name == tool), None)
                if found is None:
                    raise NotFoundError(f"{where} has no tool {tool!r}")
                arguments = tool_arguments(arguments, found.input_schema)
                check_arguments(arguments, found.input_schema, tool)
                result = await client.call_tool(tool, arguments, read_timeout_seconds=timeout_s)
        return outcome_from_tool_result(result, tool, where)

    def tools(self, agent: AgentInfo, *, timeout_s: float) -> list[str]:
        """The names of the server's tools.

        Raises:
            ExecutionError: The server could not be asked (translated as for ``send``).
        """
        where = f"MCP agent {agent.agent_id}"

        async def listing() -> list[str]:
            from mcp import Client

            with anyio.fail_after(timeout_s):
                async with Client(
                    agent.endpoint, read_timeout_seconds=timeout_s, cache=None
                ) as client:
                    return [t.name for t in (await client.list_tools()).tools]

        try:
            return self.loop.run(listing(), timeout_s=timeout_s)
        except ExecutionError:
            raise
        except Exception as exc:
            raise translate(exc, where) from exc

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        """Healthy when the server answers and offers the policy's tool (if one is set)."""
        try:
            names = self.tools(agent, timeout_s=timeout_s)
        except ExecutionError as exc:
            return HealthReport(healthy=False, status="unreachable", message=str(exc))
        tool = agent.policy.tool
        if tool and tool not in names:
            return HealthReport(
                healthy=False, status="unhealthy", message=f"no tool {tool!r} on the server"
            )
        return HealthReport(healthy=True, status="healthy", message=f"{len(names)} tools")

    def close(self) -> None:
        self.loop.close()
