"""Traces on real workers: one trace per plan run, whatever hops its tasks make.

The workers run the OpenTelemetry SDK from the standard ``OTEL_*`` variables and
export over OTLP/HTTP to a receiver in this test; this process (the client, and a
"service" sending ``execute_plan`` by name) records its spans in memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskplane import TaskStatus
from taskplane.devtools.redis_server import free_port
from taskplane.observability import tracing
from tests.agents import GrpcAgentServer, HttpAgentServer
from tests.httpserver import HttpTestServer
from tests.integration.conftest import ROOT
from tests.integration.small import SmallCluster, agent_task, small_cluster
from tests.integration.test_proxy_mcp import wait_listening
from tests.otlp import OtlpReceiver, Span
from tests.support import wait_until

pytestmark = pytest.mark.integration

BROKER_DB, STATE_DB = 5, 6


@pytest.fixture(scope="module")
def client_spans() -> Iterator[InMemorySpanExporter]:
    """This process's spans (the SDK provider is installed once per process)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.active()
    yield exporter
    exporter.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as found:
        yield found


@pytest.fixture(scope="module")
def traced(
    redis_url: str, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> Iterator[SmallCluster]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "tp-worker",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # a killed worker's message comes back within about twelve seconds
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "10",
        "TASKPLANE_DEFAULT_TIMEOUT": "2000",
        "TASKPLANE_LOG_FORMAT": "json",
    }
    with small_cluster(
        redis_url,
        broker_db=BROKER_DB,
        state_db=STATE_DB,
        env=env,
        default_timeout=2000,
        visibility_timeout_s=10,
    ) as cluster:
        cluster.add_worker("trace1", slots=8, loglevel="INFO")
        cluster.add_worker("trace2", slots=8, loglevel="INFO")
        yield cluster


def client_span(exporter: InMemorySpanExporter, name: str, plan_id: str) -> ReadableSpan:
    found = [
        s
        for s in exporter.get_finished_spans()
        if s.name == name and (s.attributes or {}).get("taskplane.plan.id") == plan_id
    ]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def deliveries(spans: list[Span], plan_id: str) -> list[Span]:
    return [
        s
        for s in spans
        if s.name.startswith("task ") and s.attributes.get("taskplane.plan.id") == plan_id
    ]


def children(spans: list[Span], parent: str, prefix: str = "") -> list[Span]:
    return [s for s in spans if s.parent_id == parent and s.name.startswith(prefix)]


def traceparent_span(headers: dict[str, Any]) -> str:
    value = {k.lower(): v for k, v in headers.items()}["traceparent"]
    return str(value).split("-")[2]


def test_a_parallel_plan_is_one_trace_down_to_each_agent_call(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-par-{time.time_ns()}"
    with HttpAgentServer("ok") as agent:
        agent.usage = {"inputTokens": 12, "outputTokens": 7}
        traced.engine.register_agent(f"{plan_id}-a", agent.endpoint)
        tasks = [agent_task(f"t{i}", f"{plan_id}-a") for i in range(5)]
        results = traced.engine.execute_parallel(
            {"id": plan_id, "tasks": tasks, "maxConcurrency": 2}
        )
        seen = [traceparent_span(r["headers"]) for r in agent.requests]
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 5
    trace_id, plan_span = hex_ids(client_span(client_spans, "invoke_workflow all", plan_id))

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) == 5)
    # every task delivery is a child of the plan span, not of the sibling that enqueued it
    tasks_seen = deliveries(spans, plan_id)
    assert {s.trace_id for s in tasks_seen} == {trace_id}
    assert {s.parent_id for s in tasks_seen} == {plan_span}
    assert {s.attributes["taskplane.task.id"] for s in tasks_seen} == {f"t{i}" for i in range(5)}
    assert {s.service for s in tasks_seen} == {"tp-worker"}
    spans = receiver.wait_for(lambda got: all(children(got, s.span_id) for s in tasks_seen))
    calls = [c for s in tasks_seen for c in children(spans, s.span_id)]
    assert [c.name for c in calls] == [f"invoke_agent {plan_id}-a"] * 5
    assert {c.kind for c in calls} == {"CLIENT"}
    for call in calls:
        assert call.attributes["gen_ai.operation.name"] == "invoke_agent"
        assert call.attributes["gen_ai.agent.id"] == f"{plan_id}-a"
        assert call.attributes["gen_ai.agent.name"] == f"{plan_id}-a"
        assert call.attributes["gen_ai.usage.input_tokens"] == 12
        assert call.attributes["gen_ai.usage.output_tokens"] == 7
    # the agent saw the traceparent of the call span of its own request
    assert sorted(seen) == sorted(c.span_id for c in calls)
    # the workers' JSON log lines about the plan's tasks carry its trace id
    records = [
        json.loads(line)
        for worker in traced.workers[:2]
        for line in worker.log().splitlines()
        if line.startswith("{")
    ]
    about = [r for r in records if r["plan_id"] == plan_id]
    assert about and {r["trace_id"] for r in about} == {trace_id}


def test_a_sequential_plan_traces_agent_function_and_http_tasks(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-seq-{time.time_ns()}"
    with GrpcAgentServer("ok") as agent, HttpTestServer() as web:
        traced.engine.register_agent(f"{plan_id}-g", agent.endpoint, protocol="grpc")
        tasks = [
            agent_task("ask", f"{plan_id}-g"),
            {"id": "sum", "type": "function", "target": "add", "payload": {"a": 1, "b": 2}},
            {"id": "get", "type": "http", "target": f"{web.url}/echo", "payload": {}},
        ]
        results = traced.engine.execute_sequential({"id": plan_id, "tasks": tasks})
        grpc_seen = [traceparent_span(r.get("metadata", {})) for r in agent.requests]
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 3
    echoed = results[2].result
    trace_id, plan_span = hex_ids(client_span(client_spans, "invoke_workflow sequential", plan_id))

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) == 3)
    by_task = {s.attributes["taskplane.task.id"]: s for s in deliveries(spans, plan_id)}
    assert {s.parent_id for s in by_task.values()} == {plan_span}
    assert {s.trace_id for s in by_task.values()} == {trace_id}
    spans = receiver.wait_for(lambda got: all(children(got, s.span_id) for s in by_task.values()))
    [call] = children(spans, by_task["ask"].span_id)
    [tool] = children(spans, by_task["sum"].span_id)
    [request] = children(spans, by_task["get"].span_id)
    assert call.name == f"invoke_agent {plan_id}-g" and call.kind == "CLIENT"
    assert tool.name == "execute_tool add" and tool.attributes["gen_ai.tool.name"] == "add"
    assert request.name == "GET" and request.kind == "CLIENT"
    assert grpc_seen == [call.span_id]  # the gRPC agent got traceparent in its metadata
    sent = {k.lower(): v for k, v in echoed["body"]["headers"].items()}
    assert sent["traceparent"].split("-")[2] == request.span_id


@pytest.fixture(scope="module")
def traced_sdk_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The example A2A agent and MCP server, each noting every request's traceparent."""
    started: dict[str, Any] = {}
    procs = []
    try:
        for kind in ("a2a", "mcp"):
            port = free_port()
            notes = tmp_path_factory.mktemp(kind) / "headers.jsonl"
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.traced_agents", kind, str(port), str(notes)],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            wait_listening(port, proc)
            url = f"http://127.0.0.1:{port}" + ("/mcp" if kind == "mcp" else "")
            started[kind] = (url, notes)
        yield started
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def noted_spans(notes: Path) -> list[str | None]:
    """The span ids in the traceparents an SDK agent received (None: a request without one)."""
    lines = notes.read_text(encoding="utf-8").splitlines() if notes.exists() else []
    seen = [json.loads(line)["traceparent"] for line in lines]
    return [value.split("-")[2] if value else None for value in seen]


def test_a2a_and_mcp_agents_receive_the_traceparent_of_their_call_span(
    traced: SmallCluster, receiver: OtlpReceiver, traced_sdk_agents: dict[str, Any]
) -> None:
    plan_id = f"tr-sdk-{time.time_ns()}"
    (a2a_url, a2a_notes), (mcp_url, mcp_notes) = traced_sdk_agents["a2a"], traced_sdk_agents["mcp"]
    traced.engine.register_agent(f"{plan_id}-a2a", a2a_url, protocol="a2a")
    traced.engine.register_agent(
        f"{plan_id}-mcp", mcp_url, protocol="mcp", policy={"tool": "count_words"}
    )
    before = len(noted_spans(a2a_notes)), len(noted_spans(mcp_notes))  # registration's checks
    tasks = [
        agent_task("remote", f"{plan_id}-a2a") | {"payload": {"prompt": "hello"}},
        agent_task("tool", f"{plan_id}-mcp") | {"payload": {"text": "to be or not to be"}},
    ]
    results = traced.engine.execute_parallel({"id": plan_id, "tasks": tasks})
    assert [r.status for r in results] == [TaskStatus.SUCCESS] * 2, [r.error for r in results]

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) == 2)
    by_task = {s.attributes["taskplane.task.id"]: s for s in deliveries(spans, plan_id)}
    spans = receiver.wait_for(lambda got: all(children(got, s.span_id) for s in by_task.values()))
    [a2a_call] = children(spans, by_task["remote"].span_id, "invoke_agent")
    [mcp_call] = children(spans, by_task["tool"].span_id, "invoke_agent")
    # every request of each call (card, message; initialize, list, call) carried its call span
    a2a_seen, mcp_seen = noted_spans(a2a_notes)[before[0] :], noted_spans(mcp_notes)[before[1] :]
    assert a2a_seen and set(a2a_seen) == {a2a_call.span_id}
    assert len(mcp_seen) >= 3 and set(mcp_seen) == {mcp_call.span_id}


def test_a_nested_pattern_run_is_in_its_parent_plans_trace(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-nest-{time.time_ns()}"
    uid = plan_id.rsplit("-", 1)[1]
    with HttpAgentServer("ok") as agent:
        traced.engine.register_agent(f"nest-{uid}", agent.endpoint)
        task = {"id": "p", "type": "pattern", "target": "t-agent-fan", "payload": {"uid": uid},
                "metadata": {"cache": False}}  # fmt: skip
        [result] = traced.engine.execute_parallel({"id": plan_id, "tasks": [task]})
    assert result.status is TaskStatus.SUCCESS
    trace_id, plan_span = hex_ids(client_span(client_spans, "invoke_workflow all", plan_id))
    child_id = f"{plan_id}/p"

    spans = receiver.wait_for(lambda got: len(deliveries(got, child_id)) == 4)
    [pattern_task] = deliveries(spans, plan_id)
    assert pattern_task.parent_id == plan_span
    [child_plan] = children(spans, pattern_task.span_id, "invoke_workflow")
    assert child_plan.name == "invoke_workflow t-agent-fan"
    assert child_plan.attributes["taskplane.plan.id"] == child_id
    assert child_plan.attributes["taskplane.plan.detached"] is True
    nested = deliveries(spans, child_id)
    assert {s.parent_id for s in nested} == {child_plan.span_id}
    assert {s.trace_id for s in [*nested, child_plan, pattern_task]} == {trace_id}
    spans = receiver.wait_for(lambda got: all(children(got, s.span_id) for s in nested))
    assert all(children(spans, s.span_id, "invoke_agent") for s in nested)


def test_execute_plan_by_name_continues_the_senders_trace(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-name-{time.time_ns()}"
    tasks = [
        {"id": f"f{i}", "type": "function", "target": "add", "payload": {"a": i, "b": 1}}
        for i in range(3)
    ]
    service = trace.get_tracer("a-service")
    with service.start_as_current_span("handle-request") as outer:
        headers: dict[str, str] = {}
        propagate.inject(headers)  # as any service propagating its context over Celery would
        sent = traced.engine.app.send_task(
            "taskplane.execute_plan", [{"id": plan_id, "tasks": tasks}], headers=headers
        )
        results = sent.get(timeout=30)
    assert [r["status"] for r in results] == ["success"] * 3
    context = outer.get_span_context()
    trace_id, outer_id = f"{context.trace_id:032x}", f"{context.span_id:016x}"

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) == 3)
    [plan] = [s for s in spans if s.attributes.get("taskplane.plan.id") == plan_id
              and s.name.startswith("invoke_workflow")]  # fmt: skip
    assert plan.parent_id == outer_id and plan.trace_id == trace_id
    assert {s.parent_id for s in deliveries(spans, plan_id)} == {plan.span_id}
    assert {s.trace_id for s in deliveries(spans, plan_id)} == {trace_id}


def test_a_retry_stays_in_the_plans_trace_as_a_second_delivery(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-retry-{time.time_ns()}"
    with HttpAgentServer("ok") as agent:
        agent.first_mode, agent.first_calls = "unavailable", 1
        traced.engine.register_agent(f"{plan_id}-a", agent.endpoint)
        [result] = traced.engine.execute_parallel(
            {"id": plan_id, "tasks": [agent_task("flaky", f"{plan_id}-a")]}
        )
    assert result.status is TaskStatus.SUCCESS and result.retries == 1
    trace_id, plan_span = hex_ids(client_span(client_spans, "invoke_workflow all", plan_id))

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) == 2)
    first, second = sorted(
        deliveries(spans, plan_id), key=lambda s: s.attributes["taskplane.task.attempt"]
    )
    assert {first.parent_id, second.parent_id} == {plan_span}
    assert {first.trace_id, second.trace_id} == {trace_id}
    assert "taskplane.retry" in first.event_names()
    assert first.attributes["taskplane.task.outcome"] == "rescheduled:retry"
    assert second.attributes["taskplane.task.outcome"] == "success"


def restore_when_visible(cluster: SmallCluster, timeout_s: float = 30.0) -> None:
    """Run the Redis transport's sweep until the killed worker's message is back in the queue.

    The same message comes back, headers and all, flagged ``redelivered``.
    kombu 5.7's synchronous consumer (the gevent pool's) reaches its own sweep
    only when a poll finds nothing, which its one-second BRPOP never lets
    happen, so the test runs the transport's sweep itself.
    """
    broker = redis.Redis.from_url(cluster.env["TASKPLANE_BROKER_URL"])
    deadline = time.monotonic() + timeout_s
    with cluster.engine.app.connection_for_write() as connection:
        qos = connection.default_channel.qos
        while broker.hlen("unacked") and time.monotonic() < deadline:
            qos.restore_visible(num=100, interval=1)
            time.sleep(0.25)
    left = broker.hlen("unacked")
    broker.close()
    assert left == 0, "the killed worker's message never became visible again"


def test_a_task_redelivered_after_its_worker_was_killed_stays_in_the_trace(
    traced: SmallCluster, receiver: OtlpReceiver, client_spans: InMemorySpanExporter
) -> None:
    plan_id = f"tr-kill-{time.time_ns()}"
    victim = traced.add_worker("victim", slots=2)
    for worker in traced.workers[:2]:  # only the victim takes the task first
        worker.stop()
    with HttpAgentServer("slow", delay_ms=1500) as agent:
        traced.engine.register_agent(f"{plan_id}-a", agent.endpoint)
        handle = traced.engine.submit(
            {"id": plan_id, "tasks": [agent_task("long", f"{plan_id}-a")], "timeout": 60000}
        )
        wait_until(lambda: agent.calls > 0, timeout_s=15)
        assert agent.calls == 1
        victim.kill()
        traced.workers.remove(victim)
        traced.add_worker("heir", slots=4)
        restore_when_visible(traced)
        agent.mode = "ok"
        [result] = handle.wait(60)
    assert result.status is TaskStatus.SUCCESS
    trace_id, plan_span = hex_ids(client_span(client_spans, "invoke_workflow all", plan_id))

    spans = receiver.wait_for(lambda got: len(deliveries(got, plan_id)) >= 1)
    [rerun] = deliveries(spans, plan_id)  # the killed worker never exported its own
    assert rerun.service == "tp-worker" and rerun.trace_id == trace_id
    assert rerun.parent_id == plan_span
    assert rerun.attributes.get("taskplane.task.redelivered") is True
