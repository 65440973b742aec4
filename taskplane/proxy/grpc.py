"""The gRPC transport: the ``parallax.confidence.ConfidenceAgent`` service.

Requests are mapped as Parallax's control plane maps them, so agents built
with the Parallax SDKs see what they expect: ``task_description`` is the
payload's ``task``, else ``description``, else ``"analyze"``; ``data`` is a
real ``google.protobuf.Struct`` of the payload's ``data`` if present (wrapped
as ``{"value": ...}`` when it is not an object), else of the whole payload;
``context`` is the payload's ``context`` object with values as strings. Every
call carries a deadline and the ``idempotency-key`` / ``x-taskplane-task-id``
metadata. A reply reports token usage in its ``metadata`` map as decimal
strings (``inputTokens``/``outputTokens``, or ``prompt_tokens``/
``completion_tokens``); it becomes the result's ``metadata.usage``.

Status codes are translated here:

=====================================================  =============================
gRPC status                                            Raised
=====================================================  =============================
DEADLINE_EXCEEDED                                      ``TaskTimeoutError``
UNAVAILABLE, INTERNAL, UNKNOWN,                        ``UpstreamError`` (retried,
ABORTED, DATA_LOSS                                     counts against the breaker)
RESOURCE_EXHAUSTED                                     ``ThrottledError`` (retried,
                                                       not counted by the breaker)
CANCELLED                                              ``TransportError``
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS,           ``ClientError`` (not retried,
PERMISSION_DENIED, UNAUTHENTICATED, FAILED_PRECONDITION, ignored by the breaker)
OUT_OF_RANGE, UNIMPLEMENTED
a reply larger than ``max_response_bytes``             ``InvalidReplyError``
=====================================================  =============================

INTERNAL/UNKNOWN/DATA_LOSS/ABORTED are the server-side failures gRPC has in
place of HTTP 5xx, so they are treated like 5xx.

One channel per endpoint is cached for the life of the transport (channels
multiplex concurrent calls); :meth:`GrpcTransport.close` closes them.

The protocol's messages live in a private descriptor pool
(:mod:`taskplane.proxy.parallax`), imported on first use: a process that
never calls a gRPC agent never builds them, and one that does can also hold
the Parallax SDK's own generated copy of the same protocol.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from types import ModuleType
from typing import Any

import grpc

from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ClientError,
    ExecutionError,
    InvalidReplyError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.httpio import MAX_RESPONSE_BYTES
from taskplane.models import ExecutionTask
from taskplane.observability import tracing
from taskplane.proxy.registry import AgentInfo
from taskplane.proxy.transport import (
    USAGE_KEYS,
    AgentTransport,
    HealthReport,
    confidence_of,
    usage_from,
)

_RETRYABLE_UPSTREAM = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.DATA_LOSS,
}
#: ``Health.Status`` numbers (field 1 of ``Health``) and our names for them.
_HEALTH_NAMES = {0: "unknown", 1: "healthy", 2: "unhealthy", 3: "degraded"}
_HEALTHY = 1


def wire() -> ModuleType:
    """The protocol's messages and stubs (:mod:`taskplane.proxy.parallax`), built on first use."""
    from taskplane.proxy import parallax

    return parallax


def translate_rpc_error(error: grpc.RpcError, agent_id: str) -> ExecutionError:
    """Map a failed call's status to the error tree (see the module docstring)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or ""
    name = code.name if isinstance(code, grpc.StatusCode) else str(code)
    message = f"agent {agent_id} answered gRPC {name}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return TaskTimeoutError(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in details:
        return InvalidReplyError(message)
    if code is grpc.StatusCode.CANCELLED:
        return TransportError(message)
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ThrottledError(message, name)
    if code in _RETRYABLE_UPSTREAM:
        return UpstreamError(message, name)
    if code is grpc.StatusCode.OK:
        return UpstreamError(message, name)
    return ClientError(message, name)


def build_request(task: ExecutionTask, *, timeout_s: float) -> Any:
    """Map a task to an ``AgentRequest`` (see the module docstring)."""
    payload = task.payload
    description = payload.get("task") or payload.get("description") or "analyze"
    data_value: Any = payload.get("data", payload)
    if not isinstance(data_value, dict):
        data_value = {"value": data_value}
    context = payload.get("context")
    context_map = (
        {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in context.items()}
        if isinstance(context, dict)
        else {}
    )
    request = wire().AgentRequest(
        task_id=task.id,
        task_description=str(description),
        context=context_map,
        timeout_ms=max(1, min(int(timeout_s * 1000), 2**31 - 1)),
        pattern_name=task.metadata.pattern or "",
    )
    request.data.update(data_value)
    return request


#: Reply metadata keys that carry token counts (see :data:`USAGE_KEYS`).
USAGE_FIELDS = frozenset(key for pair in USAGE_KEYS for key in pair)


def _counts(entries: Mapping[str, str]) -> dict[str, Any]:
    """The reply metadata's token counts (decimal strings) as numbers, others as given."""
    return {
        key: int(value) if value.isdecimal() else value
        for key, value in entries.items()
        if key in USAGE_FIELDS
    }


def outcome_from_result(reply: Any, agent_id: str) -> Outcome:
    """Turn a ``ConfidenceResult`` into an :class:`Outcome`.

    Raises:
        InvalidReplyError: ``value_json`` is not JSON or the confidence is out of 0..1.
    """
    try:
        value = json.loads(reply.value_json)
    except ValueError as exc:
        raise InvalidReplyError(f"agent {agent_id}: value_json is not JSON: {exc}") from exc
    metadata: dict[str, Any] = {
        "reasoning": reply.reasoning,
        "uncertainties": list(reply.uncertainties),
    }
    if reply.metadata:
        metadata["agentMetadata"] = dict(reply.metadata)
        usage = usage_from(_counts(reply.metadata))
        if usage is not None:
            metadata["usage"] = usage
    return Outcome(result=value, confidence=confidence_of(reply.confidence), metadata=metadata)


class GrpcTransport(AgentTransport):
    """Calls gRPC agents, one cached channel per endpoint.

    Args:
        max_response_bytes: Largest reply message accepted.
    """

    def __init__(self, *, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.max_response_bytes = max_response_bytes
        self._stubs: dict[str, Any] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def stub(self, endpoint: str) -> Any:
        """The cached stub for *endpoint* (``host:port`` or ``grpcs://host:port``)."""
        found = self._stubs.get(endpoint)
        if found is not None:
            return found
        with self._lock:
            found = self._stubs.get(endpoint)
            if found is None:
                options = [("grpc.max_receive_message_length", self.max_response_bytes)]
                if endpoint.startswith("grpcs://"):
                    target = endpoint.removeprefix("grpcs://")
                    creds = grpc.ssl_channel_credentials()
                    channel = grpc.secure_channel(target, creds, options=options)
                else:
                    channel = grpc.insecure_channel(endpoint, options=options)
                self._channels.append(channel)
                found = self._stubs[endpoint] = wire().ConfidenceAgentStub(channel)
        return found

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        request = build_request(task, timeout_s=timeout_s)
        metadata = (
            ("idempotency-key", call.idempotency_key),
            ("x-taskplane-task-id", task.id),
            *tracing.grpc_metadata(),  # the call span's traceparent
        )
        try:
            reply = self.stub(agent.endpoint).Analyze(request, timeout=timeout_s, metadata=metadata)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, agent.agent_id) from exc
        return outcome_from_result(reply, agent.agent_id)

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        try:
            health = self.stub(agent.endpoint).HealthCheck(wire().Empty(), timeout=timeout_s)
        except grpc.RpcError as exc:
            error = translate_rpc_error(exc, agent.agent_id)
            return HealthReport(healthy=False, status="unreachable", message=str(error))
        status = _HEALTH_NAMES.get(health.status, "unknown")
        return HealthReport(
            healthy=health.status == _HEALTHY,
            status=status,
            message=health.message,
            details=dict(health.details),
        )

    def capabilities(self, agent: AgentInfo, *, timeout_s: float) -> list[str]:
        """Ask the agent what it can do (``GetCapabilities``).

        Raises:
            ExecutionError: The call failed (translated as for ``Analyze``).
        """
        try:
            reply = self.stub(agent.endpoint).GetCapabilities(wire().Empty(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc, agent.agent_id) from exc
        return list(reply.capabilities)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = self._channels, []
            self._stubs.clear()
        for channel in channels:
            channel.close()
