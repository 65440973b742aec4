"""The A2A transport's mapping: messages out, task states and parts back, errors."""

from __future__ import annotations

import httpx
import pytest
from a2a.client.errors import A2AClientError, A2AClientTimeoutError, AgentCardResolutionError
from a2a.types.a2a_pb2 import (
    Artifact,
    Message,
    Part,
    Role,
    StreamResponse,
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InternalError, InvalidParamsError
from google.protobuf import struct_pb2

from taskplane.contract import CallContext
from taskplane.errors import (
    ClientError,
    InvalidReplyError,
    TaskCancelledError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy.a2a import Followed, build_message, outcome_of, translate


def data_part(value: object) -> Part:
    wrapped = struct_pb2.Value()
    wrapped.struct_value.update(value)  # type: ignore[arg-type]
    return Part(data=wrapped)


def status(state: int, text: str = "") -> TaskStatus:
    message = Message(role=Role.ROLE_AGENT, parts=[Part(text=text)]) if text else None
    return TaskStatus(state=state, message=message)


def test_the_message_carries_text_and_data() -> None:
    task = ExecutionTask(
        id="t1", type="agent", target="a", payload={"prompt": "sum", "data": {"n": [1, 2]}}
    )
    message = build_message(task, CallContext(timeout_s=1, plan_id="p1", idempotency_key="k"))
    assert message.role == Role.ROLE_USER and message.context_id == "p1"
    assert message.parts[0].text == "sum"
    assert list(message.parts[1].data.struct_value["n"]) == [1.0, 2.0]
    assert message.metadata["taskplaneTaskId"] == "t1"
    bare = build_message(
        ExecutionTask(id="t2", type="agent", target="a", payload={"x": 1}), CallContext(timeout_s=1)
    )
    assert len(bare.parts) == 1 and bare.parts[0].data.struct_value["x"] == 1.0
    assert bare.context_id == ""


def test_stream_events_fold_into_one_view() -> None:
    followed = Followed()
    followed.apply(
        StreamResponse(task=Task(id="r1", status=status(TaskState.TASK_STATE_SUBMITTED)))
    )
    assert (followed.task_id, followed.state, followed.final) == ("r1", "submitted", False)
    chunk = Artifact(artifact_id="a1", name="out", parts=[Part(text="one")])
    followed.apply(
        StreamResponse(artifact_update=TaskArtifactUpdateEvent(task_id="r1", artifact=chunk))
    )
    more = Artifact(artifact_id="a1", parts=[Part(text="two")])
    followed.apply(
        StreamResponse(
            artifact_update=TaskArtifactUpdateEvent(task_id="r1", artifact=more, append=True)
        )
    )
    followed.apply(
        StreamResponse(
            status_update=TaskStatusUpdateEvent(
                task_id="r1", status=status(TaskState.TASK_STATE_COMPLETED)
            )
        )
    )
    assert followed.final
    outcome = outcome_of(followed, "w")
    assert outcome.result == ["one", "two"]
    assert outcome.metadata == {"a2aTaskId": "r1", "a2aState": "completed", "artifacts": ["out"]}


def test_one_part_is_the_result_and_a_stated_confidence_is_kept() -> None:
    followed = Followed()
    artifact = Artifact(artifact_id="a", parts=[data_part({"answer": 3, "confidence": 0.7})])
    followed.apply(
        Task(id="r", status=status(TaskState.TASK_STATE_COMPLETED), artifacts=[artifact])
    )
    outcome = outcome_of(followed, "w")
    assert outcome.result == {"answer": 3, "confidence": 0.7}
    assert isinstance(outcome.result["answer"], int) and outcome.confidence == 0.7


def test_a_direct_message_reply_completes() -> None:
    followed = Followed()
    followed.apply(StreamResponse(message=Message(role=Role.ROLE_AGENT, parts=[Part(text="hi")])))
    assert followed.final and outcome_of(followed, "w").result == "hi"


@pytest.mark.parametrize(
    ("state", "kind", "words"),
    [
        (TaskState.TASK_STATE_FAILED, UpstreamError, "ended failed: why"),
        (TaskState.TASK_STATE_REJECTED, ClientError, "ended rejected: why"),
        (TaskState.TASK_STATE_CANCELED, TaskCancelledError, "ended canceled"),
        (TaskState.TASK_STATE_INPUT_REQUIRED, ClientError, "ended input-required"),
        (TaskState.TASK_STATE_AUTH_REQUIRED, ClientError, "ended auth-required"),
    ],
)
def test_states_other_than_completed(state: int, kind: type[Exception], words: str) -> None:
    followed = Followed()
    followed.apply(Task(id="r", status=status(state, "why")))
    with pytest.raises(kind, match=words):
        outcome_of(followed, "w")


def test_a_task_stopped_midway_is_an_invalid_reply() -> None:
    followed = Followed()
    followed.apply(Task(id="r", status=status(TaskState.TASK_STATE_WORKING)))
    with pytest.raises(InvalidReplyError, match="stopped in working"):
        outcome_of(followed, "w")


def _status_error(code: int) -> A2AClientError:
    request = httpx.Request("POST", "http://a2a.test/")
    cause = httpx.HTTPStatusError("x", request=request, response=httpx.Response(code))
    error = A2AClientError(f"HTTP Error {code}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (_status_error(503), UpstreamError),
        (_status_error(429), ThrottledError),
        (_status_error(404), ClientError),
        (A2AClientTimeoutError("slow"), TaskTimeoutError),
        (AgentCardResolutionError("gone", status_code=500), UpstreamError),
        (AgentCardResolutionError("no route"), TransportError),
        (InternalError("boom"), UpstreamError),
        (InvalidParamsError("bad"), ClientError),
        (httpx.ConnectError("refused"), TransportError),
        (RuntimeError("odd"), TransportError),
    ],
)
def test_sdk_errors_are_translated(error: BaseException, kind: type[Exception]) -> None:
    assert type(translate(error, "w")) is kind
