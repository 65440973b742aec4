"""One connection wakes every coroutine that awaits a run: ``XREAD BLOCK`` over many streams.

Every recorded outcome of a run appends to its ``:order`` stream, and so does
the run's end (the tasks filled in as cancelled or timed out), so "something
happened to run X" is "X's order stream grew". A :class:`RunWatcher` keeps one
background read over the order streams of all awaited runs and sets the
waiting coroutines' events; waiters then look at the run themselves. A
thousand coroutines awaiting a thousand plans hold one blocking connection,
not a thousand (nor a thread each).

A waiter registering while the read is blocked appends to the watcher's own
small wake stream, which is part of every read, so the read starts over with
the new stream at once. Reads are sliced (:data:`WAIT_SLICE_S`), so a missed
signal costs at most a slice, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from taskplane.completions import START, block_ms
from taskplane.plan import WAIT_SLICE_S
from taskplane.redisio import backend_error

#: Entries the wake stream keeps (only its growth matters).
WAKE_MAXLEN = 16
#: Seconds the wake stream outlives its last use.
WAKE_TTL_S = 3600


def stream_id(entry_id: str) -> tuple[int, int]:
    """A stream entry id (``ms-seq``, or ``0``) as a comparable pair."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)
class _Waiter:
    after: str
    latest: str
    event: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None


class RunWatcher:
    """Wakes coroutines when the streams they wait on grow, over one blocking read.

    Args:
        client: A ``redis.asyncio`` client (``decode_responses=True``).
        prefix: Key prefix of the deployment (the wake stream lives under it).
    """

    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self.client = client
        self.wake_key = f"{prefix}:aio-wake:{uuid.uuid4().hex}"
        self._waiters: dict[str, list[_Waiter]] = {}
        self._watching: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def changed(self, key: str, after: str, timeout_s: float) -> str:
        """Wait until stream *key* has an entry newer than *after*, or *timeout_s* passes.

        Returns:
            The newest entry id seen (*after* when nothing came).

        Raises:
            BackendError: The watcher lost Redis.
        """
        waiter = _Waiter(after, after)
        self._waiters.setdefault(key, []).append(waiter)
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._run())
            elif key not in self._watching or stream_id(after) < stream_id(self._watching[key]):
                await self._poke()
            timeout_s = min(max(timeout_s, 0.001), WAIT_SLICE_S)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.event.wait(), timeout_s)
            if (error := waiter.error) is not None:
                raise backend_error("run watcher", f"waiting on {key}", error) from error
            return waiter.latest
        finally:
            self._drop(key, waiter)

    async def close(self) -> None:
        """Stop the background read."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poke(self) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.xadd(self.wake_key, {"w": "1"}, maxlen=WAKE_MAXLEN, approximate=False)
            pipe.expire(self.wake_key, WAKE_TTL_S)
            await pipe.execute()
        except aioredis.RedisError:
            pass  # the read's slice ends soon anyway

    async def _run(self) -> None:
        wake_position = START
        while self._waiters:
            self._watching = {
                key: min((w.after for w in waiters), key=stream_id)
                for key, waiters in self._waiters.items()
            }
            streams: dict[Any, Any] = {self.wake_key: wake_position, **self._watching}
            try:
                reply: Any = await self.client.xread(streams, block=block_ms(WAIT_SLICE_S))
            except aioredis.RedisError as exc:
                self._fail_all(exc)
                return
            for key, entries in reply or []:
                newest = entries[-1][0]
                if key == self.wake_key:
                    wake_position = newest
                else:
                    self._wake(key, newest)
        self._watching = {}

    def _wake(self, key: str, newest: str) -> None:
        keep = []
        for waiter in self._waiters.get(key, []):
            if stream_id(newest) > stream_id(waiter.after):
                waiter.latest = newest
                waiter.event.set()
            else:
                keep.append(waiter)
        if keep:
            self._waiters[key] = keep
        else:
            self._waiters.pop(key, None)

    def _fail_all(self, exc: BaseException) -> None:
        for waiters in self._waiters.values():
            for waiter in waiters:
                waiter.error = exc
                waiter.event.set()
        self._waiters.clear()
        self._watching = {}

    def _drop(self, key: str, waiter: _Waiter) -> None:
        waiters = self._waiters.get(key)
        if waiters and waiter in waiters:
            waiters.remove(waiter)
            if not waiters:
                del self._waiters[key]
