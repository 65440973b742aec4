"""The OpenAI-compatible transport's mapping, and the per-agent policy it reads."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest

from taskplane.contract import CallContext
from taskplane.errors import (
    ClientError,
    CredentialsError,
    InvalidPayloadError,
    InvalidReplyError,
    TaskTimeoutError,
    UpstreamError,
    ValidationError,
)
from taskplane.models import ExecutionTask
from taskplane.proxy.openai import (
    JSON_INSTRUCTION,
    OpenAITransport,
    assemble_stream,
    build_messages,
    outcome_from_completion,
    parse_duration_s,
    rate_limit_wait_s,
)
from taskplane.proxy.policy import AgentPolicy, make_policy
from taskplane.proxy.registry import AgentInfo, make_agent_info

KEY = "sk-unit-secret-value"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("2.5", 2.5)],
)
def test_reset_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "soon", "1x", "s1", "1s soon"])
def test_not_a_duration(text: str | None) -> None:
    assert parse_duration_s(text) is None


def test_wait_hint_order() -> None:
    resets = {"x-ratelimit-reset-requests": "20ms", "x-ratelimit-reset-tokens": "6m0s"}
    assert rate_limit_wait_s({"retry-after-ms": "150", "retry-after": "9", **resets}) == 0.15
    assert rate_limit_wait_s({"retry-after": "9", **resets}) == 9.0
    # Neither limit says it is exhausted: the sooner reset.
    assert rate_limit_wait_s(resets) == pytest.approx(0.02)
    exhausted = {**resets, "x-ratelimit-remaining-tokens": "0"}
    assert rate_limit_wait_s(exhausted) == 360.0
    both = {**exhausted, "x-ratelimit-remaining-requests": "0"}
    assert rate_limit_wait_s(both) == 360.0
    assert rate_limit_wait_s({}) is None


def test_payload_to_messages() -> None:
    policy = AgentPolicy(model="m", system="Be brief.")
    assert build_messages({"prompt": "Sum", "data": [1, 2]}, policy) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sum\n\n[\n  1,\n  2\n]"},
    ]
    given = [{"role": "system", "content": "Own"}, {"role": "user", "content": "hi"}]
    assert build_messages({"messages": given}, policy) == given
    assert build_messages({"a": 1}, AgentPolicy(model="m")) == [
        {"role": "user", "content": '{\n  "a": 1\n}'}
    ]


def test_json_mode_mentions_json_once() -> None:
    policy = AgentPolicy(model="m", json_output=True)
    added = build_messages({"task": "rate it"}, policy)
    assert added[0] == {"role": "system", "content": JSON_INSTRUCTION}
    assert build_messages({"task": "answer in JSON"}, policy) == [
        {"role": "user", "content": "answer in JSON"}
    ]


@pytest.mark.parametrize(
    ("messages", "field"),
    [([], "payload.messages"), (["x"], "messages[0]"), ([{"role": "bot", "content": ""}], "role")],
)
def test_bad_messages(messages: Any, field: str) -> None:
    with pytest.raises(InvalidPayloadError, match=field.replace("[", r"\[").replace("]", r"\]")):
        build_messages({"messages": messages}, AgentPolicy(model="m"))


def agent(**policy: Any) -> AgentInfo:
    return make_agent_info("oa", "http://llm.test/v1", "openai", policy={"model": "m", **policy})


def completion(content: Any, logprobs: Any = None, usage: Any = None) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [
            {
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "logprobs": logprobs,
            }
        ],
        "usage": usage,
    }


def test_reply_mapping() -> None:
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    outcome = outcome_from_completion(
        completion('{"v": 1, "confidence": 0.6}', usage=usage), agent(json=True)
    )
    assert (outcome.result, outcome.confidence) == ({"v": 1, "confidence": 0.6}, 0.6)
    assert outcome.metadata["usage"] == {"inputTokens": 3, "outputTokens": 4}
    logprobs = {"content": [{"token": "a", "logprob": math.log(0.5)}, {"logprob": 0.0}]}
    text = outcome_from_completion(completion("hi", logprobs), agent())
    assert (text.result, text.confidence) == ("hi", pytest.approx(0.75))
    assert text.metadata["confidenceSource"] == "logprobs" and "usage" not in text.metadata
    # A stated confidence out of range is not trusted; logprobs (none here) would be.
    bad = outcome_from_completion(completion('{"confidence": 7}'), agent(json=True))
    assert bad.confidence is None and bad.metadata["confidenceSource"] is None


@pytest.mark.parametrize(
    "reply",
    [{}, {"choices": []}, completion(None), {"choices": [{"message": {"refusal": "no"}}]}],
)
def test_replies_without_text(reply: dict[str, Any]) -> None:
    with pytest.raises(InvalidReplyError):
        outcome_from_completion(reply, agent())


def test_json_mode_refuses_text() -> None:
    with pytest.raises(InvalidReplyError, match="asked for JSON"):
        outcome_from_completion(completion("plain words"), agent(json=True))


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"policy\.model: is required"):
        make_policy({}, "openai")
    with pytest.raises(ValidationError, match=r"policy\.apiKeyEnv") as caught:
        make_policy({"model": "m", "apiKeyEnv": "not a name"}, "openai")
    assert caught.value.errors[0]["field"] == "policy.apiKeyEnv"
    with pytest.raises(ValidationError, match=r"policy\.modle: unknown field"):
        make_policy({"modle": "m"}, "http")
    with pytest.raises(ValidationError, match=r"policy\.temperature"):
        make_policy({"model": "m", "temperature": 5}, "openai")
    assert make_policy(None, "http") == AgentPolicy()


def test_a_key_is_refused_and_never_echoed() -> None:
    with pytest.raises(ValidationError, match=r"policy\.apiKey: secrets are never stored") as got:
        make_policy({"model": "m", "apiKey": KEY}, "openai")
    assert KEY not in str(got.value) and KEY not in json.dumps(got.value.errors)


def test_policy_round_trips_in_camel_case() -> None:
    info = agent(apiKeyEnv="OPENAI_API_KEY", json=True, maxReplyTokens=50)
    wire = info.to_json_dict()["policy"]
    assert wire["apiKeyEnv"] == "OPENAI_API_KEY" and wire["json"] is True
    assert wire["maxReplyTokens"] == 50
    assert AgentInfo.model_validate_json(info.model_dump_json(by_alias=True)) == info
    # An entry written by a newer taskplane with more policy fields still reads.
    newer = {**info.to_json_dict(), "policy": {**wire, "futureField": 3}}
    assert AgentInfo.model_validate(newer).policy == info.policy


def transport(handler: Any, environ: dict[str, str] | None = None) -> OpenAITransport:
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return OpenAITransport(client, environ={"KEY_VAR": KEY} if environ is None else environ)


TASK = ExecutionTask(id="t1", type="agent", target="oa", payload={"prompt": "hi"})
CALL = CallContext(timeout_s=1.0, idempotency_key="k")


def test_errors_are_translated_and_the_key_redacted() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == f"Bearer {KEY}"
        status = int(request.headers["X-Taskplane-Task-Id"])
        body = {"error": {"message": f"key {KEY} refused"}}
        return httpx.Response(status, json=body, headers={"x-ratelimit-reset-requests": "2s"})

    sender = transport(handler)
    info = agent(apiKeyEnv="KEY_VAR")
    with pytest.raises(UpstreamError) as throttled:
        sender.send(info, TASK.model_copy(update={"id": "429"}), CALL, timeout_s=1.0)
    assert throttled.value.retry_after_s == 2.0 and KEY not in str(throttled.value)
    with pytest.raises(ClientError) as refused:
        sender.send(info, TASK.model_copy(update={"id": "401"}), CALL, timeout_s=1.0)
    assert KEY not in str(refused.value) and "***" in str(refused.value)


def test_timeouts_and_missing_keys() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(TaskTimeoutError):
        transport(slow).send(agent(), TASK, CALL, timeout_s=1.0)
    with pytest.raises(CredentialsError, match="KEY_VAR"):
        transport(slow, environ={}).send(agent(apiKeyEnv="KEY_VAR"), TASK, CALL, timeout_s=1.0)
    health = transport(slow, environ={}).check_health(agent(apiKeyEnv="KEY_VAR"), timeout_s=1.0)
    assert (health.healthy, health.status) == (False, "unknown")


def chunk(**choice: Any) -> str:
    return "data: " + json.dumps({"model": "m", "choices": [{"index": 0, **choice}]})


def test_a_stream_is_folded_into_one_completion() -> None:
    lines = [
        ": keep-alive",
        chunk(delta={"role": "assistant"}),
        chunk(delta={"content": "he"}, logprobs={"content": [{"logprob": 0.0}]}),
        "",
        chunk(delta={"content": "llo"}, logprobs={"content": [{"logprob": math.log(0.5)}]}),
        chunk(delta={}, finish_reason="stop"),
        "data: "
        + json.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
        "data: [DONE]",
        chunk(delta={"content": "after the end"}),
    ]
    reply = assemble_stream(lines, 10_000, deadline=1.0, clock=lambda: 0.0)
    outcome = outcome_from_completion(reply, agent())
    assert outcome.result == "hello" and outcome.confidence == pytest.approx(0.75)
    assert outcome.metadata["usage"] == {"inputTokens": 1, "outputTokens": 2}
    assert outcome.metadata["finishReason"] == "stop"


def test_a_stream_is_capped_in_bytes_and_time_and_must_be_json() -> None:
    many = [chunk(delta={"content": "x" * 50})] * 10
    with pytest.raises(InvalidReplyError, match="larger than 200 bytes"):
        assemble_stream(many, 200, deadline=1.0, clock=lambda: 0.0)
    with pytest.raises(TaskTimeoutError):
        assemble_stream(many, 10_000, deadline=1.0, clock=lambda: 2.0)
    with pytest.raises(InvalidReplyError, match="not JSON"):
        assemble_stream(["data: {nope"], 10_000, deadline=1.0, clock=lambda: 0.0)
