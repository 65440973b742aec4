"""Workarounds for Celery/kombu behaviour that stalls or slows a gevent worker.

The first two are found by a Redis restart under a plan (RELIABILITY.md §1,
``tests/reliability/test_redis_restart.py``, which fails without them), the
next two by profiling a worker draining no-op tasks, the fifth by a gevent
worker on RabbitMQ; all are checked against
Celery 5.7.0, kombu 5.7.0 and gevent 26.9.

**1. kombu's reconnect wait blocks a gevent worker** (:func:`unblock_kombu_sleep`).
``celery -P gevent`` monkey-patches the process, but gevent patches
``time`` only after ``threading``, and while it patches ``threading`` it
scans every live object for locks; the scan touches Celery's lazy
proxies, which import ``celery._state`` → ``celery.utils`` →
``kombu.utils.functional``, and that module binds ``from time import
sleep`` — the real, blocking ``time.sleep`` — before ``time`` is patched.
``kombu.utils.functional.retry_over_time`` (every reconnect wait: the
consumer's, a publish's) then freezes the whole process — every
greenlet, every task in flight — for the whole wait: measured, the tasks a
worker had in flight finished 6.2 s after they would have, at the instant
its consumer reconnected, though Redis had been back for 4 s. The fix
rebinds that one name to the patched ``time.sleep``. Remove it when
``kombu.utils.functional.sleep is time.sleep`` holds in a ``celery -P
gevent`` worker (``test_kombu_sleep_cooperates`` checks).

**2. The consumer reconnects in 2 s, 4 s, 6 s … steps** (:class:`Consumer`).
Celery's consumer waits with kombu's defaults (start 2 s, step 2 s, at most
30 s) and has no setting for them, so after a 2 s Redis restart it took
tasks again only at the third try, 6 s after the connection was lost. The
subclass, installed with the documented ``worker_consumer`` setting, waits
:data:`RECONNECT_START_S`, then :data:`RECONNECT_STEP_S` more each time,
at most :data:`RECONNECT_MAX_S`. Remove it when Celery lets the intervals
be configured.

**3. A gevent worker builds a result backend for every task**
(:func:`share_result_backend_in_workers`). Celery keeps its result backend
in a ``threading.local`` unless ``result_backend_thread_safe`` is set, and
gevent makes that local per greenlet: every task runs in a new greenlet, so
every task built a new Redis backend — a connection pool, a fresh
connection (connect, ``HELLO``, ``CLIENT SETINFO``) and a read of
redis-py's package metadata. Measured on a 32-slot gevent worker draining
1000 bare no-op tasks: 5.5 ms of worker CPU per task, 2.0 ms with the
backend shared, and wall time down alike. A worker's tasks only write
results through it (Celery refuses ``result.get()`` inside a task, and a
worker subscribes to no result channel), and redis-py's connection pool is
safe to share between threads and greenlets, so workers share one backend;
a client process keeps Celery's default, where each thread's waits drain
their own result subscription. Remove it when Celery caches the backend
per process for gevent (celery/celery#7960).

**4. kombu builds a Redis client for every broker command**
(:func:`reuse_kombu_clients`). The Redis transport's channel hands out a new
``redis.Redis`` on its shared connection pool for each ack, fanout publish
and queue operation (``Channel.conn_or_acquire``); building one copies
redis-py's table of response callbacks, ~10 % of a gevent worker's CPU on
no-op tasks. A ``redis.Redis`` on a pool is safe to share (each command
takes a connection from the pool), so the shim keeps one per channel and
pool and builds a new one when the channel's pool changes (a reconnect).
Remove it when kombu reuses its client.

**5. A gevent worker on RabbitMQ takes in ten messages a second**
(:func:`drain_event_connection_at_once`). Celery's loop for green pools
(``celery.worker.loops.synloop``), after each round of broker messages,
reads the event dispatcher's connection for AMQP heartbeats with a 0.1 s
timeout (``_quick_drain``); that connection has nothing to read, so every
round waits the full 0.1 s: measured, 300 no-op tasks took 30.0 s (10 a
second) on a 100-slot gevent worker, 2.2 s on 32 threads. The shim reads it
without waiting (a timeout of 0: what is there is read, heartbeats
included). Remove it when Celery's green loop no longer blocks there.

**6. A gevent worker publishes every task event on its own**
(:class:`BufferTaskEvents`). Celery buffers task events and publishes them
as one ``task.multi`` message per loop turn, but only for workers with an
event loop: its own note says gevent and eventlet "should actually buffer".
A gevent worker published ``task-received``, ``task-started`` and
``task-succeeded`` each as a message of its own (a kombu message built, a
``PUBLISH`` waited on). The consumer step turns Celery's buffering on for a
gevent worker: a task event waits at most :data:`EVENT_FLUSH_S`, or until
Celery's buffer limit is reached, and goes out with the others in one
message, which Celery's event receivers — Flower's included — take apart
in order. A retry is the exception: Flower merges a task's events by their
order of arrival, not by their clocks, so the first attempt's
``task-received`` arriving after the retry's (taken by another worker) put
the task back to 0 retries; the events buffered so far go out before a
retry is published, and ``task-retried`` at once. Remove it when Celery
buffers task events for green pools.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

from celery import Celery, bootsteps
from celery.signals import before_task_publish, worker_init
from celery.worker.consumer import Consumer as CeleryConsumer

#: First pause of the consumer's reconnect loop after a failed try (s).
RECONNECT_START_S = 0.5
#: Added to the pause after each further failed try (s).
RECONNECT_STEP_S = 0.5
#: Longest pause between two tries (s).
RECONNECT_MAX_S = 2.0

#: The consumer class of taskplane's workers (Celery's ``worker_consumer`` setting).
CONSUMER = "taskplane.tasks.shims:Consumer"

#: Longest a gevent worker holds a task event before publishing it with the others (s).
EVENT_FLUSH_S = 0.05

logger = logging.getLogger(__name__)


def unblock_kombu_sleep() -> bool:
    """Make kombu's retry waits yield to other greenlets; True when something was rebound.

    Only acts in a process gevent has patched; elsewhere ``time.sleep`` is
    what kombu holds already.
    """
    import kombu.utils.functional as kombu_functional

    if kombu_functional.sleep is time.sleep:
        return False
    kombu_functional.sleep = time.sleep
    return True


def share_result_backend_in_workers(app: Celery) -> None:
    """Make a worker of *app* share one result backend between its tasks."""
    conf = app.conf

    def share(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", None) is app:
            conf.result_backend_thread_safe = True

    worker_init.connect(share, weak=False)


def reuse_kombu_clients() -> bool:
    """Make kombu's Redis channels reuse one client per connection pool; True when installed."""
    import kombu.transport.redis as kombu_redis

    channel = kombu_redis.Channel
    if getattr(channel._create_client, "reuses_client", False):
        return False
    create = channel._create_client

    @functools.wraps(create)
    def create_client(self: Any, asynchronous: bool = False) -> Any:
        if asynchronous:
            return create(self, asynchronous)
        pool = self.pool
        client = self.__dict__.get("_taskplane_client")
        if client is None or client.connection_pool is not pool:
            client = self.__dict__["_taskplane_client"] = create(self, False)
        return client

    create_client.reuses_client = True  # type: ignore[attr-defined]
    channel._create_client = create_client  # type: ignore[method-assign]
    return True


def drain_event_connection_at_once() -> bool:
    """Make Celery's green loop read the event connection without waiting; True when installed."""
    import celery.worker.loops as loops

    drain = loops._quick_drain
    if getattr(drain, "at_once", False):
        return False

    @functools.wraps(drain)
    def quick_drain(connection: Any, timeout: float = 0.0) -> None:
        drain(connection, timeout=0)

    quick_drain.at_once = True  # type: ignore[attr-defined]
    loops._quick_drain = quick_drain
    return True


class Consumer(CeleryConsumer):
    """Celery's consumer, reconnecting to the broker after shorter pauses."""

    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection
        conn.ensure_connection = functools.partial(
            ensure,
            interval_start=RECONNECT_START_S,
            interval_step=RECONNECT_STEP_S,
            interval_max=RECONNECT_MAX_S,
        )
        try:
            return super().ensure_connected(conn)
        finally:
            del conn.ensure_connection


class BufferTaskEvents(bootsteps.StartStopStep):
    """A consumer step: a gevent worker's task events go out together, at most
    :data:`EVENT_FLUSH_S` late (Celery buffers them only for workers with an event loop)."""

    requires = ("celery.worker.consumer.events:Events",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.flusher: EventFlusher | None = None

    def start(self, c: Any) -> None:
        from taskplane.tasks.pool import gevent_active

        dispatcher = c.event_dispatcher
        if c.hub is not None or dispatcher is None or not gevent_active():
            return
        self.flusher = EventFlusher(dispatcher)
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.on_send_buffered = self.flusher.soon
        before_task_publish.connect(self.flusher.before_retry, weak=False)

    def stop(self, c: Any) -> None:
        # a restart builds a new dispatcher: what this one could not publish is carried
        # over in Celery's offline buffer
        if self.flusher is not None:
            before_task_publish.disconnect(self.flusher.before_retry)
            self.flusher.flush()
            self.flusher = None

    shutdown = stop


class EventFlusher:
    """Publishes a dispatcher's buffered task events :data:`EVENT_FLUSH_S` after the
    first of them was buffered, or at once around a retry."""

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.pending = False

    def soon(self) -> None:
        """Celery buffered a task event."""
        buffered = self.dispatcher._group_buffer.get("task")
        if buffered and buffered[-1].get("type") == "task-retried":
            self.flush()
            return
        if self.pending:
            return
        import gevent

        self.pending = True
        gevent.spawn_later(EVENT_FLUSH_S, self.flush)

    def before_retry(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        """A task is about to be published: before a retry, what its attempt sent goes out."""
        if headers and headers.get("retries"):
            self.flush()

    def flush(self) -> None:
        self.pending = False
        try:
            self.dispatcher.flush()
        except Exception:  # an event lost must never stop the worker's tasks
            logger.warning("could not publish buffered task events", exc_info=True)
