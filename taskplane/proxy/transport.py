"""How the proxy talks to an agent: the transport interface and its in-memory form.

A transport makes exactly one attempt (retries belong to the task runner) and
raises a :class:`taskplane.errors.ExecutionError` subclass for every failure:
foreign exceptions (httpx, grpc) are translated inside the transport, chained
with ``from``. Its verbs are :meth:`AgentTransport.send` and
:meth:`AgentTransport.check_health`.

:class:`InMemoryTransport` calls Python functions instead of the network, for
tests and local use.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from taskplane.contract import CallContext, Outcome
from taskplane.errors import InvalidReplyError, TransportError
from taskplane.models import ExecutionTask
from taskplane.proxy.registry import AgentInfo


@dataclass(frozen=True)
class HealthReport:
    """What an agent said about its health.

    Attributes:
        healthy: True only when the agent said it is fully healthy.
        status: ``"healthy"``, ``"unhealthy"``, ``"degraded"``, ``"unknown"`` or
            ``"unreachable"``.
        message: Details, e.g. the HTTP status or the connection error.
        details: Extra key/values the agent reported.
    """

    healthy: bool
    status: str
    message: str = ""
    details: dict[str, str] = field(default_factory=dict)


class AgentTransport(ABC):
    """Sends one task to one agent over one protocol."""

    @abstractmethod
    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        """Make one attempt at *task* on *agent*, bounded by *timeout_s*.

        Raises:
            ExecutionError: A subclass saying what went wrong (see the error tree).
        """

    @abstractmethod
    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        """Ask *agent* whether it can take work; never raises for an unhealthy agent."""

    def describe(self, agent: AgentInfo, *, timeout_s: float) -> list[str]:
        """What the agent says it can do, read at registration (``[]`` unless the protocol says).

        Raises:
            ExecutionError: The agent could not be asked.
        """
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release pooled connections (no-op unless the transport holds some)."""


def confidence_of(value: Any) -> float:
    """Check a reply's confidence: a real number in 0..1.

    Raises:
        InvalidReplyError: It is missing, not a number, not finite or out of range.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidReplyError(f"agent reply: confidence must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidReplyError(f"agent reply: confidence must be within 0..1, got {value!r}")
    return number


#: Token counts an agent may report, in either spelling: (input, output).
USAGE_KEYS = (("inputTokens", "outputTokens"), ("prompt_tokens", "completion_tokens"))


def usage_from(usage: Any) -> dict[str, int] | None:
    """``{inputTokens, outputTokens}`` from a reply's ``usage``, if it reports them.

    Both ``{inputTokens, outputTokens}`` and the common
    ``{prompt_tokens, completion_tokens}`` are read; counts must be
    non-negative integers, else the usage is ignored.
    """
    if not isinstance(usage, dict):
        return None
    for inputs_key, outputs_key in USAGE_KEYS:
        inputs, outputs = usage.get(inputs_key), usage.get(outputs_key)
        if inputs is None and outputs is None:
            continue
        counts = (inputs or 0, outputs or 0)
        if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
            return {"inputTokens": counts[0], "outputTokens": counts[1]}
        return None
    return None


def outcome_from_reply(reply: Any) -> Outcome:
    """Turn an agent's ``{value, confidence, reasoning?, usage?}`` reply into an :class:`Outcome`.

    A reported ``usage`` (see :func:`usage_from`) becomes ``metadata.usage``.

    Raises:
        InvalidReplyError: The reply is not an object, or lacks ``value`` or a
            valid ``confidence``.
    """
    if not isinstance(reply, dict):
        raise InvalidReplyError(f"agent reply must be a JSON object, got {type(reply).__name__}")
    if "value" not in reply:
        raise InvalidReplyError("agent reply has no 'value'")
    if "confidence" not in reply:
        raise InvalidReplyError("agent reply has no 'confidence'")
    confidence = confidence_of(reply["confidence"])
    reasoning = reply.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise InvalidReplyError("agent reply: reasoning must be a string")
    metadata: dict[str, Any] = {}
    if reasoning is not None:
        metadata["reasoning"] = reasoning
    usage = usage_from(reply.get("usage"))
    if usage is not None:
        metadata["usage"] = usage
    return Outcome(result=reply["value"], confidence=confidence, metadata=metadata)


#: An in-memory agent: gets the payload and the call, returns ``{value, confidence, ...}``.
LocalAgent = Callable[[dict[str, Any], CallContext], dict[str, Any]]


class InMemoryTransport(AgentTransport):
    """Routes calls to Python functions keyed by endpoint, for tests and local use.

    An agent function may raise any ``ExecutionError`` to simulate a failure;
    an endpoint with no function behaves like a refused connection.
    """

    def __init__(self, agents: dict[str, LocalAgent] | None = None) -> None:
        self._agents: dict[str, LocalAgent] = dict(agents or {})
        self._lock = threading.Lock()

    def add(self, endpoint: str, agent: LocalAgent) -> None:
        """Serve *agent* at *endpoint*."""
        with self._lock:
            self._agents[endpoint] = agent

    def _agent_at(self, endpoint: str) -> LocalAgent:
        with self._lock:
            found = self._agents.get(endpoint)
        if found is None:
            raise TransportError(f"nothing listens at {endpoint}")
        return found

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        return outcome_from_reply(self._agent_at(agent.endpoint)(dict(task.payload), call))

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        try:
            self._agent_at(agent.endpoint)
        except TransportError as exc:
            return HealthReport(healthy=False, status="unreachable", message=str(exc))
        return HealthReport(healthy=True, status="healthy")
