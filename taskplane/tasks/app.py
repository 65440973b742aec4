"""Building taskplane's Celery app from settings (no app is built on import)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from taskplane.config import DEFAULT_QUEUE, Settings, load_settings
from taskplane.observability import tracing
from taskplane.tasks import register_tasks
from taskplane.tasks.base import TaskplaneTask
from taskplane.tasks.canvas import RUN_TASK
from taskplane.tasks.pool import effective_pool, prepare_process
from taskplane.tasks.redelivery import REDIS_SCHEMES
from taskplane.tasks.shims import CONSUMER, BufferTaskEvents, share_result_backend_in_workers

__all__ = ["DEFAULT_QUEUE", "celery_config", "create_app", "settings_of"]

#: Broker connections beyond one per task slot (consumer, events, control).
BROKER_SPARE_CONNECTIONS = 10
#: Longest a command to a Redis broker may wait for its reply, and a connect for its
#: answer (s): as long as taskplane's own Redis clients wait (``taskplane.redisio``).
BROKER_SOCKET_TIMEOUT_S = 15.0
BROKER_CONNECT_TIMEOUT_S = 5.0


def celery_config(settings: Settings) -> dict[str, Any]:
    """The Celery configuration taskplane needs, from *settings*."""
    visibility = settings.effective_visibility_timeout_s
    transport: dict[str, float] = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": settings.redelivery_sweep_s,
        "unacked_restore_throttle": 1,
        # a worker killed during its sweep must not hold the sweep lock for kombu's 300 s
        "unacked_mutex_expire": max(2 * settings.redelivery_sweep_s, 10),
        # every greenlet acks through this pool: kombu's default of 10 connections fails
        # acks under load ("Couldn't ack … Too many connections"), and an unacked message
        # is delivered again after the visibility timeout
        "max_connections": settings.worker_concurrency + BROKER_SPARE_CONNECTIONS,
    }
    if settings.effective_broker_url.startswith(REDIS_SCHEMES):
        # a broker that goes silent without closing the connection (a network partition):
        # kombu waits forever by default, so an ack or a publish on the dead connection
        # never returns, and a reconnect hangs in the kernel's SYN retries for about two
        # minutes; a worker cut off for a while then took tasks again only ~20 s after
        # the network came back (RELIABILITY.md §10)
        transport["socket_timeout"] = BROKER_SOCKET_TIMEOUT_S
        transport["socket_connect_timeout"] = BROKER_CONNECT_TIMEOUT_S
    config: dict[str, Any] = {
        "broker_url": settings.effective_broker_url,
        "result_backend": settings.result_backend_url,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker_concurrency,
        "task_default_queue": settings.queue,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        # redis-py's default pool fails past 100 connections; size it like the broker's
        "redis_max_connections": settings.worker_concurrency + BROKER_SPARE_CONNECTIONS,
        "result_expires": settings.plan_retention_s,
        "broker_connection_retry_on_startup": True,
        # reconnects to the broker after 0.5 s, 1 s, 1.5 s, 2 s … (Celery: 2 s, 4 s, 6 s …)
        "worker_consumer": CONSUMER,
        "task_track_started": False,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": {
            "taskplane-check-anomalies": {
                "task": "taskplane.check_anomalies",
                "schedule": settings.anomaly_detection.check_interval_ms / 1000.0,
            },
            "taskplane-prune-tracking": {
                "task": "taskplane.prune_tracking",
                "schedule": 3600.0,
            },
        },
    }
    # gevent is chosen on the command line (-P gevent), where Celery patches the process
    # before anything else loads; a process it did not patch runs the threads pool
    if effective_pool(settings.worker_pool) != "gevent":
        config["worker_pool"] = "threads"
    elif settings.effective_broker_url.startswith(("redis://", "rediss://", "unix://")):
        # Celery's prefetch limit stalls intake on the Redis transport: once it is reached
        # the consumer sleeps in a 2 s poll that a finishing task does not wake, and every
        # waiting task's countdown message counts against it. The gevent pool bounds intake
        # itself (a full pool blocks the consumer until a greenlet frees), so a worker still
        # takes at most one message beyond its free slots. RabbitMQ pushes messages: there
        # the prefetch limit stays.
        config["worker_prefetch_multiplier"] = 0
    if settings.rabbitmq_queue_type == "quorum":
        config.update(quorum_queue(settings.queue))
    return config


def quorum_queue(name: str) -> dict[str, Any]:
    """Celery's settings for a RabbitMQ quorum queue *name* (replicated across nodes).

    A quorum queue holds no message back, so every countdown — a retry's
    backoff, a booked rate-limit slot — goes through Celery's native delayed
    delivery, which routes it through RabbitMQ's delay exchanges and needs a
    topic exchange in front of the queue. Celery's workers see the quorum
    queue and give up the global QoS it refuses (``worker_detect_quorum_queues``).
    """
    exchange = Exchange(name, type="topic")
    queue = Queue(name, exchange, routing_key=name, queue_arguments={"x-queue-type": "quorum"})
    return {
        "task_queues": (queue,),
        "task_default_exchange": name,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": name,
    }


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from *settings* (the environment when None), tasks registered."""
    settings = settings or load_settings()
    prepare_process()
    # traces are on when the application installed an OpenTelemetry SDK, or OTEL_* asks for one
    tracing.configure(os.environ)
    app = Celery(
        "taskplane",
        task_cls="taskplane.tasks.guard:GuardedTask",
        amqp="taskplane.observability.celery_view:NamingAMQP",
    )
    app.conf.update(celery_config(settings))
    share_result_backend_in_workers(app)
    app.steps["consumer"].add(BufferTaskEvents)
    register_tasks(app, settings)
    return app


def settings_of(app: Celery) -> Settings:
    """The taskplane settings an app's tasks were registered with (the environment's if none)."""
    task = app.tasks.get(RUN_TASK)
    if isinstance(task, TaskplaneTask):
        return task.settings
    return load_settings()
