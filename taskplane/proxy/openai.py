"""The OpenAI-compatible transport: ``POST {endpoint}/chat/completions``.

The endpoint is a base URL (``https://api.openai.com/v1``, a local model
server's ``http://127.0.0.1:8000/v1``, a gateway). The agent's policy names
the ``model``, the environment variable holding the API key (``apiKeyEnv``,
read by the worker at call time and never stored, logged or echoed), an
optional ``system`` prompt, and whether the agent answers in ``json``.

Why httpx and not the ``openai`` client: taskplane already keeps one pooled
``httpx.Client`` per worker and bounds every exchange by the call's deadline
and a byte cap; retries belong to taskplane's one retry layer (the ``openai``
client retries on its own, twice by default), and its error classes would be
one more foreign tree to translate. The wire format used here is small and
documented, and "OpenAI-compatible" servers vary in what else they accept.

Request (``stream: false``; with ``policy.stream`` the reply is streamed as
server-sent chunks, ``stream_options.include_usage`` asks for the usage, and
the chunks are folded into one completion before it is mapped — the call's
deadline and byte cap hold for the whole stream):

========================================  ==========================================
Payload                                   Chat messages
========================================  ==========================================
``{"messages": [...]}``                   as given (each ``{role, content}``)
``{"prompt"|"task": ..., "data": ...}``   one user message: the text, then ``data``
                                          as indented JSON
anything else                             one user message: the payload as JSON
========================================  ==========================================

``policy.system`` goes first as a system message (unless the messages start
with one). With ``json`` the request carries ``response_format:
{"type": "json_object"}``; as that mode requires the word "JSON" in the
conversation, a short system line asking for one JSON object is added when
no message mentions it.

Reply: ``result`` is ``choices[0].message.content`` (parsed when ``json``);
``confidence`` is the reply's own ``confidence`` field (a JSON object with a
number in 0..1), else the mean token probability ``mean(exp(logprob))`` when
the endpoint returned ``logprobs`` (ask with ``policy.logprobs``), else None;
``metadata.confidenceSource`` says which. ``usage.prompt_tokens`` /
``completion_tokens`` become ``metadata.usage = {inputTokens, outputTokens}``.

Errors are translated as for HTTP agents (429 and 5xx are ``UpstreamError``,
other 4xx ``ClientError``, timeouts ``TaskTimeoutError``). The wait hint of a
429/503 is, in order: ``retry-after-ms``, ``Retry-After``, then the
``x-ratelimit-reset-requests`` / ``x-ratelimit-reset-tokens`` durations
(``1s``, ``6m0s``, ``20ms``) of whichever limit is exhausted (the longer
if both, the shorter if the headers do not say which).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

import httpx

from taskplane.aliases import Clock
from taskplane.contract import CallContext, Outcome
from taskplane.errors import (
    CredentialsError,
    InvalidPayloadError,
    InvalidReplyError,
    TaskTimeoutError,
)
from taskplane.httpio import (
    MAX_RESPONSE_BYTES,
    httpx_errors,
    read_capped,
    reply_error,
    retry_after_s,
    snippet,
)
from taskplane.models import ExecutionTask
from taskplane.proxy.http import health_of
from taskplane.proxy.policy import AgentPolicy
from taskplane.proxy.registry import AgentInfo
from taskplane.proxy.transport import AgentTransport, HealthReport, confidence_of

#: Roles a chat message may have.
ROLES = ("system", "user", "assistant", "tool", "developer")
#: Added as a system message in JSON mode when no message mentions JSON.
JSON_INSTRUCTION = "Reply with a single JSON object."

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def parse_duration_s(text: str | None) -> float | None:
    """Parse a rate-limit reset duration (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1.5"``) to seconds.

    Returns None when *text* is empty or not a duration.
    """
    if not text:
        return None
    value = text.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            return None
        total += float(match.group(1)) * _UNIT_S[match.group(2)]
        position = match.end()
    return total if position == len(value) and position > 0 else None


def rate_limit_wait_s(headers: Mapping[str, str]) -> float | None:
    """The wait a 429/503 asks for (see the module docstring for the order)."""
    millis = headers.get("retry-after-ms")
    if millis:
        try:
            return max(float(millis) / 1000.0, 0.0)
        except ValueError:
            pass
    after = retry_after_s(headers.get("retry-after"))
    if after is not None:
        return after
    resets: dict[str, float] = {}
    for kind in ("requests", "tokens"):
        reset = parse_duration_s(headers.get(f"x-ratelimit-reset-{kind}"))
        if reset is not None:
            resets[kind] = reset
    if not resets:
        return None
    exhausted = [
        resets[kind]
        for kind in resets
        if headers.get(f"x-ratelimit-remaining-{kind}", "").strip() == "0"
    ]
    return max(exhausted) if exhausted else min(resets.values())


def _check_message(index: int, message: Any) -> dict[str, Any]:
    if not isinstance(message, dict):
        raise InvalidPayloadError(f"payload.messages[{index}] must be an object")
    if message.get("role") not in ROLES:
        raise InvalidPayloadError(f"payload.messages[{index}].role must be one of {ROLES}")
    if "content" not in message:
        raise InvalidPayloadError(f"payload.messages[{index}].content is missing")
    return message


def build_messages(payload: dict[str, Any], policy: AgentPolicy) -> list[dict[str, Any]]:
    """Map a task payload to chat messages (see the module docstring).

    Raises:
        InvalidPayloadError: ``messages`` is not a non-empty list of ``{role, content}``.
    """
    if "messages" in payload:
        given = payload["messages"]
        if not isinstance(given, list) or not given:
            raise InvalidPayloadError("payload.messages must be a non-empty list")
        messages = [_check_message(i, m) for i, m in enumerate(given)]
    else:
        text = payload.get("prompt", payload.get("task"))
        if text is None:
            content = json.dumps(payload, ensure_ascii=False, indent=2)
        else:
            content = text if isinstance(text, str) else json.dumps(text, ensure_ascii=False)
            if "data" in payload:
                data = json.dumps(payload["data"], ensure_ascii=False, indent=2)
                content = f"{content}\n\n{data}"
        messages = [{"role": "user", "content": content}]
    prefix: list[dict[str, Any]] = []
    if policy.system and messages[0].get("role") != "system":
        prefix.append({"role": "system", "content": policy.system})
    if policy.json_output and not any(
        "json" in str(m.get("content", "")).lower() for m in [*prefix, *messages]
    ):
        prefix.append({"role": "system", "content": JSON_INSTRUCTION})
    return [*prefix, *messages]


def build_body(task: ExecutionTask, policy: AgentPolicy) -> dict[str, Any]:
    """The chat-completions request body for *task*."""
    body: dict[str, Any] = {
        "model": policy.model,
        "messages": build_messages(task.payload, policy),
        "stream": policy.stream,
    }
    if policy.stream:
        body["stream_options"] = {"include_usage": True}
    if policy.json_output:
        body["response_format"] = {"type": "json_object"}
    if policy.logprobs:
        body["logprobs"] = True
    if policy.temperature is not None:
        body["temperature"] = policy.temperature
    if policy.max_reply_tokens is not None:
        body["max_tokens"] = policy.max_reply_tokens
    return body


def mean_token_probability(logprobs: Any) -> float | None:
    """``mean(exp(logprob))`` over ``choices[0].logprobs.content``; None when absent."""
    if not isinstance(logprobs, dict):
        return None
    tokens = logprobs.get("content")
    if not isinstance(tokens, list):
        return None
    values = [
        t["logprob"]
        for t in tokens
        if isinstance(t, dict) and isinstance(t.get("logprob"), int | float)
    ]
    if not values:
        return None
    mean = sum(math.exp(min(float(v), 0.0)) for v in values) / len(values)
    return min(max(mean, 0.0), 1.0)


def usage_of(usage: Any) -> dict[str, int] | None:
    """``{inputTokens, outputTokens}`` from an OpenAI ``usage`` object, if it has them."""
    if not isinstance(usage, dict):
        return None
    inputs, outputs = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not isinstance(inputs, int) or not isinstance(outputs, int):
        return None
    return {"inputTokens": inputs, "outputTokens": outputs}


def outcome_from_completion(reply: Any, agent: AgentInfo) -> Outcome:
    """Turn a chat-completions reply into an :class:`Outcome`.

    Raises:
        InvalidReplyError: No choice, no text content, or (in JSON mode) content
            that is not JSON.
    """
    name = agent.agent_id
    choices = reply.get("choices") if isinstance(reply, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise InvalidReplyError(f"agent {name}: the reply has no choices")
    choice = choices[0]
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        refusal = message.get("refusal") if isinstance(message, dict) else None
        why = f"refused: {refusal}" if refusal else "no text content"
        raise InvalidReplyError(f"agent {name}: the reply has {why}")
    result: Any = content
    confidence: float | None = None
    source: str | None = None
    if agent.policy.json_output:
        try:
            result = json.loads(content)
        except ValueError as exc:
            raise InvalidReplyError(f"agent {name}: asked for JSON, got: {exc}") from exc
        stated = result.get("confidence") if isinstance(result, dict) else None
        if stated is not None:
            try:
                confidence, source = confidence_of(stated), "reply"
            except InvalidReplyError:
                confidence = None
    if confidence is None:
        confidence = mean_token_probability(choice.get("logprobs"))
        source = "logprobs" if confidence is not None else None
    metadata: dict[str, Any] = {
        "model": reply.get("model"),
        "finishReason": choice.get("finish_reason"),
        "confidenceSource": source,
    }
    usage = usage_of(reply.get("usage"))
    if usage is not None:
        metadata["usage"] = usage
    return Outcome(result=result, confidence=confidence, metadata=metadata)


def assemble_stream(
    lines: Iterable[str],
    limit: int,
    *,
    deadline: float,
    clock: Clock = time.monotonic,
) -> dict[str, Any]:
    """Fold a streamed reply (server-sent ``chat.completion.chunk`` events) into one completion.

    Content deltas and logprobs of choice 0 are joined; ``finish_reason``,
    ``model`` and the final ``usage`` chunk are kept.

    Raises:
        InvalidReplyError: A chunk is not JSON, or the stream passes *limit* bytes.
        TaskTimeoutError: The stream is still going at *deadline* (*clock* time).
    """
    content: list[str] = []
    tokens: list[Any] = []
    reply: dict[str, Any] = {"model": None, "usage": None}
    finish = None
    seen = 0
    for line in lines:
        seen += len(line) + 1
        if seen > limit:
            raise InvalidReplyError(f"streamed reply is larger than {limit} bytes")
        if clock() > deadline:
            raise TaskTimeoutError("streamed reply still going at the call's deadline")
        if not line.startswith("data:"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise InvalidReplyError(f"streamed chunk is not JSON: {exc}") from exc
        reply["model"] = chunk.get("model") or reply["model"]
        reply["usage"] = chunk.get("usage") or reply["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                tokens.extend(logprobs["content"])
            finish = choice.get("finish_reason") or finish
    message = {"role": "assistant", "content": "".join(content) if content or finish else None}
    choice_0 = {"message": message, "finish_reason": finish, "logprobs": None}
    if tokens:
        choice_0["logprobs"] = {"content": tokens}
    reply["choices"] = [choice_0]
    return reply


class OpenAITransport(AgentTransport):
    """Calls OpenAI-compatible chat-completions endpoints through a shared pooled client.

    Args:
        client: The process's pooled client; closed by :meth:`close`.
        environ: Where API keys are looked up by name at call time (the
            worker's environment, passed in by whoever builds the transport).
        max_response_bytes: Replies larger than this fail with ``InvalidReplyError``.
        clock: Monotonic clock bounding a whole exchange.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        environ: Mapping[str, str],
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        clock: Clock = time.monotonic,
    ) -> None:
        self.client = client
        self.environ = environ
        self.max_response_bytes = max_response_bytes
        self.clock = clock

    def _api_key(self, agent: AgentInfo, *, required: bool) -> str | None:
        name = agent.policy.api_key_env
        if not name:
            return None
        key = self.environ.get(name)
        if not key and required:
            raise CredentialsError(
                f"agent {agent.agent_id}: environment variable {name} (policy.apiKeyEnv) "
                "is not set in this worker"
            )
        return key or None

    @staticmethod
    def _redact(text: str, key: str | None) -> str:
        return text.replace(key, "***") if key else text

    def send(
        self, agent: AgentInfo, task: ExecutionTask, call: CallContext, *, timeout_s: float
    ) -> Outcome:
        body = build_body(task, agent.policy)
        key = self._api_key(agent, required=True)
        headers = {"Idempotency-Key": call.idempotency_key, "X-Taskplane-Task-Id": task.id}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        url = f"{agent.endpoint}/chat/completions"
        deadline = self.clock() + timeout_s
        what = f"reply from {url}"
        reply: Any = None
        with (
            httpx_errors(
                where=f"agent {agent.agent_id} at {url}",
                timeout_s=timeout_s,
                redact=lambda text: self._redact(text, key),
            ),
            self.client.stream(
                "POST", url, json=body, headers=headers, timeout=timeout_s
            ) as response,
        ):
            status, reply_headers = response.status_code, response.headers
            if 200 <= status < 300 and agent.policy.stream:
                lines = response.iter_lines()
                reply = assemble_stream(
                    lines, self.max_response_bytes, deadline=deadline, clock=self.clock
                )
                raw = b""
            else:
                raw = read_capped(
                    response,
                    self.max_response_bytes,
                    what=what,
                    deadline=deadline,
                    clock=self.clock,
                )
        if not 200 <= status < 300:
            message = f"agent {agent.agent_id} answered HTTP {status}: {snippet(raw)}"
            raise reply_error(status, self._redact(message, key), rate_limit_wait_s(reply_headers))
        if reply is None:
            try:
                reply = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidReplyError(
                    f"agent {agent.agent_id} replied with invalid JSON: {exc}"
                ) from exc
        return outcome_from_completion(reply, agent)

    def check_health(self, agent: AgentInfo, *, timeout_s: float) -> HealthReport:
        """``GET {endpoint}/models``; without the key in this process, says ``unknown``."""
        try:
            key = self._api_key(agent, required=True)
        except CredentialsError:
            return HealthReport(
                healthy=False,
                status="unknown",
                message=f"{agent.policy.api_key_env} is not set here; workers read it per call",
            )
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            response = self.client.get(
                f"{agent.endpoint}/models", headers=headers, timeout=timeout_s
            )
        except httpx.HTTPError as exc:
            message = self._redact(repr(exc), key)
            return HealthReport(healthy=False, status="unreachable", message=message)
        return health_of(response)

    def close(self) -> None:
        self.client.close()
