"""Spans of the calls a task makes, and events on its delivery's span.

Installed by the worker's composition root once, when tracing is on (see
:mod:`taskplane.observability.tracing`): :func:`trace_transports` makes every
agent call an ``invoke_agent`` CLIENT span, :func:`traced_handler` gives
``http`` and ``function`` tasks a span each and records breaker and
rate-limit refusals of agent calls as events, :class:`TracingHooks` records
retries and cache hits. Off, none of this is installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from taskplane.errors import CircuitOpenError, RateLimitedError
from taskplane.hooks import ExecutionHooks
from taskplane.models import ExecutionResult, ExecutionTask, TaskType, redact_credentials
from taskplane.observability.tracing import active, tracer

if TYPE_CHECKING:
    from taskplane.contract import CallContext, Handler, Outcome, RunContext
    from taskplane.proxy.registry import AgentInfo
    from taskplane.proxy.transport import AgentTransport, HealthReport


class TracingHooks(ExecutionHooks):
    """Retries and cache hits as events on the current delivery's span."""

    def on_retrying(
        self, task: ExecutionTask, ctx: RunContext, *, attempt: int, delay_ms: float, error: str
    ) -> None:
        trace.get_current_span().add_event(
            "taskplane.retry", {"attempt": attempt, "delay_ms": delay_ms, "error": error[:300]}
        )

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        trace.get_current_span().add_event("taskplane.cache_hit", {"taskplane.task.id": task.id})


def traced_handler(kind: TaskType, handler: Handler) -> Handler:
    """*handler* with its calls traced: a span per HTTP request or function run; for
    agents, breaker and rate-limit refusals as events (the transport has the call's span)."""

    def agent(task: ExecutionTask, call: CallContext) -> Outcome:
        try:
            return handler(task, call)
        except CircuitOpenError as exc:
            trace.get_current_span().add_event(
                "taskplane.circuit_open", {"gen_ai.agent.id": task.target, "error": str(exc)}
            )
            raise
        except RateLimitedError as exc:
            trace.get_current_span().add_event(
                "taskplane.rate_limited",
                {"gen_ai.agent.id": task.target, "wait_s": exc.wait_s, "booked": exc.reserved},
            )
            raise

    def http(task: ExecutionTask, call: CallContext) -> Outcome:
        method = str(task.payload.get("method", "GET")).upper()
        attributes = {"http.request.method": method, "url.full": redact_credentials(task.target)}
        span = tracer().start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        outcome = _run_in(span, handler, task, call)
        status = outcome.result.get("status") if isinstance(outcome.result, dict) else None
        if isinstance(status, int):
            span.set_attribute("http.response.status_code", status)
        span.end()
        return outcome

    def function(task: ExecutionTask, call: CallContext) -> Outcome:
        attributes = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": task.target,
            "gen_ai.tool.type": "function",
        }
        span = tracer().start_span(f"execute_tool {task.target}", attributes=attributes)
        outcome = _run_in(span, handler, task, call)
        span.end()
        return outcome

    wrapped = {TaskType.AGENT: agent, TaskType.HTTP: http, TaskType.FUNCTION: function}
    return wrapped.get(kind, handler)


def _run_in(span: trace.Span, handler: Handler, task: ExecutionTask, call: CallContext) -> Outcome:
    """Run *handler* with *span* current; a failure is recorded on it, which then ends."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        return handler(task, call)
    except Exception as exc:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()
        raise
    finally:
        otel_context.detach(token)


def _server(endpoint: str) -> dict[str, Any]:
    parts = urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
    found: dict[str, Any] = {}
    if parts.hostname:
        found["server.address"] = parts.hostname
    try:
        if parts.port is not None:
            found["server.port"] = parts.port
    except ValueError:
        pass
    return found


class TracedTransport:
    """An agent transport whose calls are ``invoke_agent`` CLIENT spans."""

    def __init__(self, inner: AgentTransport, protocol: str) -> None:
        self.inner = inner
        self.protocol = protocol

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.id": agent.agent_id,
            "gen_ai.agent.name": agent.agent_id,
            "taskplane.agent.protocol": self.protocol,
            "taskplane.task.id": task.id,
            **_server(agent.endpoint),
        }
        if self.protocol == "openai":
            attributes["gen_ai.provider.name"] = "openai"
        span = tracer().start_span(
            f"invoke_agent {agent.agent_id}", kind=SpanKind.CLIENT, attributes=attributes
        )
        with trace.use_span(span, end_on_exit=True):
            try:
                outcome = self.inner.send(agent, task, call, timeout_s=timeout_s)
            except Exception as exc:
                span.set_attribute("error.type", type(exc).__name__)
                raise
            usage = outcome.metadata.get("usage")
            if isinstance(usage, dict):
                for key, attribute in (
                    ("inputTokens", "gen_ai.usage.input_tokens"),
                    ("outputTokens", "gen_ai.usage.output_tokens"),
                ):
                    if isinstance(usage.get(key), int):
                        span.set_attribute(attribute, usage[key])
            return outcome

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        return self.inner.check_health(agent, timeout_s=timeout_s)

    def describe(self, agent: AgentInfo, *, timeout_s: float) -> list[str]:
        return self.inner.describe(agent, timeout_s=timeout_s)

    def close(self) -> None:
        self.inner.close()


def trace_transports(transports: dict[str, Any]) -> None:
    """Make every agent transport's calls ``invoke_agent`` spans (tracing on only)."""
    if active():
        for protocol, transport in list(transports.items()):
            if not isinstance(transport, TracedTransport):
                transports[protocol] = TracedTransport(transport, protocol)
