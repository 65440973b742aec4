"""The agent registry: validation, and the same behaviour in memory and in Redis."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import redis

from taskplane.errors import ValidationError
from taskplane.keys import registry_key
from taskplane.models import parse_plan
from taskplane.proxy.policy import AgentPolicy, Quota, with_agent_defaults
from taskplane.proxy.registry import (
    AgentInfo,
    AgentRegistry,
    InMemoryAgentRegistry,
    RedisAgentRegistry,
    make_agent_info,
)


@pytest.fixture(params=["memory", "redis"])
def registry(request: pytest.FixtureRequest) -> AgentRegistry:
    if request.param == "memory":
        return InMemoryAgentRegistry()
    return RedisAgentRegistry(request.getfixturevalue("redis_client"), prefix="tp-unit")


def info(agent_id: str, endpoint: str = "http://127.0.0.1:8080", **kw: object) -> AgentInfo:
    return make_agent_info(agent_id, endpoint, registered_at=1.0, **kw)  # type: ignore[arg-type]


def test_register_get_list_unregister(registry: AgentRegistry) -> None:
    registry.register(info("b", capabilities=["y", "x"]))
    registry.register(info("a", "grpc://10.0.0.1:50051", protocol="grpc"))
    got = registry.get("b")
    assert got is not None and got.capabilities == ["y", "x"]
    assert [a.agent_id for a in registry.list()] == ["a", "b"]
    assert registry.list()[0].endpoint == "10.0.0.1:50051"
    assert registry.unregister("a") is True
    assert registry.unregister("a") is False
    assert registry.get("a") is None


def test_registering_again_replaces_the_entry(registry: AgentRegistry) -> None:
    registry.register(info("a", "http://h:1"))
    registry.register(info("a", "http://h:2", capabilities=["new"]))
    got = registry.get("a")
    assert got is not None and (got.endpoint, got.capabilities) == ("http://h:2", ["new"])
    assert len(registry.list()) == 1


def test_redis_registry_is_seen_by_every_client(redis_url: str, redis_client: redis.Redis) -> None:
    RedisAgentRegistry(redis_client, prefix="tp-unit").register(info("shared"))
    other_client = redis.Redis.from_url(redis_url)
    try:
        seen = RedisAgentRegistry(other_client, prefix="tp-unit").get("shared")
    finally:
        other_client.close()
    assert seen is not None and seen.endpoint == "http://127.0.0.1:8080"
    assert redis_client.hexists(registry_key("tp-unit", "agents"), "shared")


def test_agent_info_json_is_camel_case_and_round_trips() -> None:
    agent = info("a", capabilities=["x"])
    data = agent.to_json_dict()
    assert data["agentId"] == "a" and data["registeredAt"] == 1.0 and "healthMessage" in data
    assert AgentInfo.model_validate(data) == agent


@pytest.mark.parametrize(
    ("endpoint", "protocol", "expected"),
    [
        ("http://127.0.0.1:8080/", "http", "http://127.0.0.1:8080"),
        ("https://agents.example.com/v1/a1", "http", "https://agents.example.com/v1/a1"),
        ("127.0.0.1:50051", "grpc", "127.0.0.1:50051"),
        ("grpc://agent:50051", "grpc", "agent:50051"),
        ("grpcs://agent.example.com:443", "grpc", "grpcs://agent.example.com:443"),
        ("[::1]:50051", "grpc", "[::1]:50051"),
    ],
)
def test_endpoints_are_normalised(endpoint: str, protocol: str, expected: str) -> None:
    assert info("a", endpoint, protocol=protocol).endpoint == expected


@pytest.mark.parametrize(
    ("agent_id", "endpoint", "protocol", "capabilities", "field"),
    [
        ("", "http://h:1", "http", [], "agentId"),
        ("has space", "http://h:1", "http", [], "agentId"),
        ("a", "http://h:1", "smtp", [], "protocol"),
        ("a", "", "http", [], "endpoint"),
        ("a", "ftp://h:21", "http", [], "endpoint"),
        ("a", "h:8080", "http", [], "endpoint"),
        ("a", "http://h:99999", "http", [], "endpoint"),
        ("a", "http://h:1/?q=1", "http", [], "endpoint"),
        ("a", "http://h:1", "grpc", [], "endpoint"),
        ("a", "agent", "grpc", [], "endpoint"),
        ("a", "agent:0", "grpc", [], "endpoint"),
        ("a", "http://h:1", "http", [""], "capabilities"),
        ("a", "http://h:1", "http", "xyz", "capabilities"),
    ],
)
def test_bad_registrations_name_the_field(
    agent_id: str, endpoint: str, protocol: str, capabilities: object, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        make_agent_info(agent_id, endpoint, protocol, capabilities)  # type: ignore[arg-type]
    assert caught.value.errors[0]["field"] == field
    assert field in str(caught.value)


def test_quotas_are_registered_beside_the_agents(registry: AgentRegistry) -> None:
    registry.register_quota(Quota(name="team", max_requests=5))
    registry.register_quota(Quota(name="alpha", max_requests=9, window_ms=1000))
    assert registry.get_quota("team") == Quota(name="team", max_requests=5, window_ms=60000)
    assert [q.name for q in registry.list_quotas()] == ["alpha", "team"]
    registry.register_quota(Quota(name="team", max_requests=7))
    team = registry.get_quota("team")
    assert team is not None and team.max_requests == 7
    assert registry.get_quota("ghost") is None


def test_policies_are_read_for_many_agents_at_once(registry: AgentRegistry) -> None:
    registry.register(info("a", policy={"timeout": 900, "maxRetries": 0}))
    registry.register(info("b"))
    found = registry.policies(["a", "b", "ghost"])
    assert sorted(found) == ["a", "b"]
    assert (found["a"].timeout, found["a"].max_retries) == (900, 0)
    assert registry.policies([]) == {}


def test_agent_defaults_fill_only_what_a_task_leaves_unset() -> None:
    policies = {"slow": AgentPolicy(timeout=900, max_retries=0)}
    plan = parse_plan(
        {"id": "p", "tasks": [
            {"id": "a", "type": "agent", "target": "slow"},
            {"id": "b", "type": "agent", "target": "slow", "metadata": {"timeout": 50}},
            {"id": "c", "type": "agent", "target": "other"},
            {"id": "d", "type": "function", "target": "slow"},
        ]}
    )  # fmt: skip
    asked: list[list[str]] = []

    def lookup(ids: Iterable[str]) -> dict[str, AgentPolicy]:
        asked.append(list(ids))
        return {i: policies[i] for i in asked[-1] if i in policies}

    filled = with_agent_defaults(plan, lookup)
    meta = [(t.metadata.timeout, t.metadata.retries) for t in filled.tasks]
    assert meta == [(900, 0), (50, 0), (None, None), (None, None)]
    assert asked == [["other", "slow"]]  # one read for the whole plan
    assert (plan.tasks[0].metadata.timeout, plan.tasks[0].metadata.retries) == (
        None,
        None,
    )  # untouched


def test_a_plan_without_open_agent_tasks_reads_no_policy() -> None:
    plan = parse_plan({"id": "p", "tasks": [{"id": "f", "type": "function", "target": "x"}]})
    assert with_agent_defaults(plan, lambda ids: pytest.fail("read")) is plan
