"""Raw Celery baselines, on the same app and worker as taskplane's own tasks.

The benchmark worker runs ``celery -A bench.baseline worker``: taskplane's
app with three bare tasks added, so baseline and taskplane share one worker,
one pool and one Redis.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from taskplane.tasks.app import create_app


def install_noop_tracing() -> None:
    """Trace this process through the SDK, a batch processor and an exporter that drops
    every span: what tracing costs here, without a collector's cost."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class DropSpans(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    trace.set_tracer_provider(provider)


if os.environ.get("BENCH_TRACING") == "noop":  # the tracing benchmark's worker
    install_noop_tracing()


def undo_worker_shims(app: Any, level: str) -> None:
    """Undo taskplane's worker shims down to *level* (the overhead benchmark's references):
    ``unbuffered`` publishes task events one by one; ``backend`` also builds a kombu client
    per broker command; ``off`` also builds a result backend per greenlet (Celery as it
    ships)."""
    import kombu.transport.redis as kombu_redis
    from celery.signals import worker_init

    from taskplane.tasks.shims import BufferTaskEvents

    app.steps["consumer"].discard(BufferTaskEvents)
    if level == "unbuffered":
        return
    create = kombu_redis.Channel._create_client
    kombu_redis.Channel._create_client = getattr(create, "__wrapped__", create)
    if level == "backend":
        return

    def unshare(sender: Any = None, **_: Any) -> None:  # runs after taskplane's own handler
        if getattr(sender, "app", None) is app:
            app.conf.result_backend_thread_safe = False

    worker_init.connect(unshare, weak=False)


app = create_app()
#: "on" (taskplane's worker as it runs), or a level of :func:`undo_worker_shims`
SHIMS = os.environ.get("BENCH_SHIMS", "on")
if SHIMS != "on":
    undo_worker_shims(app, SHIMS)

_client = httpx.Client(timeout=30.0)


@app.task(name="bench.noop", shared=False)
def noop(*_args: Any, **_kwargs: Any) -> None:
    """Do nothing."""
    return None


@app.task(name="bench.noop_quiet", shared=False, send_events=False)
def noop_quiet(*_args: Any, **_kwargs: Any) -> None:
    """Do nothing, sending no task events (with ``task_send_sent_event`` off in the
    client: bare Celery as run without Flower)."""
    return None


@app.task(name="bench.http_get", shared=False)
def http_get(url: str) -> int:
    """GET *url*; return the status."""
    return _client.get(url).status_code


#: The bare agent call's client: a pool as large as a gevent worker's 1000 greenlets.
_agent_client = httpx.Client(
    timeout=30.0, limits=httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
)


@app.task(name="bench.agent_call", shared=False)
def agent_call(endpoint: str, index: int) -> Any:
    """What a bare Celery task calling an HTTP agent does: POST /analyze, return the JSON."""
    return _agent_client.post(f"{endpoint}/analyze", json={"n": index}).json()


@app.task(name="bench.collect", shared=False)
def collect(results: list[Any]) -> int:
    """A chord body: count the header's results."""
    return len(results)
