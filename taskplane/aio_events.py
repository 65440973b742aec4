"""Events for asyncio programs: the cluster's event stream read through ``redis.asyncio``.

An :class:`AsyncEventStream` reads the event stream (``XREAD BLOCK``) from
the newest event at the moment ``async with`` entered (or from ``since``,
an event's ``id``), so nothing published afterwards is missed. A dropped
connection is retried and the read resumes from the last event delivered:
no gaps and no repeats while the missed events are still in the stream
(its last ``events_stream_maxlen``). Each event carries its stream id as
``"id"``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from taskplane.events.bus import Event, check_event_id
from taskplane.events.redis_bus import (
    FIRST_ID,
    READ_COUNT,
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    SUBSCRIBE_TIMEOUT_S,
    stream_event,
)
from taskplane.redisio import translated
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: A handler of :meth:`AsyncExecutionEngine.on`: a function or a coroutine function.
AsyncEventHandler = Callable[[Event], Awaitable[None] | None]
#: Longest single blocking read of the stream, in milliseconds (then it reads again).
BLOCK_MS = 5000


class AsyncEventStream:
    """An async iterator over the events of some types (all when *event_types* is empty).

    Args:
        client: A ``redis.asyncio`` client with ``decode_responses=True``.
        stream: The event stream (``{prefix}:{events}:stream``).
        event_types: Types to deliver; empty delivers every event.
        since: An event's ``id``: start right after it (None: at the next event).

    Raises:
        ValueError: *since* is not an event id.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        stream: str,
        event_types: tuple[str, ...],
        *,
        since: str | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.event_types = frozenset(event_types)
        #: The id of the last event read (delivered or filtered out).
        self.after = None if since is None else check_event_id(since)
        self._buffer: deque[Event] = deque()
        self._open = False
        self._throttle = LogThrottle()

    async def __aenter__(self) -> AsyncEventStream:
        if self.after is None:
            # asyncio.wait_for's TimeoutError is an OSError
            with translated("event stream", "reading the newest event id", also=(OSError,)):
                newest = await asyncio.wait_for(
                    self.client.xrevrange(self.stream, max="+", min="-", count=1),
                    SUBSCRIBE_TIMEOUT_S,
                )
            self.after = str(newest[0][0]) if newest else FIRST_ID
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop reading (the connection goes back to the client's pool)."""
        self._open = False
        self._buffer.clear()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        if not self._open:
            raise StopAsyncIteration
        while True:
            while self._buffer:
                event = self._buffer.popleft()
                if not self.event_types or event["type"] in self.event_types:
                    return event
            await self._read()
            if not self._open:
                raise StopAsyncIteration

    async def _read(self) -> None:
        """Read the next entries after the last one, retrying a lost connection."""
        backoff_s = RECONNECT_MIN_S
        while self._open:
            try:
                replies: Any = await self.client.xread(
                    {self.stream: str(self.after)}, count=READ_COUNT, block=BLOCK_MS
                )
            except (aioredis.RedisError, OSError) as exc:
                if self._throttle.due():
                    log.warning("event stream lost Redis (%s); resuming after a reconnect", exc)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, RECONNECT_MAX_S)
                continue
            if isinstance(replies, dict):  # RESP3 answers with a map
                replies = list(replies.items())
            for _stream, entries in replies or []:
                for entry_id, fields in entries:
                    self.after = str(entry_id)
                    event = stream_event(entry_id, fields)
                    if event is not None:
                        self._buffer.append(event)
            return


class AsyncSubscription:
    """A handler fed from an :class:`AsyncEventStream` by a task of the event loop."""

    def __init__(self, stream: AsyncEventStream, handler: AsyncEventHandler) -> None:
        self.stream = stream
        self.handler = handler
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, stream: AsyncEventStream, handler: AsyncEventHandler) -> AsyncSubscription:
        """Open the stream, then feed *handler* in the background; returns once open."""
        subscription = cls(stream, handler)
        await stream.__aenter__()
        subscription._task = asyncio.create_task(subscription._feed())
        return subscription

    async def _feed(self) -> None:
        async for event in self.stream:
            try:
                outcome = self.handler(event)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # a handler's failure must not stop the subscription
                log.exception("event handler %r failed on %s", self.handler, event.get("type"))

    async def close(self) -> None:
        """Stop delivering."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.stream.aclose()
