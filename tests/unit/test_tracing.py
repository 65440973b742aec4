"""Tracing: turning it on from OTEL_*, the plan's context in messages, spans and events."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskplane.contract import CallContext, Outcome
from taskplane.errors import CircuitOpenError
from taskplane.models import ExecutionResult, ExecutionTask, ParallelExecutionPlan, TaskType
from taskplane.observability import call_spans, tracing
from taskplane.proxy.registry import make_agent_info
from taskplane.proxy.transport import InMemoryTransport


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK provider for this process (installed once), its spans in memory."""
    found = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(found))
    yield found
    found.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    exporter.clear()
    yield exporter


class Request(dict[str, Any]):
    """What a Celery task's request offers: ``get`` of its headers, ``delivery_info``."""

    delivery_info: dict[str, Any] = {}


def plan(plan_id: str = "p1") -> ParallelExecutionPlan:
    task = {"id": "t", "type": "agent", "target": "a1", "payload": {}}
    return ParallelExecutionPlan.model_validate({"id": plan_id, "tasks": [task]})


def ids(span: ReadableSpan) -> tuple[int, int]:
    context = span.get_span_context()
    assert context is not None
    return context.trace_id, context.span_id


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console, otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c"}, []),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
    ],
)
def test_the_standard_environment_decides_the_exporters(
    environ: dict[str, str], names: list[str]
) -> None:
    assert tracing.exporter_names(environ) == names


def test_nothing_is_traced_or_sent_when_tracing_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing, "active", lambda: False)
    trace_ = tracing.start_plan(plan())
    assert trace_.span is None and trace_.traceparent is None
    with trace_.scope("p1"):
        assert tracing.plan_headers() == {}
    assert tracing.grpc_metadata() == ()
    request = httpx.Request("POST", "http://agent/analyze")
    tracing.inject_httpx(request)
    assert "traceparent" not in request.headers
    handler = call_spans.traced_handler(TaskType.AGENT, lambda task, call: Outcome(1))
    assert handler(ExecutionTask(id="t", type="agent", target="a1"), CallContext(1.0)).result == 1


def test_an_installed_provider_is_kept(exporter: InMemorySpanExporter) -> None:
    provider = trace.get_tracer_provider()
    assert tracing.configure({"OTEL_TRACES_EXPORTER": "console"}) is True
    assert trace.get_tracer_provider() is provider


def test_messages_of_a_plan_carry_its_span_and_deliveries_are_its_children(
    spans: InMemorySpanExporter,
) -> None:
    plan_trace = tracing.start_plan(plan())
    with plan_trace.scope("p1"):
        headers = tracing.plan_headers()
    traceparent = plan_trace.traceparent
    assert headers == {"traceparent": traceparent, tracing.PLAN_HEADER: traceparent}
    plan_trace.end("completed")
    plan_trace.end("failed", ok=False)  # once only
    [plan_span] = spans.get_finished_spans()
    assert plan_span.name == "invoke_workflow all"
    assert plan_span.attributes == {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": "all",
        "taskplane.plan.id": "p1",
        "taskplane.plan.rule": "all",
        "taskplane.plan.tasks": 1,
        "taskplane.plan.state": "completed",
    }

    # a worker's delivery of a task: a child of the plan, sending on the plan's context
    request = Request({"id": "celery-1", **headers})
    task = {"id": "t", "type": "agent", "target": "a1"}
    with tracing.task_delivery(request, "p1", task, {"n": 2}):
        sent_on = tracing.plan_headers()
        with tracing.plan_scope("other", lambda: "00-" + "1" * 32 + "-" + "2" * 16 + "-01"):
            other = tracing.plan_headers()
    delivery = spans.get_finished_spans()[-1]
    assert delivery.name == "task agent:a1" and delivery.kind is trace.SpanKind.CONSUMER
    assert delivery.parent is not None
    assert (delivery.parent.trace_id, delivery.parent.span_id) == ids(plan_span)
    assert delivery.attributes is not None and delivery.attributes["taskplane.task.attempt"] == 2
    assert sent_on == headers  # the next task's parent is the plan, not this delivery
    assert other["traceparent"] == "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert tracing.request_trace_id(request) == f"{ids(plan_span)[0]:032x}"


def test_an_agent_call_is_a_client_span_with_usage_and_sends_its_traceparent(
    spans: InMemorySpanExporter,
) -> None:
    seen: dict[str, Any] = {}

    def agent(payload: dict[str, Any], call: CallContext) -> dict[str, Any]:
        seen["metadata"] = dict(tracing.grpc_metadata())
        return {"value": 1, "confidence": 0.9, "usage": {"inputTokens": 5, "outputTokens": 2}}

    transports: dict[str, Any] = {"http": InMemoryTransport({"http://a1.test:8080": agent})}
    call_spans.trace_transports(transports)
    call_spans.trace_transports(transports)  # wrapped once
    info = make_agent_info("a1", "http://a1.test:8080")
    task = ExecutionTask(id="t", type="agent", target="a1")
    outcome = transports["http"].send(info, task, CallContext(1.0), timeout_s=1.0)
    assert outcome.result == 1
    [call] = spans.get_finished_spans()
    assert call.name == "invoke_agent a1" and call.kind is trace.SpanKind.CLIENT
    assert call.attributes is not None
    assert call.attributes["gen_ai.agent.id"] == "a1"
    assert call.attributes["gen_ai.usage.input_tokens"] == 5
    assert call.attributes["gen_ai.usage.output_tokens"] == 2
    assert call.attributes["server.address"] == "a1.test"
    assert call.attributes["server.port"] == 8080
    assert seen["metadata"]["traceparent"].split("-")[2] == f"{ids(call)[1]:016x}"


def test_refusals_retries_and_cache_hits_are_events_of_the_delivery(
    spans: InMemorySpanExporter,
) -> None:
    def refused(task: ExecutionTask, call: CallContext) -> Outcome:
        raise CircuitOpenError("circuit open for agent a1")

    handler = call_spans.traced_handler(TaskType.AGENT, refused)
    task = ExecutionTask(id="t", type="agent", target="a1")
    hooks = call_spans.TracingHooks()
    with tracing.task_delivery(Request(), "p1", task.model_dump(), None):
        with pytest.raises(CircuitOpenError):
            handler(task, CallContext(1.0))
        hooks.on_retrying(task, None, attempt=1, delay_ms=50.0, error="boom")  # type: ignore[arg-type]
    [delivery] = spans.get_finished_spans()
    assert [e.name for e in delivery.events] == ["taskplane.circuit_open", "taskplane.retry"]


def test_function_and_http_tasks_get_spans_of_their_own(spans: InMemorySpanExporter) -> None:
    def echo(task: ExecutionTask, call: CallContext) -> Outcome:
        return Outcome({"status": 201, "headers": {}, "body": None})

    http = ExecutionTask(id="h", type="http", target="http://user:pw@example.test/x",
                         payload={"method": "post"})  # fmt: skip
    call_spans.traced_handler(TaskType.HTTP, echo)(http, CallContext(1.0))
    function = ExecutionTask(id="f", type="function", target="add")
    call_spans.traced_handler(TaskType.FUNCTION, echo)(function, CallContext(1.0))
    request, tool = spans.get_finished_spans()
    assert request.name == "POST" and request.kind is trace.SpanKind.CLIENT
    assert request.attributes is not None
    assert request.attributes["http.response.status_code"] == 201
    assert "pw" not in str(request.attributes["url.full"])
    assert tool.name == "execute_tool add" and tool.kind is trace.SpanKind.INTERNAL


def test_a_failed_function_run_is_recorded_on_its_span_under_the_delivery(
    spans: InMemorySpanExporter,
) -> None:
    def broken(task: ExecutionTask, call: CallContext) -> Outcome:
        raise ValueError("bad input")

    function = ExecutionTask(id="f", type="function", target="parse")
    handler = call_spans.traced_handler(TaskType.FUNCTION, broken)
    with tracing.task_delivery(Request(), "p1", function.model_dump(), None):
        with pytest.raises(ValueError):
            handler(function, CallContext(1.0))
        after = trace.get_current_span()
    tool, delivery = spans.get_finished_spans()
    assert tool.parent is not None and tool.parent.span_id == ids(delivery)[1]
    assert tool.status.status_code is trace.StatusCode.ERROR
    assert tool.status.description == "ValueError: bad input"
    assert [e.name for e in tool.events] == ["exception"]
    assert ids(delivery)[1] == after.get_span_context().span_id  # the delivery is current again
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_deliveries_of_one_plan_share_its_parsed_context(spans: InMemorySpanExporter) -> None:
    plan_trace = tracing.start_plan(plan("p2"))
    with plan_trace.scope("p2"):
        headers = tracing.plan_headers()
    task = {"id": "t", "type": "function", "target": "noop"}
    for attempt in (None, {"n": 2}):
        with tracing.task_delivery(Request({"id": "c", **headers}), "p2", task, attempt):
            assert tracing.plan_headers() == headers
    plan_trace.end("completed")
    first, second, plan_span = spans.get_finished_spans()
    for delivery in (first, second):
        assert delivery.parent is not None and delivery.parent.span_id == ids(plan_span)[1]
    assert tracing._parents[("p2", headers["traceparent"], None)] is not None


def test_a_delivery_says_how_it_ended_and_marks_cached_results_only(
    spans: InMemorySpanExporter,
) -> None:
    task = {"id": "t", "type": "function", "target": "noop"}
    for metadata in ({}, {"cached": True}):
        with tracing.task_delivery(Request(), "p1", task, None):
            tracing.delivery_ended(
                ExecutionResult(task_id="t", status="success", metadata=metadata)
            )
    fresh, cached = (dict(s.attributes or {}) for s in spans.get_finished_spans())
    assert fresh["taskplane.task.outcome"] == "success" and "taskplane.task.cached" not in fresh
    assert cached["taskplane.task.outcome"] == "success" and cached["taskplane.task.cached"] is True
