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

Writes sent behind the caller's back: :class:`WriteBehind`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, cast

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.commands.core import Script
from redis.exceptions import NoScriptError
from redis.retry import Retry

from taskplane.errors import BackendError
from taskplane.throttle import LogThrottle

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


#: Writes a :class:`WriteBehind` holds at most; beyond, the oldest are dropped (and logged).
MAX_QUEUED_WRITES = 100_000
#: Writes sent in one round trip at most.
MAX_WRITE_BATCH = 500
#: How long closing waits for queued writes to go out, in seconds.
WRITE_BEHIND_STOP_TIMEOUT_S = 5.0

Then = Callable[[Any], None]


@dataclass(frozen=True)
class _Write:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]
    then: Then | None


class WriteBehind:
    """Runs scripts whose reply the caller need not wait for, from a background thread.

    The caller's round trip goes away, and writes queued while one batch is
    on its way leave together, in one pipeline, in the order they came. What
    a write announces reaches its *then* callback on the sender thread. A
    process that dies before a write left loses it, so only writes whose
    loss is harmless belong here (settling a reservation to what a call
    used: lost, the reservation stays at its estimate).

    Args:
        client: Where the scripts run.
        name: What the writes are, for the log line when Redis refuses them.
    """

    def __init__(self, client: redis.Redis, *, name: str) -> None:
        self.client = client
        self.name = name
        self._throttle = LogThrottle()
        self._ready = threading.Condition()
        self._queue: deque[_Write] = deque()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def submit(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], then: Then | None = None
    ) -> None:
        """Queue one run of *script*; *then* (if given) receives its reply."""
        with self._ready:
            if self._pid != os.getpid():  # a forked child starts with no sender of its own
                self._pid, self._thread, self._queue = os.getpid(), None, deque()
                self._busy = False
            if len(self._queue) >= MAX_QUEUED_WRITES:
                self._queue.popleft()
                self._failed(1, OverflowError("queue full"))
            self._queue.append(_Write(script, keys, args, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify_all()

    def flush(self, timeout_s: float = WRITE_BEHIND_STOP_TIMEOUT_S) -> bool:
        """Wait until every write queued so far has been sent; False if *timeout_s* passed."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self) -> None:
        """Send what is queued, then stop the sender."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=WRITE_BEHIND_STOP_TIMEOUT_S)

    def _take(self) -> list[_Write]:
        with self._ready:
            self._busy = False
            self._ready.notify_all()
            self._ready.wait_for(lambda: self._queue or self._stopping)
            count = min(len(self._queue), MAX_WRITE_BATCH)
            self._busy = count > 0
            if not count:  # stopping with nothing left: a later write starts a new sender
                self._thread = None
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while batch := self._take():
            self._send(batch)

    def _send(self, batch: list[_Write], *, reload: bool = True) -> None:
        if is_cluster(self.client):  # a cluster pipeline cannot EVALSHA: one call each
            self._send_each(batch)
            return
        # EVALSHA straight into the pipeline: a pipeline given Script objects would first
        # ask SCRIPT EXISTS, a round trip of its own, on every batch
        try:
            pipe = self.client.pipeline(transaction=False)
            for write in batch:
                pipe.evalsha(write.script.sha, len(write.keys), *write.keys, *write.args)
            replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            self._failed(len(batch), exc)
            return
        unknown: list[_Write] = []
        for write, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and reload:
                unknown.append(write)
            elif isinstance(reply, Exception):
                self._failed(1, reply)
            else:
                self._answer(write, reply)
        if unknown:  # Redis restarted or its scripts were flushed: load them and send again
            try:
                for script in {write.script.sha: write.script for write in unknown}.values():
                    self.client.script_load(script.script)
            except (redis.RedisError, OSError) as exc:
                self._failed(len(unknown), exc)
                return
            self._send(unknown, reload=False)

    def _send_each(self, batch: list[_Write]) -> None:
        for write in batch:
            try:
                reply = write.script(keys=write.keys, args=write.args)
            except (redis.RedisError, OSError) as exc:
                self._failed(1, exc)
                continue
            self._answer(write, reply)

    def _answer(self, write: _Write, reply: Any) -> None:
        if write.then is not None:
            try:
                write.then(reply)
            except Exception:  # the caller's callback: its failure must not stop the sender
                log.exception("%s: handling a reply failed", self.name)

    def _failed(self, count: int, exc: BaseException) -> None:
        if self._throttle.due():
            log.warning(
                "%s: dropped %d write(s): %s (repeats logged at debug)", self.name, count, exc
            )
        else:
            log.debug("%s: dropped %d write(s): %s", self.name, count, exc)
