"""The agent registry: which agents exist, where they listen and what they can do.

:class:`RedisAgentRegistry` keeps every agent in one Redis hash
(``{prefix}:{registry}:agents``, field = agent id, value = the agent's JSON), so every
worker on every host sees a registration at once. :class:`InMemoryAgentRegistry`
is the same thing for tests and local use.

Registering an agent again replaces its entry only; its circuit breaker and
rate limiter are keyed by agent id elsewhere and keep their state. Quotas
(named limits several agents share) live beside the agents, in
``{prefix}:{registry}:quotas``; registering a quota again changes its limit, not its window.
"""

from __future__ import annotations

import builtins
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal, cast
from urllib.parse import urlsplit

import pydantic
import redis
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from taskplane.errors import BackendError, ValidationError
from taskplane.keys import registry_key
from taskplane.proxy.policy import AgentPolicy, Quota, make_policy
from taskplane.redisio import translated

AgentProtocol = Literal["http", "grpc", "openai", "a2a", "mcp"]
#: Every protocol an agent may speak.
PROTOCOLS: tuple[str, ...] = ("http", "grpc", "openai", "a2a", "mcp")
#: Protocols whose endpoint is an ``http(s)://`` URL.
URL_PROTOCOLS = ("http", "openai", "a2a", "mcp")

#: Longest agent id accepted (ids name Redis keys and log lines).
MAX_AGENT_ID_LENGTH = 200
#: Schemes a gRPC endpoint may carry; ``grpcs`` means TLS.
GRPC_SCHEMES = ("grpc", "grpcs")

#: What a BackendError from Redis names as the component.
_COMPONENT = "agent registry"

_AGENT_ID = re.compile(r"^[^\s\x00-\x1f]+$")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_]+):(\d{1,5})$")


class AgentInfo(BaseModel):
    """One registered agent (camelCase in JSON, snake_case in Python).

    Attributes:
        agent_id: The id tasks name as their ``target``.
        endpoint: ``http(s)://host[:port][/path]`` for HTTP, OpenAI-compatible
            (the base URL, e.g. ``https://api.openai.com/v1``), A2A (the agent's
            base URL) and MCP (the streamable-HTTP URL, e.g. ``…/mcp``) agents;
            ``host:port``, ``grpc://host:port`` or ``grpcs://host:port`` (TLS) for gRPC.
        protocol: ``"http"``, ``"grpc"``, ``"openai"``, ``"a2a"`` or ``"mcp"``.
        capabilities: What the agent can do (part of the result cache key).
        policy: How to call it (model, API key variable, tool, …); see
            :class:`~taskplane.proxy.policy.AgentPolicy`.
        registered_at: Epoch seconds of the latest registration.
        healthy: Outcome of the health check at registration; None if none was made.
        health_message: What the health check said (why it failed, when it did).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    agent_id: str
    endpoint: str
    protocol: AgentProtocol = "http"
    capabilities: list[str] = Field(default_factory=list)
    policy: AgentPolicy = Field(default_factory=AgentPolicy)
    registered_at: float = 0.0
    healthy: bool | None = None
    health_message: str = ""

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form."""
        return self.model_dump(mode="json", by_alias=True)


def _problem(field: str, message: str) -> ValidationError:
    return ValidationError(
        f"invalid agent registration: {field}: {message}", [{"field": field, "message": message}]
    )


def _valid_port(text: str) -> bool:
    return 0 < int(text) < 65536


def normalise_endpoint(endpoint: str, protocol: str) -> str:
    """Check *endpoint* against *protocol* and return its canonical form.

    HTTP endpoints lose a trailing ``/``; gRPC endpoints keep their scheme
    only when it is ``grpcs`` (TLS).

    Raises:
        ValidationError: The endpoint does not fit the protocol; names ``endpoint``.
    """
    text = endpoint.strip() if isinstance(endpoint, str) else ""
    if not text:
        raise _problem("endpoint", "must not be empty")
    if protocol in URL_PROTOCOLS:
        try:
            parts = urlsplit(text)
            port = parts.port  # raises ValueError when out of range
        except ValueError as exc:
            raise _problem("endpoint", f"is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _problem("endpoint", f"must look like http(s)://host:port for a {protocol} agent")
        if parts.query or parts.fragment or (port is not None and port == 0):
            raise _problem("endpoint", "must be http(s)://host:port[/path], no query or fragment")
        return text.rstrip("/")
    scheme, _, rest = text.rpartition("://")
    if scheme and scheme not in GRPC_SCHEMES:
        raise _problem("endpoint", "must look like host:port or grpc://host:port for a gRPC agent")
    match = _HOST_PORT.match(rest)
    if match is None or not _valid_port(match.group(2)):
        raise _problem("endpoint", "must look like host:port or grpc://host:port for a gRPC agent")
    return text if scheme == "grpcs" else rest


def make_agent_info(
    agent_id: str,
    endpoint: str,
    protocol: str = "http",
    capabilities: Iterable[str] = (),
    *,
    policy: AgentPolicy | dict[str, Any] | None = None,
    registered_at: float | None = None,
) -> AgentInfo:
    """Validate a registration and build its :class:`AgentInfo`.

    Raises:
        ValidationError: Names the bad field (``agentId``, ``protocol``,
            ``endpoint``, ``capabilities`` or ``policy.<field>``).
    """
    if not isinstance(agent_id, str) or not agent_id.strip():
        raise _problem("agentId", "must not be empty")
    if len(agent_id) > MAX_AGENT_ID_LENGTH or not _AGENT_ID.fullmatch(agent_id):
        raise _problem("agentId", f"must be 1-{MAX_AGENT_ID_LENGTH} printable chars, no spaces")
    if protocol not in PROTOCOLS:
        raise _problem("protocol", f"must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    if isinstance(capabilities, str):
        raise _problem("capabilities", "must be a list of strings, not one string")
    try:
        caps = list(capabilities)
    except TypeError:
        raise _problem("capabilities", "must be a list of strings") from None
    if not all(isinstance(cap, str) and cap.strip() for cap in caps):
        raise _problem("capabilities", "must be non-empty strings")
    return AgentInfo(
        agent_id=agent_id,
        endpoint=normalise_endpoint(endpoint, protocol),
        protocol=cast(AgentProtocol, protocol),
        capabilities=caps,
        policy=make_policy(policy, protocol),
        registered_at=time.time() if registered_at is None else registered_at,
    )


class AgentRegistry(ABC):
    """Where agents are registered; every method is safe to call from many threads."""

    @abstractmethod
    def register(self, info: AgentInfo) -> None:
        """Add *info*, replacing any agent with the same id."""

    @abstractmethod
    def unregister(self, agent_id: str) -> bool:
        """Remove an agent; True if it was registered."""

    @abstractmethod
    def get(self, agent_id: str) -> AgentInfo | None:
        """The agent with this id, or None."""

    @abstractmethod
    def list(self) -> builtins.list[AgentInfo]:
        """Every registered agent, ordered by id."""

    def policies(self, agent_ids: Iterable[str]) -> dict[str, AgentPolicy]:
        """The policy of each registered agent among *agent_ids* (unknown ids left out)."""
        found = (self.get(agent_id) for agent_id in agent_ids)
        return {info.agent_id: info.policy for info in found if info is not None}

    @abstractmethod
    def register_quota(self, quota: Quota) -> None:
        """Add *quota*, replacing any quota with the same name."""

    @abstractmethod
    def get_quota(self, name: str) -> Quota | None:
        """The quota called *name*, or None."""

    @abstractmethod
    def list_quotas(self) -> builtins.list[Quota]:
        """Every registered quota, ordered by name."""


class InMemoryAgentRegistry(AgentRegistry):
    """A registry in this process's memory, for tests and single-process use."""

    def __init__(self) -> None:
        self._agents: dict[str, AgentInfo] = {}
        self._quotas: dict[str, Quota] = {}
        self._lock = threading.Lock()

    def register(self, info: AgentInfo) -> None:
        with self._lock:
            self._agents[info.agent_id] = info.model_copy(deep=True)

    def unregister(self, agent_id: str) -> bool:
        with self._lock:
            return self._agents.pop(agent_id, None) is not None

    def get(self, agent_id: str) -> AgentInfo | None:
        with self._lock:
            info = self._agents.get(agent_id)
        return None if info is None else info.model_copy(deep=True)

    def list(self) -> builtins.list[AgentInfo]:
        with self._lock:
            return [self._agents[key].model_copy(deep=True) for key in sorted(self._agents)]

    def register_quota(self, quota: Quota) -> None:
        with self._lock:
            self._quotas[quota.name] = quota.model_copy()

    def get_quota(self, name: str) -> Quota | None:
        with self._lock:
            quota = self._quotas.get(name)
        return None if quota is None else quota.model_copy()

    def list_quotas(self) -> builtins.list[Quota]:
        with self._lock:
            return [self._quotas[name].model_copy() for name in sorted(self._quotas)]


class RedisAgentRegistry(AgentRegistry):
    """A registry in one Redis hash, shared by every process.

    Args:
        client: A Redis client (``decode_responses`` either way).
        prefix: Key prefix; the hashes are ``{prefix}:{registry}:agents`` and ``…:quotas``.

    Raises:
        BackendError: From every method, when Redis cannot be reached.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "taskplane") -> None:
        self.client = client
        self.key = registry_key(prefix, "agents")
        self.quotas_key = registry_key(prefix, "quotas")

    def _decode(self, raw: Any) -> AgentInfo | None:
        if raw is None:
            return None
        try:
            return AgentInfo.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise BackendError(f"agent entry in {self.key} is corrupt: {exc}") from exc

    def register(self, info: AgentInfo) -> None:
        with translated(_COMPONENT, f"registering agent {info.agent_id}"):
            self.client.hset(self.key, info.agent_id, info.model_dump_json(by_alias=True))

    def unregister(self, agent_id: str) -> bool:
        with translated(_COMPONENT, f"unregistering agent {agent_id}"):
            return bool(self.client.hdel(self.key, agent_id))

    def get(self, agent_id: str) -> AgentInfo | None:
        with translated(_COMPONENT, f"reading agent {agent_id}"):
            raw = self.client.hget(self.key, agent_id)
        return self._decode(raw)

    def policies(self, agent_ids: Iterable[str]) -> dict[str, AgentPolicy]:
        wanted = list(agent_ids)
        if not wanted:
            return {}
        with translated(_COMPONENT, "reading agents"):
            entries = self.client.hmget(self.key, wanted)
        found = (self._decode(raw) for raw in entries)
        return {info.agent_id: info.policy for info in found if info is not None}

    def list(self) -> builtins.list[AgentInfo]:
        with translated(_COMPONENT, "listing agents"):
            entries = self.client.hgetall(self.key)
        agents = [self._decode(raw) for raw in entries.values()]
        return sorted((a for a in agents if a is not None), key=lambda a: a.agent_id)

    def register_quota(self, quota: Quota) -> None:
        with translated(_COMPONENT, f"registering quota {quota.name}"):
            self.client.hset(self.quotas_key, quota.name, quota.model_dump_json(by_alias=True))

    def _decode_quota(self, raw: Any) -> Quota:
        try:
            return Quota.model_validate_json(raw)
        except pydantic.ValidationError as exc:
            raise BackendError(f"quota entry in {self.quotas_key} is corrupt: {exc}") from exc

    def get_quota(self, name: str) -> Quota | None:
        with translated(_COMPONENT, f"reading quota {name}"):
            raw = self.client.hget(self.quotas_key, name)
        return None if raw is None else self._decode_quota(raw)

    def list_quotas(self) -> builtins.list[Quota]:
        with translated(_COMPONENT, "listing quotas"):
            entries = self.client.hgetall(self.quotas_key)
        return sorted((self._decode_quota(raw) for raw in entries.values()), key=lambda q: q.name)
