"""Is a worker ready? What ``taskplane worker-health`` checks for an orchestrator.

A worker is healthy when its broker and its Redis answer and, when a node
name is given, the worker process itself answers a Celery ping through the
broker. Each check is bounded by a timeout; the answer is the list of what
failed (empty when healthy), with URLs shown without passwords.
"""

from __future__ import annotations

from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisClusterException
from redis.retry import Retry

from taskplane.config import Settings
from taskplane.models import redact_credentials
from taskplane.redisio import cluster_client


def worker_problems(
    app: Any, settings: Settings, *, node: str | None = None, timeout_s: float = 5.0
) -> list[str]:
    """What keeps the worker *node* (or any worker of these settings) from being ready."""
    problems: list[str] = []
    try:
        options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
        }
        if settings.redis_cluster:
            client = cluster_client(
                settings.redis_url, retry=Retry(NoBackoff(), 0), max_connections=None, **options
            )
        else:
            client = redis.Redis.from_url(settings.redis_url, **options)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, RedisClusterException) as exc:
        problems.append(f"cannot reach Redis at {redact_credentials(settings.redis_url)}: {exc}")
    broker = redact_credentials(settings.effective_broker_url)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
    except Exception as exc:  # kombu raises the transport's own errors
        problems.append(f"cannot reach the broker at {broker}: {exc}")
        return problems
    if node:
        replies = app.control.ping(destination=[node], timeout=timeout_s)
        if not any(node in reply for reply in replies or []):
            problems.append(f"worker {node} did not answer a ping within {timeout_s:g}s")
    return problems
