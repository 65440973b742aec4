"""The worker pool: gevent by default, so one process holds a thousand calls in flight.

Agent calls are I/O: a worker spends nearly all of a call waiting on a socket.
Celery's gevent pool runs each task in a greenlet, so one process holds as
many calls as ``worker_concurrency`` (1000 by default) for about the memory
of a few threads; the threads pool is the fallback (each call is a thread).
docs/architecture.md says why, with the figures.

gevent must patch the standard library before anything else is imported,
which Celery does itself when the command line says ``-P gevent`` (and
``taskplane worker`` does). An app configured for gevent in a process that
was not patched falls back to threads instead of running greenlets on
blocking sockets.
"""

from __future__ import annotations

import sys

_prepared = False

#: Pools a taskplane worker can run.
POOLS = ("gevent", "threads")


def gevent_active() -> bool:
    """Whether gevent has patched this process's sockets."""
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey is not None and monkey.is_module_patched("socket"))


def effective_pool(wanted: str) -> str:
    """The pool a worker of this process can run: *wanted*, or threads when gevent is not in."""
    if wanted == "gevent" and not gevent_active():
        return "threads"
    return wanted


def prepare_process() -> None:
    """Make this process's libraries cooperate with gevent, when gevent is in.

    grpcio has to be told before its first channel (its own threads would
    otherwise block the whole process); kombu's reconnect waits must yield
    (:func:`taskplane.tasks.shims.unblock_kombu_sleep`).
    """
    global _prepared
    if _prepared or not gevent_active():
        return
    import grpc.experimental.gevent as grpc_gevent

    from taskplane.tasks.shims import (
        drain_event_connection_at_once,
        reuse_kombu_clients,
        unblock_kombu_sleep,
    )

    grpc_gevent.init_gevent()
    unblock_kombu_sleep()
    reuse_kombu_clients()
    drain_event_connection_at_once()
    _prepared = True
