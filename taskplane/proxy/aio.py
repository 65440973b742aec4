"""Run asyncio-based SDK code (``mcp``, ``a2a-sdk``) from taskplane's synchronous transports.

A transport's ``send`` is synchronous and is called from a worker thread, or
from a greenlet when the worker runs a gevent pool. The official MCP and A2A
SDKs are asyncio. :class:`LoopThread` keeps **one** event loop per process in
one real OS thread and runs coroutines there; callers block only themselves:

* a plain thread waits on the ``concurrent.futures.Future``;
* a greenlet (``threading`` monkey-patched by gevent) waits on a gevent event
  woken from the loop thread through the hub's thread-safe ``async_`` watcher,
  so the rest of the hub's greenlets keep running.

The loop thread is started with the interpreter's original
``_thread.start_new_thread`` (a real thread even under monkey-patching) and
its loop uses the original selector. It starts on first use, so a process
that never calls such an agent has no extra thread, and it is rebuilt after
a fork (a child does not inherit running threads).

Why one shared loop rather than ``asyncio.run`` per call: both cost about the
same per call (see the README's figures), but a shared loop lets calls share
one pooled async HTTP client and needs no OS thread per call under gevent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from taskplane.errors import TaskTimeoutError

T = TypeVar("T")

log = logging.getLogger(__name__)

#: How long a caller waits beyond a coroutine's own deadline before giving up (s).
WAIT_GRACE_S = 2.0
#: How long closing waits for the loop thread to stop (s).
STOP_TIMEOUT_S = 5.0


def _original(module: str, name: str) -> Any:
    """*module.name* as it was before gevent monkey-patched it (the same object when it did not)."""
    if "gevent.monkey" in sys.modules:
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(__import__(module), name)


def _raw_lock() -> Any:
    """A lock of the interpreter itself (not gevent's), safe between real OS threads."""
    return _original("_thread", "allocate_lock")()


def gevent_patched() -> bool:
    """True when gevent has monkey-patched ``threading`` in this process."""
    if "gevent.monkey" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("threading"))


def _wait_greenlet(future: concurrent.futures.Future[Any], timeout_s: float) -> None:
    """Wait for *future* (completed in another OS thread) without blocking the gevent hub."""
    import gevent
    import gevent.event

    done = gevent.event.Event()
    watcher = gevent.get_hub().loop.async_()
    watcher.start(done.set)
    lock = _raw_lock()
    open_ = [True]

    def wake(_: object) -> None:
        with lock:
            if open_[0]:
                watcher.send()

    future.add_done_callback(wake)
    try:
        done.wait(timeout_s)
    finally:
        with lock:
            open_[0] = False
        watcher.close()


class LoopThread:
    """One asyncio event loop in one real OS thread, shared by a process's async transports."""

    def __init__(self) -> None:
        self._lock = _raw_lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0
        self._stopped: Any = None
        self._closers: list[Callable[[], Coroutine[Any, Any, Any]]] = []

    def _start(self) -> asyncio.AbstractEventLoop:
        selector = _original("selectors", "DefaultSelector")()
        loop = asyncio.SelectorEventLoop(selector)
        # Raw locks as one-shot events: held until the loop thread releases them.
        started, stopped = _raw_lock(), _raw_lock()
        started.acquire()
        stopped.acquire()

        def run() -> None:
            asyncio.set_event_loop(loop)
            started.release()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()
                stopped.release()

        _original("_thread", "start_new_thread")(run, ())
        started.acquire()
        self._stopped = stopped
        return loop

    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first use (and again in a forked child)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = self._start(), os.getpid()
            return self._loop

    def at_close(self, closer: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run ``closer()`` on the loop when it closes (to release what lives on it: pools)."""
        with self._lock:
            self._closers.append(closer)

    @property
    def running(self) -> bool:
        """True when this process's loop thread is up."""
        return self._loop is not None and self._pid == os.getpid() and not self._loop.is_closed()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule *coro* on the loop; the future completes in the loop thread."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop())

    @staticmethod
    def wait(future: concurrent.futures.Future[Any], timeout_s: float) -> bool:
        """Wait up to *timeout_s* for *future* without blocking other greenlets; True if done."""
        if gevent_patched():
            _wait_greenlet(future, timeout_s)
        else:
            concurrent.futures.wait([future], timeout=timeout_s)
        return future.done()

    def run(self, coro: Coroutine[Any, Any, T], *, timeout_s: float) -> T:
        """Run *coro* on the loop and return its result; waits at most *timeout_s* + a grace.

        The coroutine should bound itself by *timeout_s*; the grace only covers
        a loop too busy to notice. On giving up the coroutine is cancelled.

        Raises:
            TaskTimeoutError: The coroutine did not finish in time.
            BaseException: Whatever the coroutine raised.
        """
        future = self.submit(coro)
        if not self.wait(future, max(timeout_s, 0.0) + WAIT_GRACE_S):
            future.cancel()
            raise TaskTimeoutError(f"no answer within {timeout_s:g} s")
        return future.result()

    def close(self) -> None:
        """Run the closers, then stop the loop and its thread (a later :meth:`run` starts anew)."""
        with self._lock:
            closers, self._closers = self._closers, []
        if self.running:
            for closer in closers:
                try:
                    self.run(closer(), timeout_s=STOP_TIMEOUT_S)
                except Exception as exc:  # closing goes on: the loop stops next anyway
                    log.debug("a closer on the shared event loop failed: %r", exc)
        with self._lock:
            loop, self._loop = self._loop, None
            stopped = self._stopped
        if loop is not None and self._pid == os.getpid() and not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            stopped.acquire(timeout=STOP_TIMEOUT_S)
