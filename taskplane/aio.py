"""AsyncExecutionEngine: taskplane for asyncio programs.

A separate class rather than ``async`` methods on :class:`ExecutionEngine`:
an asyncio Redis client belongs to the event loop that made its connections,
and one object offering both ``wait()`` and ``await wait()`` invites calling
the blocking one from a coroutine. The async engine *composes* a sync engine
instead of copying it: validation, submission, the cache check of a lone task
and the final collection of an ended run are the sync engine's own code.

What is async, and what is not:

* Waiting (``wait``, ``as_completed``) is one ``XREAD BLOCK`` on
  ``redis.asyncio`` over the ``:order`` streams of every awaited run
  (:class:`~taskplane.aio_watch.RunWatcher`): no thread waits, and all the
  coroutines awaiting runs share one blocking connection. Each event
  subscription holds one connection while it waits for the next event.
* Enqueueing (Celery's ``apply_async``) is synchronous and quick: it runs once
  per submit in the loop's default executor (``asyncio.to_thread``), as do the
  short steps that may touch the broker — ending a run whose deadline passed,
  ``cancel()``, resending lost messages — and reading an ended run's results.

Cancelling a coroutine that awaits a handle leaves the plan running; only
``await handle.cancel()`` cancels it. Use one engine per event loop; any
number of coroutines of that loop may use it at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import redis.asyncio as aioredis

from taskplane.aio_events import AsyncEventHandler, AsyncEventStream, AsyncSubscription
from taskplane.aio_watch import RunWatcher
from taskplane.completions import START, CompletionReader, PlanWatch, Step, StepKind, unknown_plan
from taskplane.config import Settings
from taskplane.engine import ExecutionEngine
from taskplane.errors import ConfigurationError, PlanFailedError
from taskplane.handle import PlanHandle, empty_status
from taskplane.models import (
    ExecutionPlan,
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    SequentialExecutionPlan,
    parse_plan,
)
from taskplane.plan import WAIT_SLICE_S, RunRecord
from taskplane.redisio import translated

#: Socket timeout of the asyncio client, in seconds: longer than a blocking wait's slice.
SOCKET_TIMEOUT_S = WAIT_SLICE_S + 10.0
#: Connections the asyncio client opens at most for short commands and the one blocking
#: read all waits share; beyond, coroutines wait their turn (event subscriptions have their own).
MAX_CONNECTIONS = 32


class AsyncPlanHandle:
    """A submitted plan run, awaited: ``.id``, ``wait``, ``as_completed``, ``status``, ``cancel``.

    Made by :meth:`AsyncExecutionEngine.submit`.
    """

    def __init__(self, engine: AsyncExecutionEngine, handle: PlanHandle) -> None:
        self.id = handle.id
        self._engine = engine
        self._sync = handle

    @property
    def _empty(self) -> bool:
        return self._sync.empty

    async def wait(self, timeout: float | None = None) -> list[ExecutionResult]:
        """Await the plan's end and return what its strategy returns.

        Args:
            timeout: Seconds to wait at most; None waits until the plan's own deadline.

        Raises:
            PlanFailedError: The plan failed, timed out or was cancelled.
            WaitTimeoutError: *timeout* passed first (the plan keeps running).
        """
        if self._empty:
            return []
        record, watch = await self._watch(timeout)
        order = self._engine.engine.store.key(self.id, "order")
        seen = START  # every end of a run lists outcomes on its order stream
        current: RunRecord | None = record
        while not await self._follow(watch, step := watch.step(current)):
            seen = await self._engine.watcher.changed(order, seen, step.block_s)
            current = await self._record()
        return await asyncio.to_thread(
            self._engine.engine.waiter.outcome, self.id, self._sync.trace, (step, current)
        )

    async def as_completed(self, timeout: float | None = None) -> AsyncIterator[ExecutionResult]:
        """Each task's envelope as its outcome is recorded, in completion order.

        The asyncio twin of :meth:`PlanHandle.as_completed`: every task once,
        unfinished ones last as ``cancelled``/``timeout``; a failing plan does
        not raise here.

        Raises:
            WaitTimeoutError: *timeout* passed first (the plan keeps running).
            PlanFailedError: No such run.
        """
        if self._empty:
            return
        engine = self._engine.engine
        record, watch = await self._watch(timeout)
        total = record.total
        reader = CompletionReader(engine.store, self.id)
        client = self._engine.redis
        current: RunRecord | None = record
        while len(reader.seen) < total:
            if await self._follow(watch, step := watch.step(current)):
                report = await asyncio.to_thread(engine.waiter.collect, self.id)
                self._sync.trace.end(report.state, ok=report.ok)
                for result in await reader.read_async(client, 0):
                    yield result
                everything = await asyncio.to_thread(engine.store.results, self.id, total)
                for result in reader.rest(everything):
                    yield result
                return
            fresh = await reader.read_async(client, 0)
            if not fresh:
                await self._engine.watcher.changed(reader.order_key, reader.position, step.block_s)
                fresh = await reader.read_async(client, 0)
            for result in fresh:
                yield result
            current = await self._record()

    async def status(self) -> dict[str, Any]:
        """``{id, state, total, pending, running, done}`` ({} for an unknown run)."""
        if self._empty:
            return empty_status(self.id)
        record = await self._record()
        return {} if record is None else record.status()

    async def cancel(self) -> None:
        """Cancel the run: unfinished tasks come back ``cancelled`` and call nothing more."""
        if not self._empty:
            await asyncio.to_thread(self._engine.engine.waiter.cancel, self.id)

    async def _watch(self, timeout: float | None) -> tuple[RunRecord, PlanWatch]:
        record = await self._record()
        if record is None:
            raise unknown_plan(self.id)
        return record, self._engine.engine.waiter.watch_record(record, timeout)

    async def _follow(self, watch: PlanWatch, step: Step) -> bool:
        """:meth:`PlanWaiter.follow`, on a thread only when it touches the broker."""
        waiter = self._engine.engine.waiter
        if step.recover or step.kind is StepKind.DEADLINE or watch.wants_server_start():
            return await asyncio.to_thread(waiter.follow, self.id, watch, step)
        return waiter.follow(self.id, watch, step)  # no I/O

    async def _record(self) -> RunRecord | None:
        key = self._engine.engine.store.key(self.id, "meta")
        fields: dict[str, str] = await self._redis(self._engine.redis.hgetall(key))
        return RunRecord.parse(self.id, fields)

    async def _redis(self, pending: Awaitable[Any]) -> Any:
        with translated("plan store", f"waiting on plan {self.id}"):
            return await pending


class AsyncExecutionEngine:
    """Run tasks and plans on a taskplane cluster from asyncio code.

    Args:
        settings: Options; read from the environment when omitted.
        engine: The sync engine to build on (its settings win); one is made when omitted
            and closed by :meth:`aclose`.
    """

    def __init__(
        self, settings: Settings | None = None, *, engine: ExecutionEngine | None = None
    ) -> None:
        self._owns_engine = engine is None
        self.engine = engine or ExecutionEngine(settings)
        self.settings = self.engine.settings
        if self.settings.redis_cluster:  # its one blocking read watches streams of many slots
            raise ConfigurationError(
                "TASKPLANE_REDIS_URL: the asyncio engine needs one Redis, not a Redis Cluster; "
                "use ExecutionEngine (its waits run in threads) with a cluster"
            )
        self._redis: aioredis.Redis | None = None
        self._events_redis: aioredis.Redis | None = None
        self._watcher: RunWatcher | None = None
        self._subscriptions: list[AsyncSubscription] = []

    @property
    def redis(self) -> aioredis.Redis:
        """The asyncio Redis client (created on first use, bound to the running loop)."""
        if self._redis is None:
            self._redis = self._client(
                aioredis.BlockingConnectionPool,
                max_connections=MAX_CONNECTIONS,
                timeout=SOCKET_TIMEOUT_S,
            )
        return self._redis

    @property
    def events_redis(self) -> aioredis.Redis:
        """The client event subscriptions use: a connection per blocking read in flight."""
        if self._events_redis is None:
            self._events_redis = self._client(aioredis.ConnectionPool)
        return self._events_redis

    def _client(self, pool_class: Any, **pool_options: Any) -> aioredis.Redis:
        pool = pool_class.from_url(
            self.settings.redis_url,
            decode_responses=True,
            socket_connect_timeout=5,
            socket_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30,
            **pool_options,
        )
        return aioredis.Redis(connection_pool=pool)

    @property
    def watcher(self) -> RunWatcher:
        """The one blocking read that wakes every coroutine awaiting a run."""
        if self._watcher is None:
            self._watcher = RunWatcher(self.redis, prefix=self.settings.key_prefix)
        return self._watcher

    async def submit(self, plan: ExecutionPlan | dict[str, Any]) -> AsyncPlanHandle:
        """Validate and enqueue *plan* (see :meth:`ExecutionEngine.submit`).

        Raises:
            ValidationError: The plan is malformed; nothing was enqueued.
            BackendError: Redis or the broker cannot be reached; nothing was enqueued.
        """
        handle = await asyncio.to_thread(self.engine.submit, plan)
        return AsyncPlanHandle(self, handle)

    async def execute_parallel(
        self, plan: ParallelExecutionPlan | dict[str, Any]
    ) -> list[ExecutionResult]:
        """Run a parallel plan and return its results.

        Raises:
            PlanFailedError: The strategy's goal was not met; ``.results`` has every result.
        """
        return await (await self.submit(parse_plan(plan, "parallel"))).wait()

    async def execute_sequential(
        self, plan: SequentialExecutionPlan | dict[str, Any]
    ) -> list[ExecutionResult]:
        """Run a sequential plan; task n+1 sees task n's result as ``payload.previous``.

        Raises:
            PlanFailedError: A task failed and ``continueOnError`` is false.
        """
        return await (await self.submit(parse_plan(plan, "sequential"))).wait()

    async def execute_task(self, task: ExecutionTask | dict[str, Any]) -> ExecutionResult:
        """Run one task and return its envelope (a failed task does not raise)."""
        started = await asyncio.to_thread(self.engine.start_task, task)
        if isinstance(started, ExecutionResult):
            return started
        try:
            return (await AsyncPlanHandle(self, started).wait())[0]
        except PlanFailedError as exc:
            return exc.results[0]

    async def register_agent(self, agent_id: str, endpoint: str, **options: Any) -> Any:
        """:meth:`ExecutionEngine.register_agent`, off the event loop (it checks health)."""
        return await asyncio.to_thread(self.engine.register_agent, agent_id, endpoint, **options)

    def subscribe(self, *event_types: str, since: str | None = None) -> AsyncEventStream:
        """Events of *event_types* (all when none) from every worker, in stream order.

        ``async with engine.subscribe("task:completed") as events: async for e in events: …``
        Starts at the next event, or right after the event whose ``id`` is
        *since*; see :meth:`ExecutionEngine.on` for what is guaranteed.

        Raises:
            ValueError: *since* is not an event id.
        """
        return AsyncEventStream(
            self.events_redis, self.engine.events.stream, event_types, since=since
        )

    async def on(
        self, event_type: str, handler: AsyncEventHandler, *, since: str | None = None
    ) -> AsyncSubscription:
        """Call *handler(event)* (a function or a coroutine function) for each *event_type* event.

        ``"*"`` means every event; *since* as in :meth:`subscribe`. Returns
        once subscribed; ``await sub.close()`` stops it.
        """
        types = () if event_type == "*" else (event_type,)
        stream = self.subscribe(*types, since=since)
        subscription = await AsyncSubscription.start(stream, handler)
        self._subscriptions.append(subscription)
        return subscription

    async def aclose(self) -> None:
        """Stop subscriptions and close connections (and the sync engine, if made here)."""
        for subscription in self._subscriptions:
            await subscription.close()
        self._subscriptions = []
        if self._watcher is not None:
            await self._watcher.close()
            self._watcher = None
        for client in (self._redis, self._events_redis):
            if client is not None:
                await client.aclose()
                await client.connection_pool.disconnect()
        self._redis = self._events_redis = None
        if self._owns_engine:
            await asyncio.to_thread(self.engine.close)

    async def __aenter__(self) -> AsyncExecutionEngine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
