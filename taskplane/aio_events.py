"""Events for asyncio programs: the cluster's event channel read through ``redis.asyncio``.

An :class:`AsyncEventStream` is one pub/sub connection; it is subscribed
(the server confirmed it) once ``async with`` has entered, so nothing
published afterwards is missed. Events published while it is not connected
are not replayed (read them with ``ExecutionEngine.events.recent``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from taskplane.errors import BackendError
from taskplane.events.bus import Event
from taskplane.events.redis_bus import SUBSCRIBE_TIMEOUT_S, parse_event

log = logging.getLogger(__name__)

#: A handler of :meth:`AsyncExecutionEngine.on`: a function or a coroutine function.
AsyncEventHandler = Callable[[Event], Awaitable[None] | None]


class AsyncEventStream:
    """An async iterator over the events of some types (all when *event_types* is empty).

    Args:
        client: A ``redis.asyncio`` client with ``decode_responses=True``.
        channel: The event channel (``{prefix}:events``).
        event_types: Types to deliver; empty delivers every event.
    """

    def __init__(self, client: aioredis.Redis, channel: str, event_types: tuple[str, ...]) -> None:
        self.client = client
        self.channel = channel
        self.event_types = frozenset(event_types)
        self._pubsub: Any = None

    async def __aenter__(self) -> AsyncEventStream:
        self._pubsub = self.client.pubsub()
        try:
            await self._pubsub.subscribe(self.channel)
            loop = asyncio.get_running_loop()
            give_up = loop.time() + SUBSCRIBE_TIMEOUT_S
            while loop.time() < give_up:
                message = await self._pubsub.get_message(timeout=give_up - loop.time())
                if message is not None and message["type"] == "subscribe":
                    return self
        except aioredis.RedisError as exc:
            await self.aclose()
            raise BackendError(f"cannot subscribe to events: {exc}") from exc
        await self.aclose()
        raise BackendError(f"events: no subscription confirmed within {SUBSCRIBE_TIMEOUT_S}s")

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Unsubscribe and give the connection back."""
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.aclose()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        if self._pubsub is None:
            raise StopAsyncIteration
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=None
                )
            except aioredis.RedisError as exc:
                raise BackendError(f"lost the event channel: {exc}") from exc
            if message is None or message["type"] != "message":
                continue
            event = parse_event(message["data"])
            if event is not None and (not self.event_types or event["type"] in self.event_types):
                return event


class AsyncSubscription:
    """A handler fed from an :class:`AsyncEventStream` by a task of the event loop."""

    def __init__(self, stream: AsyncEventStream, handler: AsyncEventHandler) -> None:
        self.stream = stream
        self.handler = handler
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, stream: AsyncEventStream, handler: AsyncEventHandler) -> AsyncSubscription:
        """Subscribe, then feed *handler* in the background; returns once subscribed."""
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
        """Stop delivering and unsubscribe."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self.stream.aclose()
