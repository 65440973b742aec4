"""Shared Redis I/O: clients, the translation of Redis errors, and Lua scripts.

Clients: for one Redis or a Redis Cluster. A Redis Cluster is named by a
``redis+cluster://host:port[,host:port…]`` URL (any of its nodes; the client
finds the rest). Its client is typed as ``redis.Redis`` where taskplane passes
it around: it offers the same commands, and every script taskplane sends keeps
its keys in one slot (:mod:`taskplane.keys`).

Errors: a Redis error becomes a :class:`~taskplane.errors.BackendError` where it
enters, through :func:`translated` (or :func:`backend_error` for an error that
arrives as a value); the message reads ``"{component}: {operation} failed:
{cause}"``.

Scripts: ``.lua`` files in a package's ``lua/`` folder (shipped as package
data), each opening with a comment that names its KEYS and ARGV, read through
``importlib.resources`` and registered on a client by :func:`load_script`. A
helper several scripts share is a file of its own, pulled in by a
``--#include`` line (:func:`script_source`).

taskplane's own clients (:func:`redis_client`): timeouts, pool bounds and how
they ride through an outage. Writes sent behind the caller's back are
:mod:`taskplane.write_behind`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, cast

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from taskplane.errors import BackendError

log = logging.getLogger(__name__)


#: What a Redis client raises when Redis did not do what it was asked: the connection
#: was refused or lost, a reply timed out, the server refused a command or a script
#: failed. redis-py draws these as one tree under ``RedisError`` (``redis.asyncio``
#: raises the same classes), so this one entry is the whole map to BackendError.
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError,)


def backend_error(component: str, operation: str, cause: BaseException) -> BackendError:
    """The :class:`BackendError` saying that *component* failed at *operation* because of *cause*.

    For an error that arrives as a value (handed over by a background reader);
    raise it ``from`` *cause*.
    """
    return BackendError(f"{component}: {operation} failed: {cause}")


@contextlib.contextmanager
def translated(
    component: str, operation: str, *, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Raise a Redis error from the block as a :class:`BackendError`, chained to it.

    Works around ``await`` too: ``with translated("event stream", "reading"): await …``.

    Args:
        component: What talks to Redis, e.g. ``"agent registry"`` or
            ``"calls in flight to a1"``.
        operation: What it was doing, e.g. ``"reading agent a1"``.
        also: More exception types that mean a lost Redis at this site (e.g. the
            ``TimeoutError`` of ``asyncio.wait_for``).

    Raises:
        BackendError: ``"{component}: {operation} failed: {cause}"``.
    """
    try:
        yield
    except (*REDIS_ERRORS, *also) as exc:
        raise backend_error(component, operation, exc) from exc


#: Folder of a package that holds its Lua scripts.
LUA_FOLDER = "lua"
#: A line ``--#include name.lua`` in a script stands for that file of the same folder.
_INCLUDE = re.compile(r"^--#include[ \t]+(\S+)[ \t]*$", re.MULTILINE)


@functools.cache
def script_source(package: str, name: str) -> str:
    """The text of the Lua script *name* in *package*'s ``lua/`` folder, includes expanded.

    Include step: each line ``--#include shared.lua`` is replaced by the text of
    ``shared.lua`` from the same folder (itself expanded the same way), so
    helpers several scripts share are written once. Redis sees one script;
    line numbers in its error messages count the included lines.

    Raises:
        FileNotFoundError: There is no such file.
        ValueError: The includes form a cycle.
    """
    return _expand(package, name, ())


def _expand(package: str, name: str, chain: tuple[str, ...]) -> str:
    if name in chain:
        raise ValueError(f"Lua include cycle in {package}: {' -> '.join((*chain, name))}")
    folder = resources.files(package).joinpath(LUA_FOLDER)
    source = folder.joinpath(name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: _expand(package, m.group(1), (*chain, name)), source)


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """Register the Lua script *name* of *package* (see :func:`script_source`) with *client*."""
    return client.register_script(script_source(package, name))


def script_during(
    client: redis.Redis,
    script: Script,
    keys: Sequence[str],
    args: Sequence[Any],
    during: Callable[[], None],
) -> Any:
    """Run *script* with *during* in its round trip: the call goes out, *during* runs, then
    the reply is read — one wait fewer than the two one after the other.

    For a single Redis only (not a cluster client). A Redis that does not hold the
    script yet (``NOSCRIPT``, after a restart) runs it again through *script*, after
    *during*. When *during* raises, the reply is read all the same (the connection
    goes back to the pool clean) and *during*'s exception propagates. The call is
    made once, without the client's retries: a caller that rides through an outage
    tells by whether *during* ran if a lost connection came before it or after.

    Raises:
        redis.RedisError: The call failed (a lost connection, a script error).
    """
    pool = client.connection_pool
    conn = _pooled_connection(pool)  # connects: a refused connection raises before *during*
    try:
        conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
        try:
            during()
        finally:
            try:
                reply = conn.read_response()
            except NoScriptError:
                reply = script(keys=keys, args=args)
    except (redis.ConnectionError, redis.TimeoutError):
        conn.disconnect()  # a reply may still be on its way: never reuse this connection
        raise
    finally:
        pool.release(conn)
    return reply


def _pooled_connection(pool: Any) -> Any:
    """A connection of *pool*: redis-py before 5.3 wants the command's name, later ones
    warn when given it."""
    try:
        return pool.get_connection()
    except TypeError:
        return pool.get_connection("EVALSHA")


#: URL scheme of a Redis Cluster: ``redis+cluster://[user:password@]host:port[,host:port…]``.
CLUSTER_SCHEME = "redis+cluster"


def is_cluster_url(url: str) -> bool:
    """Whether *url* names a Redis Cluster (``redis+cluster://``)."""
    return url.partition("://")[0].lower() == CLUSTER_SCHEME


def cluster_nodes(url: str) -> tuple[str, list[tuple[str, int]]]:
    """The credentials part (``user:password@`` or '') and the startup nodes of a cluster URL.

    Raises:
        ValueError: *url* is not ``redis+cluster://host:port[,host:port…]`` (a port on
            every node, no database other than 0).
    """
    scheme, _, rest = url.partition("://")
    if scheme.lower() != CLUSTER_SCHEME:
        raise ValueError(f"not a {CLUSTER_SCHEME}:// URL")
    rest, _, query = rest.partition("?")
    rest, _, path = rest.partition("/")
    if path not in ("", "0") or query:
        raise ValueError("a cluster has database 0 only and takes no options")
    auth, _, hosts = rest.rpartition("@")
    nodes = []
    for node in hosts.split(","):
        host, _, port = node.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"node {node.strip()!r} is not host:port")
        nodes.append((host.strip("[]"), int(port)))
    return (auth + "@" if auth else ""), nodes


def cluster_client(url: str, *, retry: Retry, max_connections: int | None, **options: Any) -> Any:
    """A :class:`redis.cluster.RedisCluster` for a ``redis+cluster://`` URL.

    *retry* is the cluster client's (it also refreshes the slot map after a
    failover); *max_connections* bounds each node's pool, a caller past the
    bound waiting for a free connection; *options* go to every node's connections.
    """
    auth, nodes = cluster_nodes(url)
    (host, port), others = nodes[0], nodes[1:]
    pool: dict[str, Any] = {}
    if max_connections is not None:
        pool = {
            "connection_pool_class": redis.BlockingConnectionPool,
            "max_connections": max_connections,
            "timeout": options.get("socket_timeout"),
        }
    return RedisCluster(
        url=f"redis://{auth}{host}:{port}",
        startup_nodes=[ClusterNode(h, p) for h, p in others],
        retry=retry,
        **pool,
        **options,
    )


def clone_client(client: redis.Redis, **overrides: Any) -> redis.Redis:
    """A client of its own to the same Redis (or cluster), e.g. for blocking reads."""
    if isinstance(client, RedisCluster):
        kwargs = {**client.nodes_manager.connection_kwargs, **overrides}
        for name in ("redis_connect_func", "retry", "host", "port", "cache", "timeout"):
            kwargs.pop(name, None)
        kwargs.pop("connection_pool_class", None)
        kwargs["max_connections"] = 2  # per node
        nodes = [ClusterNode(n.host, n.port) for n in client.get_primaries()]
        return cast(redis.Redis, RedisCluster(startup_nodes=nodes, retry=client.retry, **kwargs))
    pool = client.connection_pool
    kwargs = {**pool.connection_kwargs, **overrides}
    own = redis.ConnectionPool(connection_class=pool.connection_class, max_connections=2, **kwargs)
    return redis.Redis(connection_pool=own)


def is_cluster(client: object) -> bool:
    """Whether *client* talks to a Redis Cluster."""
    return isinstance(client, RedisCluster)


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
