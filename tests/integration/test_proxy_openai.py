"""``protocol="openai"`` through real workers against a real OpenAI-compatible server.

The workers read the API key from ``TASKPLANE_TEST_OPENAI_KEY`` (set in the
cluster's environment only); the last test scans Redis, the event stream,
worker logs, results and ``taskplane agents list`` for it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskplane import ExecutionEngine, ExecutionResult, ExecutionTask
from tests.integration.conftest import LOG_DIR, ROOT, TEST_API_KEY, TEST_API_KEY_ENV, Cluster
from tests.openai_server import LOGPROBS, OpenAICompatServer

pytestmark = pytest.mark.integration

#: Every result seen by these tests, scanned for the key at the end.
SEEN_RESULTS: list[ExecutionResult] = []


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAICompatServer]:
    with OpenAICompatServer(api_key=TEST_API_KEY) as running:
        yield running


@pytest.fixture
def llm(server: OpenAICompatServer) -> OpenAICompatServer:
    server.mode, server.script, server.reset_tokens = "ok", [], "1s"
    with server.lock:
        server.requests.clear()
        server.timestamps.clear()
    return server


def register(engine: ExecutionEngine, agent_id: str, server: OpenAICompatServer, **policy: Any):
    return engine.register_agent(
        agent_id,
        server.base_url,
        protocol="openai",
        capabilities=["chat"],
        policy={"model": "test-model", "apiKeyEnv": TEST_API_KEY_ENV, **policy},
    )


def run(engine: ExecutionEngine, agent_id: str, payload: dict[str, Any], **meta: Any):
    task = ExecutionTask(id="t1", type="agent", target=agent_id, payload=payload, metadata=meta)
    result = engine.execute_task(task)
    SEEN_RESULTS.append(result)
    return result


def test_json_reply_with_stated_confidence_and_usage(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    llm.mode = "json"
    info = register(engine, f"oa-{uid}", llm, system="You judge.", json=True)
    assert info.policy.model == "test-model" and info.policy.json_output is True
    result = run(engine, f"oa-{uid}", {"prompt": "Rate this", "data": {"x": 1}}, cache=False)
    assert result.status == "success", result.error
    assert result.result == {"answer": 'Rate this\n\n{\n  "x": 1\n}', "confidence": 0.83}
    assert result.confidence == 0.83
    assert result.metadata["usage"] == {"inputTokens": 11, "outputTokens": 7}
    assert result.metadata["confidenceSource"] == "reply"
    (request,) = llm.requests
    body = request["body"]
    assert body["model"] == "test-model"
    assert body["response_format"] == {"type": "json_object"}
    assert body["messages"][0] == {"role": "system", "content": "You judge."}
    assert body["messages"][-1]["role"] == "user"
    # The worker read the key from its own environment and sent it.
    assert request["headers"]["Authorization"] == f"Bearer {TEST_API_KEY}"
    assert request["headers"]["X-Taskplane-Task-Id"] == "t1"


def test_text_reply_confidence_from_logprobs(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    llm.mode = "logprobs"
    register(engine, f"lp-{uid}", llm, logprobs=True)
    messages = [{"role": "user", "content": f"hello {uid}"}]
    result = run(engine, f"lp-{uid}", {"messages": messages})
    assert result.status == "success", result.error
    assert result.result == f"echo: hello {uid}"
    expected = sum(math.exp(lp) for lp in LOGPROBS) / len(LOGPROBS)
    assert result.confidence == pytest.approx(expected)
    assert result.metadata["confidenceSource"] == "logprobs"
    assert llm.requests[0]["body"]["logprobs"] is True
    assert llm.requests[0]["body"]["messages"] == messages


@pytest.mark.parametrize("mode", ["json", "logprobs"])
def test_a_streamed_reply_is_folded_into_one(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str, mode: str
) -> None:
    llm.mode = mode
    json_mode = mode == "json"
    register(engine, f"st-{uid}", llm, stream=True, json=json_mode, logprobs=not json_mode)
    result = run(engine, f"st-{uid}", {"prompt": f"stream {uid}"})
    assert result.status == "success", result.error
    body = llm.requests[0]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert result.metadata["usage"] == {"inputTokens": 11, "outputTokens": 7}
    if json_mode:
        assert result.result == {"answer": f"stream {uid}", "confidence": 0.83}
        assert result.confidence == 0.83
    else:
        assert result.result == f"echo: stream {uid}"
        expected = sum(math.exp(lp) for lp in LOGPROBS) / len(LOGPROBS)
        assert result.confidence == pytest.approx(expected)


def test_no_confidence_when_the_endpoint_gives_none(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    register(engine, f"nc-{uid}", llm)
    result = run(engine, f"nc-{uid}", {"task": "summarise"})
    assert result.status == "success", result.error
    assert (result.result, result.confidence) == ("echo: summarise", None)


def test_429_waits_for_the_exhausted_limits_reset(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    llm.script = ["throttle"]
    llm.reset_tokens = "1s"  # tokens are exhausted: wait 1 s, not the 20 ms of requests
    register(engine, f"rl-{uid}", llm)
    result = run(engine, f"rl-{uid}", {"prompt": "hi"}, retries=2)
    assert result.status == "success", result.error
    assert result.retries == 1 and llm.calls == 2
    gap = llm.timestamps[1] - llm.timestamps[0]
    assert 0.9 <= gap < 5.0  # the 50 ms backoff alone would retry far sooner


def test_5xx_is_retried_then_fails(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    llm.mode = "fail"
    register(engine, f"5x-{uid}", llm)
    result = run(engine, f"5x-{uid}", {"prompt": "hi"}, retries=2)
    assert result.status == "failure"
    assert "HTTP 500" in (result.error or "")
    assert llm.calls == 3 and result.retries == 2


def test_4xx_is_not_retried(engine: ExecutionEngine, llm: OpenAICompatServer, uid: str) -> None:
    llm.mode = "reject"
    register(engine, f"4x-{uid}", llm)
    result = run(engine, f"4x-{uid}", {"prompt": "hi"}, retries=2)
    assert result.status == "failure" and "HTTP 400" in (result.error or "")
    assert llm.calls == 1


def test_timeout(engine: ExecutionEngine, llm: OpenAICompatServer, uid: str) -> None:
    llm.script = ["hang"]
    register(engine, f"to-{uid}", llm)
    result = run(engine, f"to-{uid}", {"prompt": "hi"}, timeout=500, retries=0)
    assert result.status == "timeout", result.error
    assert llm.calls == 1


def test_missing_key_variable_fails_naming_it(
    engine: ExecutionEngine, llm: OpenAICompatServer, uid: str
) -> None:
    engine.register_agent(
        f"nk-{uid}",
        llm.base_url,
        protocol="openai",
        policy={"model": "m", "apiKeyEnv": "TASKPLANE_TEST_UNSET_KEY"},
    )
    result = run(engine, f"nk-{uid}", {"prompt": "hi"}, retries=2)
    assert result.status == "failure"
    assert "TASKPLANE_TEST_UNSET_KEY" in (result.error or "") and llm.calls == 0


def test_cli_adds_an_openai_agent_and_refuses_a_key_in_the_policy(
    cluster: Cluster, llm: OpenAICompatServer, uid: str
) -> None:
    env = {**os.environ, **cluster.env, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "taskplane.cli", "agents", "add", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )

    added = cli(
        f"cli-{uid}",
        llm.base_url,
        "--protocol",
        "openai",
        "--model",
        "m1",
        "--api-key-env",
        TEST_API_KEY_ENV,
        "--json-reply",
    )
    assert added.returncode == 0, added.stderr
    assert f"registered agent cli-{uid}" in added.stdout and "(openai)" in added.stdout
    # This process has the key, so registration checked the endpoint with it.
    assert "healthy" in added.stdout and "NOT" not in added.stdout
    refused = cli(
        f"bad-{uid}",
        llm.base_url,
        "--protocol",
        "openai",
        "--policy",
        json.dumps({"model": "m", "apiKey": TEST_API_KEY}),
    )
    assert refused.returncode == 1
    assert "policy.apiKey: secrets are never stored" in refused.stderr
    assert TEST_API_KEY not in refused.stdout + refused.stderr
    missing = cli(f"bad-{uid}", llm.base_url, "--protocol", "openai")
    assert missing.returncode == 1 and "policy.model: is required" in missing.stderr


def _redis_values(client: redis.Redis) -> Iterator[str]:
    for key in client.scan_iter(count=1000):
        yield key
        kind = client.type(key)
        if kind == "string":
            yield str(client.get(key))
        elif kind == "hash":
            yield json.dumps(client.hgetall(key))
        elif kind == "list":
            yield json.dumps(client.lrange(key, 0, -1))
        elif kind == "set":
            yield json.dumps(sorted(client.smembers(key)))
        elif kind == "zset":
            yield json.dumps(client.zrange(key, 0, -1))
        elif kind == "stream":
            yield json.dumps(client.xrange(key))


def test_the_key_is_nowhere(
    cluster: Cluster, engine: ExecutionEngine, llm: OpenAICompatServer, uid: str, redis_url: str
) -> None:
    register(engine, f"sk-{uid}", llm)
    assert run(engine, f"sk-{uid}", {"prompt": "ok"}).status == "success"
    llm.mode = "reject"
    assert run(engine, f"sk-{uid}", {"prompt": "no"}).status == "failure"
    assert SEEN_RESULTS, "the other tests ran first"
    for result in SEEN_RESULTS:
        assert TEST_API_KEY not in result.model_dump_json()
    base = redis.Redis.from_url(redis_url, decode_responses=True)
    for db in range(16):
        client = redis.Redis(
            host=base.connection_pool.connection_kwargs["host"],
            port=base.connection_pool.connection_kwargs["port"],
            db=db,
            decode_responses=True,
        )
        for value in _redis_values(client):
            assert TEST_API_KEY not in value, f"the key is in Redis db {db}"
        client.close()
    base.close()
    events = json.dumps(engine.events.recent(10_000))
    assert f"sk-{uid}" in events  # the stream holds these tests' events
    assert TEST_API_KEY not in events
    for log in LOG_DIR.glob("*.log"):
        assert TEST_API_KEY not in log.read_text(errors="replace"), log.name
    env = {**os.environ, **cluster.env, "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    for args in (["agents", "list"], ["agents", "list", "--json"]):
        shown = subprocess.run(
            [sys.executable, "-m", "taskplane.cli", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert shown.returncode == 0, shown.stderr
        assert f"sk-{uid}" in shown.stdout and TEST_API_KEY_ENV in shown.stdout
        assert TEST_API_KEY not in shown.stdout + shown.stderr
