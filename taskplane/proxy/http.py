"""The HTTP transport: ``POST {endpoint}/analyze`` and ``GET {endpoint}/health``.

One pooled :class:`httpx.Client` per process is passed in and shared by every
call. httpx errors and statuses are translated by :mod:`taskplane.httpio`:

==========================================  =========================================
What happened                               Raised
==========================================  =========================================
connection refused / reset, protocol error  :class:`~taskplane.errors.TransportError`
connect, read, write or pool timeout        :class:`~taskplane.errors.TaskTimeoutError`
5xx or 429 (``Retry-After`` is kept)        :class:`~taskplane.errors.UpstreamError`
other 4xx                                   :class:`~taskplane.errors.ClientError`
1xx/3xx, not JSON, missing fields,          :class:`~taskplane.errors.InvalidReplyError`
confidence outside 0..1, reply too large,
undecodable content encoding
==========================================  =========================================

The reply is streamed and reading stops at ``max_response_bytes``. The whole
exchange (not only each read) is bounded by the call's timeout.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from taskplane.aliases import Clock
from taskplane.contract import CallContext, Outcome
from taskplane.errors import InvalidReplyError
from taskplane.httpio import (
    MAX_RESPONSE_BYTES,
    httpx_errors,
    read_capped,
    reply_error,
    retry_after_s,
    snippet,
)
from taskplane.models import ExecutionTask
from taskplane.observability import tracing
from taskplane.proxy.registry import AgentInfo
from taskplane.proxy.transport import AgentTransport, HealthReport, outcome_from_reply


def make_http_client(*, max_connections: int) -> httpx.Client:
    """The process-wide pooled client the transport expects (no redirects, no env proxies).

    Args:
        max_connections: Pool size: as many as the process has calls in flight.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    hooks = {"request": [tracing.inject_httpx]}  # requests carry the call span's traceparent
    return httpx.Client(limits=limits, follow_redirects=False, trust_env=False, event_hooks=hooks)


class HttpTransport(AgentTransport):
    """Calls HTTP agents through a shared pooled client.

    Args:
        client: The process's pooled client; closed by :meth:`close`.
        max_response_bytes: Replies larger than this fail with ``InvalidReplyError``.
        clock: Monotonic clock bounding a whole exchange.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.max_response_bytes = max_response_bytes
        self.clock = clock

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        url = f"{agent.endpoint}/analyze"
        headers = {"Idempotency-Key": call.idempotency_key, "X-Taskplane-Task-Id": task.id}
        deadline = self.clock() + timeout_s
        where = f"agent {agent.agent_id} at {url}"
        with (
            httpx_errors(where=where, timeout_s=timeout_s),
            self.client.stream(
                "POST", url, json=task.payload, headers=headers, timeout=timeout_s
            ) as response,
        ):
            body = read_capped(
                response,
                self.max_response_bytes,
                what=f"reply from {url}",
                deadline=deadline,
                clock=self.clock,
            )
            status = response.status_code
            retry_after = response.headers.get("Retry-After")
        self._check_status(agent, status, body, retry_after)
        try:
            reply = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidReplyError(
                f"agent {agent.agent_id} replied with invalid JSON: {exc}"
            ) from exc
        return outcome_from_reply(reply)

    @staticmethod
    def _check_status(agent: AgentInfo, status: int, body: bytes, retry_after: str | None) -> None:
        if not 200 <= status < 300:
            message = f"agent {agent.agent_id} answered HTTP {status}: {snippet(body)}"
            raise reply_error(status, message, retry_after_s(retry_after))

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        try:
            response = self.client.get(f"{agent.endpoint}/health", timeout=timeout_s)
        except httpx.HTTPError as exc:
            return HealthReport(healthy=False, status="unreachable", message=repr(exc))
        return health_of(response)

    def close(self) -> None:
        self.client.close()


def health_of(response: httpx.Response) -> HealthReport:
    """What a health endpoint's answer says: any 2xx is healthy."""
    status = "healthy" if response.is_success else "unhealthy"
    return HealthReport(
        healthy=response.is_success, status=status, message=f"HTTP {response.status_code}"
    )


def reply_json(value: Any, confidence: float, reasoning: str | None = None) -> bytes:
    """Encode an agent reply the way this transport expects it (for agents and tests)."""
    body: dict[str, Any] = {"value": value, "confidence": confidence}
    if reasoning is not None:
        body["reasoning"] = reasoning
    return json.dumps(body).encode()
