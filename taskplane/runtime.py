"""taskplane's own Redis clients: timeouts, pool bounds and how they ride through an outage.

The parts a process builds on them are put together in :mod:`taskplane.parts`.
"""

from __future__ import annotations

import logging
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from taskplane.redisio import cluster_client, is_cluster_url

log = logging.getLogger(__name__)

#: Longest a Redis command may take; blocking waits are sliced well below it.
SOCKET_TIMEOUT_S = 15.0
#: Timeout of the clients on every agent call's path (breaker, limiter).
FAST_TIMEOUT_S = 1.0
#: How long a command of a non-*fast* client keeps retrying while Redis is unreachable
#: (a restart: stop, start, loading the append-only file), in seconds.
REDIS_OUTAGE_S = 15.0
#: Backoff between those retries: 0.1 s, doubling, at most 1 s.
OUTAGE_BACKOFF_BASE_S = 0.05
OUTAGE_BACKOFF_CAP_S = 1.0


def outage_retry(outage_s: float = REDIS_OUTAGE_S) -> Retry:
    """A redis-py retry policy that rides through *outage_s* seconds of Redis being away.

    Connection errors (refused, closed, ``LOADING`` while Redis reads its
    append-only file) are retried with an exponential backoff (capped at
    :data:`OUTAGE_BACKOFF_CAP_S`) until the backoffs add up to *outage_s*;
    then the error is raised. A timeout is not retried: it already took
    :data:`SOCKET_TIMEOUT_S`. Every script the plan store sends is safe to
    repeat (each state change is guarded by ``HSETNX`` or a lease owned by
    the task), which is what makes retrying them sound.
    """
    backoff = ExponentialBackoff(cap=OUTAGE_BACKOFF_CAP_S, base=OUTAGE_BACKOFF_BASE_S)
    retries, waited = 0, 0.0
    while waited < outage_s:
        retries += 1
        waited += backoff.compute(retries)
    return Retry(backoff, retries, supported_errors=(redis.ConnectionError,))


def redis_client(
    url: str, *, fast: bool = False, max_connections: int | None = None
) -> redis.Redis:
    """A Redis client for taskplane's own keys (strings, not bytes).

    *fast* clients (breakers, limiters: on every agent call) give up within
    about a second and do not retry, so an outage degrades calls quickly.
    The others (plan store, events, cache, the client's waits) retry a lost
    connection for :data:`REDIS_OUTAGE_S` (:func:`outage_retry`): a task in
    flight when Redis restarts pauses until it is back, then records its
    outcome and enqueues its successor, instead of failing and losing its
    broker message (acknowledged as failed, so never delivered again).
    *max_connections* bounds the pool, and a caller past the bound waits for a
    free connection (as long as a command may take) instead of failing: a
    worker passes one per task slot, since redis-py's own default pool (100
    connections, failing past them) is too small for a thousand greenlets.
    A ``redis+cluster://`` *url* makes a Redis Cluster client (its pools bounded per node).
    """
    if fast:
        options: dict[str, Any] = {
            "socket_connect_timeout": FAST_TIMEOUT_S,
            "socket_timeout": FAST_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),
        }
    else:
        options = {
            "socket_connect_timeout": 5,
            "socket_timeout": SOCKET_TIMEOUT_S,
            "health_check_interval": 30,
            "retry": outage_retry(),
        }
    if is_cluster_url(url):  # the cluster client retries, and follows slot moves, itself
        retry = options.pop("retry")
        client = cluster_client(
            url, retry=retry, max_connections=max_connections, decode_responses=True, **options
        )
        return cast(redis.Redis, client)
    if max_connections is None:
        return redis.Redis.from_url(url, decode_responses=True, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=options["socket_timeout"],
        decode_responses=True,
        **options,
    )
    return redis.Redis(connection_pool=pool)
