"""The A2A transport: send a message to an Agent2Agent (A2A 1.0) agent and follow its task.

Built on the official ``a2a-sdk`` client. The endpoint is the agent's base
URL; its agent card (``/.well-known/agent-card.json``) is read at
registration (its skills become the agent's capabilities) and again by each
worker, cached for :data:`CARD_TTL_S`. The card picks the binding (JSON-RPC
or HTTP+JSON) and says whether the agent streams.

One attempt sends one user message (a text part with the payload's
``prompt``/``task``/``text`` when there is one, and a data part with
``data`` — or with the whole payload when there is no text) and follows the
task the agent opens: over the stream when the card says ``streaming``, else
(and when a stream ends early) by polling ``GetTask`` every
:data:`POLL_MIN_S`…:data:`POLL_MAX_S`. The message's ``contextId`` is the
plan id when there is one, so one plan's tasks share a context.

======================================  ==========================================
A2A task state                          taskplane
======================================  ==========================================
``completed``                           success: the artifacts' parts as the result
                                        (one part → its value; several → a list),
                                        else the agent's final message; a
                                        ``confidence`` in a data part (0..1)
                                        becomes the confidence
``failed``                              failure, retried like a 5xx
                                        (``UpstreamError``)
``rejected``                            failure, not retried (``ClientError``)
``canceled``                            ``cancelled``
``input-required``, ``auth-required``   failure naming the state, not retried: the
                                        attempt ends instead of waiting for a human
a direct ``Message`` reply              success with the message's parts
======================================  ==========================================

Cancelling: ``send`` watches ``CallContext.is_cancelled`` (the plan's cancel
flag) every :data:`CANCEL_CHECK_S` while it follows the task, in the caller's
own thread; when the plan is cancelled — or the attempt runs out of time —
it sends ``CancelTask`` for the remote task before giving up, so the agent
stops working on it.

SDK and HTTP failures are translated in :func:`translate` (one table).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx

from taskplane.aliases import Clock
from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    ClientError,
    ExecutionError,
    InvalidReplyError,
    TaskCancelledError,
    TaskTimeoutError,
    TransportError,
    UpstreamError,
)
from taskplane.httpio import reply_error
from taskplane.models import ExecutionTask
from taskplane.observability import tracing
from taskplane.proxy.aio import LoopThread
from taskplane.proxy.registry import AgentInfo
from taskplane.proxy.transport import AgentTransport, HealthReport, confidence_of

#: Headers every request of the call being made carries (its ``traceparent``),
#: set by the call's coroutine on the loop thread, read by the shared client.
_CALL_HEADERS: ContextVar[dict[str, str] | None] = ContextVar("a2a_call_headers", default=None)


async def _add_call_headers(request: httpx.Request) -> None:
    request.headers.update(_CALL_HEADERS.get() or {})


#: How long a worker trusts an agent card it read (s).
CARD_TTL_S = 300.0
#: Polling interval bounds while following a task without a stream (s).
POLL_MIN_S = 0.1
POLL_MAX_S = 1.0
#: How often the caller looks at the plan's cancel flag while a task runs (s).
CANCEL_CHECK_S = 0.2
#: How long a remote ``CancelTask`` may take before we give up on it (s).
CANCEL_TIMEOUT_S = 5.0
#: How long a cancel waits for the agent to name a task it has not named yet (s).
TASK_ID_WAIT_S = 2.0
#: Bindings we accept, in order of preference when the card offers several.
BINDINGS = ["JSONRPC", "HTTP+JSON"]


def _states() -> dict[int, str]:
    from a2a.types.a2a_pb2 import TaskState

    return {
        TaskState.TASK_STATE_SUBMITTED: "submitted",
        TaskState.TASK_STATE_WORKING: "working",
        TaskState.TASK_STATE_COMPLETED: "completed",
        TaskState.TASK_STATE_FAILED: "failed",
        TaskState.TASK_STATE_CANCELED: "canceled",
        TaskState.TASK_STATE_INPUT_REQUIRED: "input-required",
        TaskState.TASK_STATE_REJECTED: "rejected",
        TaskState.TASK_STATE_AUTH_REQUIRED: "auth-required",
    }


#: States after which the attempt ends.
FINAL_STATES = frozenset(
    {"completed", "failed", "canceled", "rejected", "input-required", "auth-required"}
)


def _whole_numbers(value: Any) -> Any:
    """Struct numbers are doubles; give back integers where they are whole."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def part_value(part: Any) -> Any:
    """A part as plain JSON: text as a string, data as its value, files as a small object."""
    from google.protobuf import json_format

    kind = part.WhichOneof("content")
    if kind == "text":
        return part.text
    if kind == "data":
        return _whole_numbers(json_format.MessageToDict(part.data))
    described: dict[str, Any] = {"mediaType": part.media_type, "filename": part.filename}
    if kind == "url":
        described["url"] = part.url
    elif kind == "raw":
        described["base64"] = base64.b64encode(part.raw).decode()
    return {key: value for key, value in described.items() if value}


@dataclass
class Followed:
    """What is known of the remote task so far."""

    task_id: str = ""
    state: str = ""
    artifacts: dict[str, Any] = field(default_factory=dict)
    status_message: Any = None
    reply: Any = None  # a direct Message instead of a task

    def apply(self, event: Any) -> None:
        """Fold one ``StreamResponse`` (or a ``Task``) into what is known."""
        if event.DESCRIPTOR.name == "Task":
            self._task(event)
            return
        kind = event.WhichOneof("payload")
        if kind == "task":
            self._task(event.task)
        elif kind == "status_update":
            self.task_id = event.status_update.task_id or self.task_id
            self._status(event.status_update.status)
        elif kind == "artifact_update":
            update = event.artifact_update
            self.task_id = update.task_id or self.task_id
            known = self.artifacts.get(update.artifact.artifact_id)
            if update.append and known is not None:
                known.parts.extend(update.artifact.parts)
            else:
                self.artifacts[update.artifact.artifact_id] = update.artifact
        elif kind == "message":
            self.reply, self.state = event.message, "completed"

    def _task(self, task: Any) -> None:
        self.task_id = task.id
        self._status(task.status)
        for artifact in task.artifacts:
            self.artifacts[artifact.artifact_id] = artifact

    def _status(self, status: Any) -> None:
        self.state = _states().get(status.state, "unknown")
        if status.HasField("message"):
            self.status_message = status.message

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def message_text(self) -> str:
        message = self.status_message
        if message is None:
            return ""
        return " ".join(p.text for p in message.parts if p.WhichOneof("content") == "text")


def outcome_of(followed: Followed, where: str) -> Outcome:
    """Map a finished remote task to an :class:`Outcome` (module table).

    Raises:
        ExecutionError: Any state but ``completed``, as the table says.
    """
    state, said = followed.state, followed.message_text()
    detail = f"{where}: remote task {followed.task_id} ended {state}" + (
        f": {said}" if said else ""
    )
    if state == "failed":
        raise UpstreamError(detail, "failed")
    if state == "rejected":
        raise ClientError(detail, "rejected")
    if state == "canceled":
        raise TaskCancelledError(detail)
    if state in ("input-required", "auth-required"):
        raise ClientError(f"{detail} (taskplane does not wait for input)", state)
    if state != "completed":
        raise InvalidReplyError(f"{where}: remote task {followed.task_id} stopped in {state}")
    if followed.reply is not None:
        parts = list(followed.reply.parts)
    elif followed.artifacts:
        parts = [p for artifact in followed.artifacts.values() for p in artifact.parts]
    else:
        parts = list(followed.status_message.parts) if followed.status_message else []
    values = [part_value(p) for p in parts]
    confidence = None
    for value in values:
        if isinstance(value, dict) and "confidence" in value:
            try:
                confidence = confidence_of(value["confidence"])
            except InvalidReplyError:
                confidence = None
    metadata: dict[str, Any] = {
        "a2aTaskId": followed.task_id,
        "a2aState": state,
        "artifacts": [a.name or a.artifact_id for a in followed.artifacts.values()],
    }
    result = values[0] if len(values) == 1 else values
    return Outcome(result=result, confidence=confidence, metadata=metadata)


def build_message(task: ExecutionTask, call: CallContext) -> Any:
    """The user message one attempt sends (module docstring)."""
    from a2a.types.a2a_pb2 import Message, Part, Role
    from google.protobuf import json_format, struct_pb2

    payload = task.payload
    text = next((payload[k] for k in ("prompt", "task", "text") if k in payload), None)
    parts = []
    if text is not None:
        parts.append(Part(text=text if isinstance(text, str) else str(text)))
    data = payload.get("data", payload if text is None else None)
    if data is not None:
        value = struct_pb2.Value()
        json_format.ParseDict(data, value)
        parts.append(Part(data=value))
    if not parts:
        parts.append(Part(text="analyze"))
    message = Message(role=Role.ROLE_USER, message_id=uuid.uuid4().hex, parts=parts)
    if call.plan_id:
        message.context_id = call.plan_id
    message.metadata.update({"taskplaneTaskId": task.id, "idempotencyKey": call.idempotency_key})
    return message


def _from_status(status: int, where: str) -> ExecutionError:
    return reply_error(status, f"{where} answered HTTP {status}")


ErrorMap = tuple[tuple[type[BaseException], Callable[[Any, str], ExecutionError]], ...]


@functools.cache
def error_map() -> ErrorMap:
    """Foreign exception type → ours (first match wins, causes looked at first); built lazily."""
    from a2a.client.errors import A2AClientTimeoutError, AgentCardResolutionError
    from a2a.utils import errors as a2a_errors

    def card(e: Any, where: str) -> ExecutionError:
        if e.status_code:
            return _from_status(e.status_code, where)
        return TransportError(f"cannot read the agent card of {where}: {e.message}")

    def refused(e: Any, where: str) -> ExecutionError:
        return ClientError(f"{where} refused the request: {e}", type(e).__name__)

    return (
        (ExecutionError, lambda e, where: e),
        (httpx.HTTPStatusError, lambda e, where: _from_status(e.response.status_code, where)),
        (httpx.TimeoutException, lambda e, where: TaskTimeoutError(f"{where} timed out")),
        (httpx.RequestError, lambda e, where: TransportError(f"cannot reach {where}: {e!r}")),
        (AgentCardResolutionError, card),
        (A2AClientTimeoutError, lambda e, where: TaskTimeoutError(f"{where} timed out")),
        (TimeoutError, lambda e, where: TaskTimeoutError(f"{where} did not finish in time")),
        (a2a_errors.InternalError, lambda e, where: UpstreamError(f"{where}: {e}", "internal")),
        (a2a_errors.InvalidAgentResponseError, lambda e, where: InvalidReplyError(f"{where}: {e}")),
        (a2a_errors.A2AError, refused),
        (OSError, lambda e, where: TransportError(f"cannot reach {where}: {e!r}")),
    )


def translate(error: BaseException, where: str) -> ExecutionError:
    """Map an SDK failure to the error tree; the innermost known cause wins."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    for candidate in reversed(chain):
        for kind, make in error_map():
            if isinstance(candidate, kind):
                return make(candidate, where)
    return TransportError(f"{where} failed: {error!r}")


class A2ATransport(AgentTransport):
    """Calls A2A agents: one message per attempt, its task followed to the end.

    Args:
        loop: The process's shared event loop thread (closed by :meth:`close`).
        clock: Monotonic clock for card caching and deadlines.
    """

    def __init__(self, *, loop: LoopThread | None = None, clock: Clock = time.monotonic) -> None:
        self.loop = loop or LoopThread()
        self.clock = clock
        self._cards: dict[str, tuple[float, Any]] = {}
        self._http: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None

    def _client_http(self) -> httpx.AsyncClient:
        # Lives on the loop thread (and is rebuilt with it); every call there shares its pool.
        running = asyncio.get_running_loop()
        if self._http is None or self._http[0] is not running:
            timeout = httpx.Timeout(connect=5.0, read=None, write=10.0, pool=10.0)
            client = httpx.AsyncClient(
                timeout=timeout,
                follow_redirects=False,
                event_hooks={"request": [_add_call_headers]},
            )
            self._http = (running, client)
            self.loop.at_close(client.aclose)
        return self._http[1]

    async def _card(self, endpoint: str, *, fresh: bool = False) -> Any:
        from a2a.client import A2ACardResolver

        cached = self._cards.get(endpoint)
        if cached is not None and not fresh and self.clock() - cached[0] < CARD_TTL_S:
            return cached[1]
        card = await A2ACardResolver(self._client_http(), endpoint).get_agent_card()
        self._cards[endpoint] = (self.clock(), card)
        return card

    async def _client(self, endpoint: str) -> tuple[Any, bool]:
        from a2a.client import ClientConfig, ClientFactory

        card = await self._card(endpoint)
        streaming = bool(card.capabilities.streaming)
        config = ClientConfig(
            streaming=streaming,
            polling=not streaming,
            httpx_client=self._client_http(),
            supported_protocol_bindings=list(BINDINGS),
        )
        return ClientFactory(config).create(card), streaming

    async def _follow(self, client: Any, message: Any, followed: Followed) -> None:
        from a2a.types.a2a_pb2 import GetTaskRequest, SendMessageRequest

        async for event in client.send_message(SendMessageRequest(message=message)):
            followed.apply(event)
            if followed.final:
                return
        delay = POLL_MIN_S
        while not followed.final:
            if not followed.task_id:
                raise InvalidReplyError("the agent answered neither a task nor a message")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)
            followed.apply(await client.get_task(GetTaskRequest(id=followed.task_id)))

    @staticmethod
    async def _learn_task_id(follower: asyncio.Future[None], followed: Followed) -> None:
        """Give the agent a moment to name its task, so a cancel has something to cancel."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(TASK_ID_WAIT_S):
                while not followed.task_id and not follower.done():
                    await asyncio.sleep(0.02)

    async def _cancel_remote(self, client: Any, followed: Followed) -> str:
        from a2a.types.a2a_pb2 import CancelTaskRequest

        if not followed.task_id or followed.final:
            return "no remote task to cancel"
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                task = await client.cancel_task(CancelTaskRequest(id=followed.task_id))
        except Exception as exc:  # best effort: say what happened, do not mask the reason
            return f"cancelling remote task {followed.task_id} failed: {exc!r}"
        followed.apply(task)
        return f"remote task {followed.task_id} is {followed.state}"

    async def _attempt(
        self,
        endpoint: str,
        message: Any,
        where: str,
        timeout_s: float,
        stop: asyncio.Event,
        headers: dict[str, str],
    ) -> Outcome:
        _CALL_HEADERS.set(headers)  # this task's context: its requests, and its subtasks'
        async with asyncio.timeout(timeout_s):
            client, _ = await self._client(endpoint)
        followed = Followed()
        try:
            follower = asyncio.ensure_future(self._follow(client, message, followed))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait(
                {follower, stopper}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
            if follower in done:
                stopper.cancel()
                follower.result()
                return outcome_of(followed, where)
            stopper.cancel()
            await self._learn_task_id(follower, followed)
            follower.cancel()
            said = await self._cancel_remote(client, followed)
            if stop.is_set():
                raise TaskCancelledError(f"plan cancelled; {said}")
            raise TaskTimeoutError(f"{where} did not finish in {timeout_s:g} s; {said}")
        finally:
            await client.close()

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        where = f"A2A agent {agent.agent_id}"
        message = build_message(task, call)
        stop = asyncio.Event()
        loop = self.loop.loop()
        headers = tracing.outgoing_headers()  # the call span is current here, not on the loop
        future = self.loop.submit(
            self._attempt(agent.endpoint, message, where, timeout_s, stop, headers)
        )
        deadline = self.clock() + timeout_s + CANCEL_TIMEOUT_S + 1.0
        signalled = False
        while not self.loop.wait(future, CANCEL_CHECK_S):
            if not signalled and call.is_cancelled():
                loop.call_soon_threadsafe(stop.set)
                signalled = True
            if self.clock() > deadline:
                future.cancel()
                raise TaskTimeoutError(f"{where} did not finish in {timeout_s:g} s")
        try:
            return future.result()
        except ExecutionError:
            raise
        except Exception as exc:
            raise translate(exc, where) from exc

    def describe(self, agent: AgentInfo, *, timeout_s: float) -> list[str]:
        """The ids of the skills on the agent's card (read afresh).

        Raises:
            ExecutionError: The card could not be read.
        """

        async def skills() -> list[str]:
            async with asyncio.timeout(timeout_s):
                card = await self._card(agent.endpoint, fresh=True)
            return [skill.id for skill in card.skills]

        try:
            return self.loop.run(skills(), timeout_s=timeout_s)
        except ExecutionError:
            raise
        except Exception as exc:
            raise translate(exc, f"A2A agent {agent.agent_id}") from exc

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        """Healthy when the agent card can be read."""
        try:
            skills = self.describe(agent, timeout_s=timeout_s)
        except ExecutionError as exc:
            return HealthReport(healthy=False, status="unreachable", message=str(exc))
        return HealthReport(healthy=True, status="healthy", message=f"card: {len(skills)} skills")

    def close(self) -> None:
        self._http = None  # its pool is closed on the loop, by the loop's closers
        self.loop.close()
