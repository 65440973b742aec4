"""Traces through the OpenTelemetry API: one trace per plan run, across every hop.

Off unless this process has an SDK tracer provider: the application set one
itself, or :func:`configure` installed one because the standard ``OTEL_*``
environment asks for an exporter (``OTEL_TRACES_EXPORTER``, or an
``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``). Without one, every call site here
returns at once and nothing is wrapped.

Spans (names and attributes after the GenAI and messaging conventions):

=================================  ========  =====================================
span                               kind      where
=================================  ========  =====================================
``invoke_workflow {name}``         INTERNAL  the plan, where it is submitted
``task {type}:{target}``           CONSUMER  one delivery of a task on a worker
``invoke_agent {agent}``           CLIENT    one call to an agent (its transport)
``{METHOD}``                       CLIENT    one request of an ``http`` task
``execute_tool {function}``        INTERNAL  one run of a ``function`` task
=================================  ========  =====================================

The plan span is the parent of every task delivery of its run, however the
message got there: the client's window or chain, the next task of a window
enqueued by a finishing one, a chain carried on by a failed step, a retry, a
redelivery after a worker died, a message resent by a waiting client. Every
taskplane message of a plan carries the plan span's context in its headers
(``traceparent``, and :data:`PLAN_HEADER` in case a Celery instrumentation
rewrites ``traceparent`` with its own publish span), and the run's record
keeps it (``traceparent``) for the enqueues made outside the plan's own tasks
(a nested run finishing its parent's task, a client resending lost
messages). A nested pattern's run is a plan span under the pattern task's
delivery. ``execute_plan`` sent by name starts its plan span under the
context the sender put in the message headers.

Where the plan span ends: a client that waits for the run in the process that
submitted it (``execute_*``, ``PlanHandle.wait``) ends it with the result, so
it covers the whole run. A run nobody waits for there (``execute_plan``, a
nested pattern's run) ends its span once the run is recorded and enqueued
(``taskplane.plan.detached``): its tasks' spans, children of it, show the run.

Events on the task delivery's span: ``taskplane.cache_hit``,
``taskplane.retry``, ``taskplane.circuit_open``, ``taskplane.rate_limited``
(the wait booked), ``taskplane.budget_wait``. The call spans and events are
:mod:`taskplane.observability.call_spans`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from taskplane.models import ExecutionResult, TaskStatus, TaskType, redact_credentials

if TYPE_CHECKING:
    from taskplane.models import ExecutionPlan
    from taskplane.runner import Reschedule

log = logging.getLogger(__name__)

#: Message header carrying the plan span's context (W3C ``traceparent`` format).
PLAN_HEADER = "taskplane_trace"
#: Field of a run's record holding the plan span's context.
META_FIELD = "traceparent"
#: Exporter entry point of each OTLP protocol (``OTEL_EXPORTER_OTLP_PROTOCOL``).
OTLP_EXPORTERS = {"http/protobuf": "otlp_proto_http", "grpc": "otlp_proto_grpc"}

#: Plan contexts of deliveries kept parsed (one per plan running here, in practice).
PARENTS_KEPT = 256

_proxy_tracer = trace.get_tracer("taskplane")
#: The installed provider's tracer, once :func:`active` has seen it (the global
#: provider is set once per process): spans start without the proxy's extra layer.
_tracer: trace.Tracer | None = None


def tracer() -> trace.Tracer:
    """taskplane's tracer: the installed provider's, else a proxy that follows it once set."""
    return _proxy_tracer if _tracer is None else _tracer


_plan_key = otel_context.create_key("taskplane-plan")
_active = False
_configured = False
#: (plan id, traceparent, tracestate) -> a delivery's parent context, parsed once per plan
_parents: dict[tuple[str, str | None, str | None], otel_context.Context] = {}


# -- turning it on ---------------------------------------------------------------------


def active() -> bool:
    """Whether this process records spans (an SDK tracer provider is installed)."""
    global _active, _tracer
    if not _active:
        provider = trace.get_tracer_provider()
        _active = not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)
        if _active:
            _tracer = provider.get_tracer("taskplane")
    return _active


def exporter_names(environ: Mapping[str, str]) -> list[str]:
    """The span exporters the standard ``OTEL_*`` variables ask for (none: tracing stays off)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    wanted = environ.get("OTEL_TRACES_EXPORTER")
    if wanted is None:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        )
        return ["otlp"] if endpoint else []
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    return [] if names == ["none"] else [name for name in names if name != "none"]


def configure(environ: Mapping[str, str], *, service_name: str = "taskplane") -> bool:
    """Install an SDK tracer provider when *environ* asks for traces; whether tracing is on.

    A provider the application installed itself is kept as it is. The SDK
    (``pip install 'taskplane[otel]'``) reads its own variables: the sampler
    (``OTEL_TRACES_SAMPLER``), the batch processor (``OTEL_BSP_*``), the
    resource (``OTEL_SERVICE_NAME``, else *service_name*;
    ``OTEL_RESOURCE_ATTRIBUTES``) and each exporter's settings.
    """
    global _configured
    if active() or _configured:
        return active()
    _configured = True
    names = exporter_names(environ)
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_* asks for traces but the OpenTelemetry SDK is not installed: "
            "pip install 'taskplane[otel]'; tracing stays off"
        )
        return False
    exporters = [e for e in (_exporter(name, environ) for name in names) if e is not None]
    if not exporters:
        return False
    named = environ.get("OTEL_SERVICE_NAME") or "service.name=" in environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(
        resource=Resource.create({} if named else {"service.name": service_name})
    )
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return active()


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get(
            "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
        )
        name = OTLP_EXPORTERS.get(protocol, name)
    found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
    if not found:
        log.warning(
            "OTEL_TRACES_EXPORTER: no span exporter %r is installed (for OTLP over HTTP: "
            "pip install 'taskplane[otel]'); it is left out",
            name,
        )
        return None
    return found[0].load()()


def flush(timeout_ms: int = 5000) -> None:
    """Export the spans this process still holds (worker shutdown)."""
    provider = trace.get_tracer_provider()
    force_flush = getattr(provider, "force_flush", None)
    if active() and force_flush is not None:
        force_flush(timeout_ms)


# -- carrying the plan's context ----------------------------------------------------------


def _context_from(traceparent: str | None, tracestate: str | None = None) -> Any:
    carrier = {"traceparent": traceparent or ""}
    if tracestate:
        carrier["tracestate"] = tracestate
    return propagate.extract(carrier, context=otel_context.Context())


def _span_context(ctx: Any) -> trace.SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def traceparent_of(span_context: trace.SpanContext) -> str | None:
    """*span_context* in W3C ``traceparent`` form (None when it is not valid)."""
    if not span_context.is_valid:
        return None
    flags = int(span_context.trace_flags)
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{flags:02x}"


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id (hex) in a ``traceparent`` value, or None."""
    span_context = _span_context(_context_from(traceparent))
    return f"{span_context.trace_id:032x}" if span_context.is_valid else None


def plan_headers() -> dict[str, str]:
    """Message headers for a task of the plan whose context is current ({} when none is)."""
    if not active():
        return {}
    current = _current_plan()
    if current is None:
        return {}
    traceparent = current[1]
    return {"traceparent": traceparent, PLAN_HEADER: traceparent}


def _current_plan() -> tuple[str, str] | None:
    """(plan id, traceparent) of the plan whose messages this context sends, if any."""
    value = otel_context.get_value(_plan_key)
    return value if isinstance(value, tuple) else None


@contextmanager
def _plan_scope(plan_id: str, traceparent: str) -> Iterator[None]:
    ctx = otel_context.set_value(_plan_key, (plan_id, traceparent))
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def plan_scope(plan_id: str, lookup: Callable[[], str | None]) -> Any:
    """A context in which messages sent for *plan_id* carry its plan span's context.

    The plan of the task running here needs no *lookup*; another one (a
    nested run's parent, a run a client resends messages of) is read with
    *lookup* (the run record's :data:`META_FIELD`), only when tracing is on.
    """
    if not active():
        return nullcontext()
    current = _current_plan()
    if current is not None and current[0] == plan_id:
        return nullcontext()
    traceparent = lookup()
    return _plan_scope(plan_id, traceparent) if traceparent else nullcontext()


@contextmanager
def message_context(request: Any) -> Iterator[None]:
    """Make the context a message's sender put in its headers current (``execute_plan``)."""
    if not active():
        yield
        return
    ctx = _context_from(_header(request, "traceparent"), _header(request, "tracestate"))
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


def _header(request: Any, name: str) -> str | None:
    value = request.get(name) if hasattr(request, "get") else None
    return value if isinstance(value, str) else None


def request_trace_id(request: Any) -> str | None:
    """The trace id a task message's headers carry (its plan's), or None."""
    return trace_id_of(_header(request, PLAN_HEADER) or _header(request, "traceparent"))


# -- the plan span --------------------------------------------------------------------------


class PlanTrace:
    """The span of one plan run in the process that submitted it (inert when tracing is off)."""

    def __init__(self, span: trace.Span | None = None) -> None:
        self.span = span
        self._ended = False

    @property
    def traceparent(self) -> str | None:
        """The plan span's context in ``traceparent`` form, or None."""
        return None if self.span is None else traceparent_of(self.span.get_span_context())

    def scope(self, plan_id: str) -> Any:
        """A context in which the plan's first messages are sent."""
        traceparent = self.traceparent
        return _plan_scope(plan_id, traceparent) if traceparent else nullcontext()

    def attached(self) -> None:
        """The plan id already named a run: this submission attached to it."""
        if self.span is not None:
            self.span.set_attribute("taskplane.plan.attached", True)

    def end(self, state: str | None = None, *, ok: bool = True, detached: bool = False) -> None:
        """End the span (once): the run ended as *state*, or (*detached*) it was only enqueued."""
        if self.span is None or self._ended:
            return
        self._ended = True
        if detached:
            self.span.set_attribute("taskplane.plan.detached", True)
        if state:
            self.span.set_attribute("taskplane.plan.state", state)
        if not ok:
            self.span.set_status(Status(StatusCode.ERROR, state or "failed"))
        self.span.end()

    def end_when_dropped(self, owner: object) -> None:
        """End the span when *owner* (a handle nobody waited on) is garbage collected."""
        if self.span is not None:
            weakref.finalize(owner, self.end)


def start_plan(plan: ExecutionPlan, *, pattern: str | None = None) -> PlanTrace:
    """Start the span of a run of *plan* under the current context."""
    if not active():
        return PlanTrace()
    rule = plan.strategy.value if hasattr(plan, "strategy") else "sequential"
    name = pattern or rule
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": name,
        "taskplane.plan.id": plan.id,
        "taskplane.plan.rule": rule,
        "taskplane.plan.tasks": len(plan.tasks),
    }
    if pattern:
        attributes["taskplane.pattern"] = pattern
    return PlanTrace(tracer().start_span(f"invoke_workflow {name}", attributes=attributes))


# -- a task delivery on a worker ---------------------------------------------------------------


def task_delivery(
    request: Any, plan_id: str, task: Mapping[str, Any], attempt: Mapping[str, Any] | None
) -> AbstractContextManager[None]:
    """The span of one delivery of a task, under its plan's span (the message headers').

    A Celery instrumentation's own span, when one is current, stays the
    parent; the plan's context is what this delivery's own messages carry on.
    Every delivery pays for this span, so it is made the plain way: the
    plan's context is parsed once per plan, and the span is made current
    together with the plan's key in one attach.
    """
    if not active():
        return _NOTHING
    traceparent = _header(request, PLAN_HEADER) or _header(request, "traceparent")
    parent = otel_context.get_current()
    if trace.get_current_span(parent).get_span_context().is_valid:
        if traceparent:
            parent = otel_context.set_value(_plan_key, (plan_id, traceparent), parent)
    else:
        parent = _plan_parent(plan_id, traceparent, _header(request, "tracestate"))
    kind, target = str(task.get("type", "")), str(task.get("target", ""))
    attributes: dict[str, Any] = {
        "messaging.system": "celery",
        "messaging.operation.type": "process",
        "messaging.message.id": str(_header(request, "id") or ""),
        "taskplane.plan.id": plan_id,
        "taskplane.task.id": str(task.get("id", "")),
        "taskplane.task.type": kind,
        "taskplane.task.target": redact_credentials(target),
        "taskplane.task.attempt": int((attempt or {}).get("n") or 1),
    }
    delivery = getattr(request, "delivery_info", None) or {}
    if delivery.get("redelivered"):
        attributes["taskplane.task.redelivered"] = True
    name = f"task {kind}:{target if kind == TaskType.AGENT.value else kind}"
    return _Current(tracer().start_span(name, parent, SpanKind.CONSUMER, attributes), parent)


_NOTHING: AbstractContextManager[None] = nullcontext()


class _Current(AbstractContextManager[None]):
    """*span* current on top of *parent* while the block runs, ended after it.

    An exception leaves the span as it is: a delivery's outcome says how it ended.
    """

    __slots__ = ("parent", "span", "token")

    def __init__(self, span: trace.Span, parent: otel_context.Context) -> None:
        self.span, self.parent = span, parent

    def __enter__(self) -> None:
        self.token = otel_context.attach(trace.set_span_in_context(self.span, self.parent))

    def __exit__(self, *exc_info: object) -> None:
        otel_context.detach(self.token)
        self.span.end()


def _plan_parent(
    plan_id: str, traceparent: str | None, tracestate: str | None
) -> otel_context.Context:
    """A delivery of *plan_id*'s parent context: its plan span's, with the plan's key."""
    key = (plan_id, traceparent, tracestate)
    parent = _parents.get(key)
    if parent is None:
        parent = _context_from(traceparent, tracestate)
        if traceparent:
            parent = otel_context.set_value(_plan_key, (plan_id, traceparent), parent)
        if len(_parents) >= PARENTS_KEPT:
            _parents.clear()
        _parents[key] = parent
    return parent


def delivery_ended(step: ExecutionResult | Reschedule | None) -> None:
    """Say on the current delivery's span how it ended: an envelope, a wait, or nothing run."""
    if not active():
        return
    span = trace.get_current_span()
    if step is None:
        span.set_attribute("taskplane.task.outcome", "replayed")
    elif isinstance(step, ExecutionResult):
        if step.metadata.get("cached"):  # marked only when it was (its cache_hit event too)
            span.set_attributes(
                {"taskplane.task.outcome": step.status.value, "taskplane.task.cached": True}
            )
        else:
            span.set_attribute("taskplane.task.outcome", step.status.value)
        if step.status in (TaskStatus.FAILURE, TaskStatus.TIMEOUT):
            span.set_status(Status(StatusCode.ERROR, (step.error or step.status.value)[:300]))
    else:
        span.set_attribute("taskplane.task.outcome", f"rescheduled:{step.reason}")
        if step.reason == "budget":
            span.add_event("taskplane.budget_wait", {"delay_s": step.delay_s})


# -- calls ---------------------------------------------------------------------------------------


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` to outgoing *headers* (tracing on only)."""
    if active():
        propagate.inject(headers)


def outgoing_headers() -> dict[str, str]:
    """Headers carrying the current span's ``traceparent`` (empty when tracing is off).

    For calls that another thread makes on this one's behalf (the asyncio
    SDKs' loop thread), where this thread's current span is not current.
    """
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def inject_httpx(request: Any) -> None:
    """An httpx request event hook: the request carries the current span's ``traceparent``."""
    if active():
        propagate.inject(request.headers)


def grpc_metadata() -> tuple[tuple[str, str], ...]:
    """gRPC metadata carrying the current span's ``traceparent`` (empty when off)."""
    if not active():
        return ()
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return tuple(carrier.items())
