"""Per-agent policy: how taskplane talks to one agent, stored with its registration.

An :class:`AgentPolicy` travels inside the agent's registry entry (camelCase
JSON), so every worker sees the same policy at once. It carries what the
``openai`` and ``mcp`` transports need, the agent's own request limit
(``maxRequests`` per ``windowMs``), its cap on calls in flight
(``maxInFlight``), the named :class:`Quota` it shares with other agents, its
circuit breaker's thresholds and its calls' ``timeout`` and ``maxRetries``.
Unset fields mean "use the settings' default" (no in-flight cap by default).

The breaker fields are read at every call, so a changed policy applies at
once, on every worker. ``timeout`` and ``maxRetries`` fill in what an agent
task's own ``metadata`` leaves unset when its plan is submitted
(:func:`with_agent_defaults`): a plan keeps the values it started with.

Secrets are never part of a policy: an API key is named by the environment
variable that holds it (``apiKeyEnv``) and read by the worker at call time.
A registration that tries to store a key itself is refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from taskplane.errors import ValidationError
from taskplane.models import ExecutionTask, TaskType
from taskplane.proxy.breaker_storage import BreakerPolicy

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Keys that would put a secret into Redis; refused with a pointer to ``apiKeyEnv``.
SECRET_KEYS = frozenset({"apiKey", "api_key", "key", "token", "secret", "password"})
#: Protocols that need a ``model`` in their policy.
MODEL_PROTOCOLS = ("openai",)
#: Highest accepted request limit per window (more is a typo, not a limit).
MAX_REQUESTS_CEILING = 10_000_000
#: Highest accepted token limit or estimate per window.
MAX_TOKENS_CEILING = 10_000_000_000
#: Highest accepted ``maxInFlight``.
MAX_IN_FLIGHT_CEILING = 1_000_000
#: Longest accepted limit window, breaker period or call timeout: one day (ms).
MAX_WINDOW_MS = 86_400_000
#: Highest accepted ``failureThreshold``.
MAX_FAILURE_THRESHOLD = 10_000
_QUOTA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,99}$")


class AgentPolicy(BaseModel):
    """How to call one agent (camelCase in JSON, snake_case in Python).

    Attributes:
        model: ``openai``: the model name sent with every request (required there).
        api_key_env: ``openai``: name of the environment variable holding the API
            key, read by the worker at call time; unset means no ``Authorization``.
        system: ``openai``: a system prompt put before the task's messages.
        json_output: ``openai`` (``json`` on the wire): ask for one JSON object
            (``response_format: {"type": "json_object"}``) and parse the reply.
        logprobs: ``openai``: ask for token log-probabilities, so a reply that
            states no confidence gets one (the mean token probability).
        stream: ``openai``: stream the reply (server-sent chunks), folded into one.
        temperature: ``openai``: sampling temperature, if set.
        max_reply_tokens: ``openai``: longest reply, in tokens, if set (sent as
            ``max_tokens``).
        tool: ``mcp``: the tool to call (a task's ``metadata.tool`` overrides it).
        max_requests: At most this many calls to the agent start in any
            ``window_ms``, cluster-wide (unset: the settings' ``rate_limit``).
        max_tokens: At most this many tokens used by calls to the agent that
            start in any ``window_ms``, cluster-wide (unset: no token limit). A
            call reserves an estimate and is settled to its reported usage.
        estimated_tokens: What a call is expected to use when its task gives no
            ``metadata.estimatedTokens`` and the agent has no recent mean yet
            (unset: 1000).
        window_ms: The window of ``max_requests`` and ``max_tokens`` (unset: the settings').
        quota: Name of a registered :class:`Quota` this agent also draws from.
        max_in_flight: At most this many calls to the agent in flight at once,
            cluster-wide (unset: no cap).
        failure_threshold: Failures within ``monitoring_period`` that open the
            agent's circuit (unset: the settings' ``circuit_breaker``).
        reset_timeout: How long an open circuit fails fast before a trial call, ms.
        monitoring_period: The window failures are counted in, ms.
        timeout: One call's timeout, ms, for tasks that set no ``metadata.timeout``
            (unset: the settings' ``default_timeout``).
        max_retries: Retries for tasks that set no ``metadata.retries`` (unset:
            the settings' ``retry_config.max_retries``).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    model: str | None = None
    api_key_env: str | None = None
    system: str | None = None
    json_output: bool = Field(default=False, alias="json")
    logprobs: bool = False
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_reply_tokens: int | None = Field(default=None, gt=0)
    tool: str | None = None
    max_requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS_CEILING)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    estimated_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    window_ms: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MS)
    quota: str | None = None
    max_in_flight: int | None = Field(default=None, ge=1, le=MAX_IN_FLIGHT_CEILING)
    failure_threshold: int | None = Field(default=None, ge=1, le=MAX_FAILURE_THRESHOLD)
    reset_timeout: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MS)
    monitoring_period: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MS)
    timeout: int | None = Field(default=None, ge=1, le=MAX_WINDOW_MS)
    max_retries: int | None = Field(default=None, ge=0, le=100)

    @field_validator("quota")
    @classmethod
    def _quota_name(cls, value: str | None) -> str | None:
        if value is not None and not _QUOTA_NAME.fullmatch(value):
            raise ValueError("must be a quota name (letters, digits, . _ -; at most 100)")
        return value

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("must be an environment variable name (letters, digits, _)")
        return value

    @field_validator("model", "tool")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be blank")
        return value

    def breaker_policy(self, default: BreakerPolicy) -> BreakerPolicy | None:
        """This agent's breaker thresholds over *default*; None when it sets none."""
        own = (self.failure_threshold, self.reset_timeout, self.monitoring_period)
        if all(value is None for value in own):
            return None
        return BreakerPolicy(
            failure_threshold=self.failure_threshold or default.failure_threshold,
            monitoring_period_s=_seconds(self.monitoring_period, default.monitoring_period_s),
            reset_timeout_s=_seconds(self.reset_timeout, default.reset_timeout_s),
        )

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_defaults=True)


def _seconds(ms: int | None, default_s: float) -> float:
    return default_s if ms is None else ms / 1000.0


class Quota(BaseModel):
    """A named limit several agents draw from together, in requests and tokens (a provider key).

    A call to an agent whose policy names the quota needs a slot in the
    agent's own windows *and* in the quota's, cluster-wide.

    Attributes:
        name: What agents' ``policy.quota`` names.
        max_requests: At most this many calls, over all its agents, per ``window_ms``.
        max_tokens: At most this many tokens, over all its agents, per ``window_ms``.
        window_ms: The window, in ms.
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: str
    max_requests: int | None = Field(default=None, ge=1, le=MAX_REQUESTS_CEILING)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS_CEILING)
    window_ms: int = Field(default=60000, ge=1, le=MAX_WINDOW_MS)

    @model_validator(mode="after")
    def _limits_something(self) -> Quota:
        if self.max_requests is None and self.max_tokens is None:
            raise ValueError("needs maxRequests, maxTokens or both")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _QUOTA_NAME.fullmatch(value):
            raise ValueError("must be a quota name (letters, digits, . _ -; at most 100)")
        return value


def make_quota(
    name: str,
    *,
    max_requests: int | None = None,
    max_tokens: int | None = None,
    window_ms: int = 60000,
) -> Quota:
    """Validate a quota.

    Raises:
        ValidationError: Names the bad field (``quota.name``, ``quota.maxRequests``,
            ``quota.maxTokens``, ``quota.windowMs``; ``quota`` when it limits nothing).
    """
    try:
        return Quota(
            name=name, max_requests=max_requests, max_tokens=max_tokens, window_ms=window_ms
        )
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = to_camel(str(first["loc"][0])) if first["loc"] else ""
        name_ = f"quota.{field}" if field else "quota"
        raise ValidationError(
            f"invalid quota: {name_}: {first['msg']}", [{"field": name_, "message": first["msg"]}]
        ) from None


def _problem(field: str, message: str) -> ValidationError:
    name = f"policy.{field}" if field else "policy"
    return ValidationError(
        f"invalid agent registration: {name}: {message}", [{"field": name, "message": message}]
    )


def unknown_quota(name: str) -> ValidationError:
    """The error for a policy naming a quota nobody registered."""
    return _problem("quota", f"unknown quota {name!r}; register it first (register_quota)")


def make_policy(raw: AgentPolicy | dict[str, Any] | None, protocol: str) -> AgentPolicy:
    """Validate a registration's policy for *protocol*.

    Unknown keys are refused (a typo would otherwise be silently ignored), and
    so is any key that looks like a secret itself.

    Raises:
        ValidationError: Names the bad field as ``policy.<field>``; never echoes values.
    """
    if raw is None:
        policy = AgentPolicy()
    elif isinstance(raw, AgentPolicy):
        policy = raw
    elif not isinstance(raw, dict):
        raise _problem("", "must be an object")
    else:
        for key in raw:
            if key in SECRET_KEYS:
                raise _problem(
                    str(key),
                    "secrets are never stored; put the key in an environment "
                    "variable on the workers and name it in apiKeyEnv",
                )
        aliases = sorted(f.alias or name for name, f in AgentPolicy.model_fields.items())
        accepted = set(aliases) | set(AgentPolicy.model_fields)
        unknown = sorted(str(key) for key in raw if key not in accepted)
        if unknown:
            raise _problem(unknown[0], f"unknown field (known: {', '.join(aliases)})")
        try:
            policy = AgentPolicy.model_validate(raw)
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise _problem(field, first["msg"]) from None
    if protocol in MODEL_PROTOCOLS and not policy.model:
        raise _problem("model", f"is required for protocol {protocol!r}")
    return policy


#: Reads the policies of the registered agents among some ids (unknown ids left out).
PolicyLookup = Callable[[Iterable[str]], Mapping[str, AgentPolicy]]
_PlanT = TypeVar("_PlanT", bound=BaseModel)


def with_agent_defaults(plan: _PlanT, lookup: PolicyLookup) -> _PlanT:
    """*plan* with each agent task's unset ``timeout``/``retries`` taken from its agent's policy.

    Done once, when the plan is submitted, so everything downstream (the
    visibility-timeout check, leases, countdowns, the runner) sees one value.
    An agent nobody registered is left alone: its task fails when it runs.
    """
    tasks: list[ExecutionTask] = plan.tasks  # type: ignore[attr-defined]
    open_ = {
        t.target
        for t in tasks
        if t.type is TaskType.AGENT and (t.metadata.timeout is None or t.metadata.retries is None)
    }
    if not open_:
        return plan
    policies = lookup(sorted(open_))
    filled = [_task_with_defaults(task, policies.get(task.target)) for task in tasks]
    if all(new is old for new, old in zip(filled, tasks, strict=True)):
        return plan
    return plan.model_copy(update={"tasks": filled})


def task_with_agent_defaults(task: ExecutionTask, lookup: PolicyLookup) -> ExecutionTask:
    """One task with its agent's defaults (see :func:`with_agent_defaults`)."""
    if task.type is not TaskType.AGENT or (
        task.metadata.timeout is not None and task.metadata.retries is not None
    ):
        return task
    return _task_with_defaults(task, lookup([task.target]).get(task.target))


def _task_with_defaults(task: ExecutionTask, policy: AgentPolicy | None) -> ExecutionTask:
    if policy is None or task.type is not TaskType.AGENT:
        return task
    update: dict[str, int] = {}
    if task.metadata.timeout is None and policy.timeout is not None:
        update["timeout"] = policy.timeout
    if task.metadata.retries is None and policy.max_retries is not None:
        update["retries"] = policy.max_retries
    if not update:
        return task
    return task.model_copy(update={"metadata": task.metadata.model_copy(update=update)})
