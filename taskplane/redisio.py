"""Shared Redis plumbing: scripts kept as ``.lua`` files beside the code that runs them,
and clients for one Redis or a Redis Cluster.

A Redis Cluster is named by a ``redis+cluster://host:port[,host:port…]`` URL
(any of its nodes; the client finds the rest). Its client is typed as
``redis.Redis`` where taskplane passes it around: it offers the same
commands, and every script taskplane sends keeps its keys in one slot
(:mod:`taskplane.keys`).
"""

from __future__ import annotations

from importlib import resources
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.retry import Retry


def load_script(client: redis.Redis, package: str, name: str) -> Script:
    """Register the Lua script *name* (a file in *package*'s ``lua/`` folder) with *client*."""
    source = resources.files(package).joinpath("lua", name).read_text(encoding="utf-8")
    return client.register_script(source)


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
