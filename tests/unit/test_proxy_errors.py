"""Translation of transport failures into the error tree, and the gRPC request mapping."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import httpx
import pytest

from taskplane.contract import CallContext
from taskplane.errors import (
    ClientError,
    InvalidReplyError,
    TaskTimeoutError,
    ThrottledError,
    TransportError,
    UpstreamError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy import parallax
from taskplane.proxy.grpc import build_request, outcome_from_result, translate_rpc_error
from taskplane.proxy.http import HttpTransport
from taskplane.proxy.registry import make_agent_info

AGENT = make_agent_info("a1", "http://agent.test:8080")
TASK = ExecutionTask(id="t1", type="agent", target="a1", payload={"q": 1})
CALL = CallContext(timeout_s=2.0, idempotency_key="plan:t1")

Handler = Callable[[httpx.Request], httpx.Response]


def send(handler: Handler, *, max_bytes: int = 10 * 1024 * 1024) -> object:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    transport = HttpTransport(client, max_response_bytes=max_bytes)
    try:
        return transport.send(AGENT, TASK, CALL, timeout_s=2.0)
    finally:
        transport.close()


def answer(status: int, body: object = None, **headers: str) -> Handler:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return lambda request: httpx.Response(status, content=content, headers=headers)


def raising(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        ({"inputTokens": 120, "outputTokens": 30}, {"inputTokens": 120, "outputTokens": 30}),
        ({"prompt_tokens": 7, "completion_tokens": 5}, {"inputTokens": 7, "outputTokens": 5}),
        ({"outputTokens": 9}, {"inputTokens": 0, "outputTokens": 9}),
        ({"inputTokens": -1, "outputTokens": 3}, None),
        ({"inputTokens": "many"}, None),
        ({"total": 12}, None),
        ("lots", None),
    ],
)
def test_reported_usage_becomes_metadata_usage(usage: object, expected: object) -> None:
    outcome = send(answer(200, {"value": 1, "confidence": 0.5, "usage": usage}))
    assert outcome.metadata.get("usage") == expected  # type: ignore[attr-defined]


def test_a_good_reply_becomes_an_outcome_and_the_request_is_as_documented() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"value": [1], "confidence": 1, "reasoning": "sure"})

    outcome = send(handler)
    assert outcome.result == [1] and outcome.confidence == 1.0  # type: ignore[attr-defined]
    assert outcome.metadata == {"reasoning": "sure"}  # type: ignore[attr-defined]
    request = seen[0]
    assert (request.method, str(request.url)) == ("POST", "http://agent.test:8080/analyze")
    assert request.headers["Idempotency-Key"] == "plan:t1"
    assert request.headers["X-Taskplane-Task-Id"] == "t1"
    assert json.loads(request.content) == {"q": 1}


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (raising(httpx.ConnectError("refused")), TransportError, "cannot reach agent a1"),
        (raising(httpx.RemoteProtocolError("reset")), TransportError, "cannot reach"),
        (raising(httpx.ReadTimeout("slow")), TaskTimeoutError, "did not answer in 2 s"),
        (raising(httpx.ConnectTimeout("slow")), TaskTimeoutError, "did not answer"),
        (answer(500, {"e": 1}), UpstreamError, "HTTP 500"),
        (answer(503, {"e": 1}), UpstreamError, "HTTP 503"),
        (answer(404, {"e": 1}), ClientError, "HTTP 404"),
        (answer(422, {"e": 1}), ClientError, "HTTP 422"),
        (answer(302, {}, Location="http://x"), InvalidReplyError, "HTTP 302"),
        (answer(200, b"<html>"), InvalidReplyError, "invalid JSON"),
        (answer(200, [1, 2]), InvalidReplyError, "must be a JSON object"),
        (answer(200, {"confidence": 0.5}), InvalidReplyError, "no 'value'"),
        (answer(200, {"value": 1}), InvalidReplyError, "no 'confidence'"),
        (answer(200, {"value": 1, "confidence": "high"}), InvalidReplyError, "must be a number"),
        (answer(200, {"value": 1, "confidence": True}), InvalidReplyError, "must be a number"),
        (answer(200, {"value": 1, "confidence": 1.5}), InvalidReplyError, "within 0..1"),
        (answer(200, {"value": 1, "confidence": 0.5, "reasoning": 3}), InvalidReplyError, "string"),
    ],
)
def test_http_failures_are_translated(handler: Handler, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        send(handler)


def test_429_and_5xx_keep_the_status_and_retry_after() -> None:
    with pytest.raises(UpstreamError) as caught:
        send(answer(429, {"e": "slow down"}, **{"Retry-After": "3"}))
    assert (caught.value.status, caught.value.retry_after_s) == (429, 3.0)
    with pytest.raises(UpstreamError) as caught:
        send(answer(502, {}))
    assert (caught.value.status, caught.value.retry_after_s) == (502, None)


def test_foreign_errors_are_chained() -> None:
    with pytest.raises(TransportError) as caught:
        send(raising(httpx.ConnectError("refused")))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


def test_the_transport_reads_replies_under_its_size_cap() -> None:  # reading: test_httpio
    body = {"value": "x" * 5000, "confidence": 0.5}
    with pytest.raises(InvalidReplyError, match="larger than 2048 bytes"):
        send(answer(200, body), max_bytes=2048)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "details") -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "error"),
    [
        (grpc.StatusCode.DEADLINE_EXCEEDED, TaskTimeoutError),
        (grpc.StatusCode.UNAVAILABLE, UpstreamError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ThrottledError),
        (grpc.StatusCode.INTERNAL, UpstreamError),
        (grpc.StatusCode.UNKNOWN, UpstreamError),
        (grpc.StatusCode.CANCELLED, TransportError),
        (grpc.StatusCode.INVALID_ARGUMENT, ClientError),
        (grpc.StatusCode.NOT_FOUND, ClientError),
        (grpc.StatusCode.PERMISSION_DENIED, ClientError),
        (grpc.StatusCode.UNIMPLEMENTED, ClientError),
    ],
)
def test_grpc_statuses_are_translated(code: grpc.StatusCode, error: type) -> None:
    translated = translate_rpc_error(FakeRpcError(code), "a1")
    assert type(translated) is error
    assert code.name in str(translated)


def test_a_grpc_reply_over_the_size_cap_is_an_invalid_reply() -> None:
    exc = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max")
    assert isinstance(translate_rpc_error(exc, "a1"), InvalidReplyError)


def task(payload: dict[str, object], pattern: str | None = None) -> ExecutionTask:
    meta = {"pattern": pattern} if pattern else {}
    return ExecutionTask(id="t9", type="agent", target="a1", payload=payload, metadata=meta)


def test_grpc_request_mapping_follows_parallax() -> None:
    data = {"nested": {"list": [1, "two", None, True]}, "n": 2.5}
    request = build_request(task({"task": "rank", "data": data}, "p1"), timeout_s=1.5)
    assert (request.task_id, request.task_description, request.pattern_name) == ("t9", "rank", "p1")
    assert request.timeout_ms == 1500
    assert request.data["nested"]["list"][3] is True and request.data["n"] == 2.5
    whole = build_request(task({"description": "d", "x": 1}), timeout_s=1)
    assert whole.task_description == "d" and set(whole.data.keys()) == {"description", "x"}
    bare = build_request(task({"data": [1, 2], "context": {"user": "u", "n": 3}}), timeout_s=1)
    assert bare.task_description == "analyze" and list(bare.data["value"]) == [1.0, 2.0]
    assert dict(bare.context) == {"user": "u", "n": "3"}


def test_grpc_reply_mapping() -> None:
    reply = parallax.ConfidenceResult(
        value_json='{"a": [1]}', confidence=0.7, reasoning="r", uncertainties=["u"]
    )
    outcome = outcome_from_result(reply, "a1")
    assert (outcome.result, outcome.confidence) == ({"a": [1]}, 0.7)
    assert outcome.metadata == {"reasoning": "r", "uncertainties": ["u"]}
    with pytest.raises(InvalidReplyError, match="value_json is not JSON"):
        outcome_from_result(parallax.ConfidenceResult(value_json="nope"), "a1")


@pytest.mark.parametrize(
    ("entries", "usage"),
    [
        ({"inputTokens": "120", "outputTokens": "30"}, {"inputTokens": 120, "outputTokens": 30}),
        ({"prompt_tokens": "7", "completion_tokens": "0"}, {"inputTokens": 7, "outputTokens": 0}),
        ({"inputTokens": "-3", "outputTokens": "1"}, None),
        ({"inputTokens": "many"}, None),
        ({"model": "m"}, None),
    ],
)
def test_grpc_reply_metadata_reports_token_usage(
    entries: dict[str, str], usage: dict[str, int] | None
) -> None:
    reply = parallax.ConfidenceResult(value_json="1", confidence=0.5, metadata=entries)
    metadata = outcome_from_result(reply, "a1").metadata
    assert metadata.get("usage") == usage
    assert metadata["agentMetadata"] == entries  # as the agent sent it


def test_a_throttled_answer_is_retried_but_says_nothing_about_health() -> None:
    from taskplane.errors import BREAKER_IGNORED_ERRORS, RETRYABLE_ERRORS, http_status_error

    throttled = http_status_error(429, "HTTP 429: slow down", 2.0)
    assert isinstance(throttled, ThrottledError) and throttled.retry_after_s == 2.0
    assert isinstance(throttled, RETRYABLE_ERRORS)
    assert isinstance(throttled, BREAKER_IGNORED_ERRORS)
    failing = http_status_error(503, "HTTP 503: busy")
    assert not isinstance(failing, BREAKER_IGNORED_ERRORS)
