"""Plans, tasks and results.

The wire format is the seed's camelCase JSON (``maxConcurrency``,
``executionTime``); Python code may use snake_case names too. Use
:func:`parse_task` / :func:`parse_plan` on untrusted input: they raise
:class:`taskplane.errors.ValidationError` naming every bad field.
"""

from __future__ import annotations

import json
import math
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from taskplane.errors import ValidationError

#: Ids name Redis keys and log lines: printable, no whitespace, bounded.
Identifier = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\s\x00-\x1f]+$")]

#: Largest payload accepted, as compact JSON.
MAX_PAYLOAD_BYTES = 1024 * 1024
#: Most tasks one plan may carry.
MAX_PLAN_TASKS = 10_000
#: Deepest nesting of objects and arrays accepted in a payload or metadata: JSON
#: decoders (the workers', the agents') give up on documents much deeper than this.
MAX_JSON_DEPTH = 100


class TaskType(StrEnum):
    """What a task's ``target`` names."""

    AGENT = "agent"
    PATTERN = "pattern"
    HTTP = "http"
    FUNCTION = "function"


class TaskStatus(StrEnum):
    """How a task ended."""

    SUCCESS = "success"
    FAILURE = "failure"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


class Strategy(StrEnum):
    """How a parallel plan combines its tasks."""

    ALL = "all"
    ALL_SETTLED = "allSettled"
    RACE = "race"
    WEIGHTED = "weighted"


class _Wire(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form."""
        return self.model_dump(mode="json", by_alias=True)


def _nested_deeper_than(value: Any, limit: int) -> bool:
    """True when *value* nests objects/arrays more than *limit* levels (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _check_json(value: Any, *, limit: int = MAX_PAYLOAD_BYTES) -> Any:
    if _nested_deeper_than(value, MAX_JSON_DEPTH):
        raise ValueError(f"nests objects and arrays more than {MAX_JSON_DEPTH} levels deep")
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable ({exc})") from exc
    except RecursionError:
        raise ValueError("is nested too deeply to encode as JSON") from None
    if len(text) > limit:
        raise ValueError(f"is {len(text)} bytes as JSON, more than the {limit} allowed")
    return value


class TaskMetadata(_Wire):
    """Per-task options. ``timeout`` is in ms; other keys are kept as given."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    timeout: int | None = Field(None, gt=0, le=24 * 3600 * 1000)
    retries: int | None = Field(None, ge=0, le=100)
    priority: float = Field(0, allow_inf_nan=False)
    pattern: str | None = None
    cache: bool | None = None
    idempotency_key: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _extra_is_json(self) -> TaskMetadata:
        _check_json(self.model_extra or {}, limit=64 * 1024)
        return self


class ExecutionTask(_Wire):
    """One unit of work: call an agent, run a pattern, a function or an HTTP request."""

    id: Identifier
    type: TaskType
    target: str = Field(min_length=1, max_length=2048)
    payload: dict[str, Any] = Field(default_factory=dict)
    metadata: TaskMetadata = Field(default_factory=TaskMetadata)

    @field_validator("payload")
    @classmethod
    def _payload_is_json(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _check_json(value)


class ExecutionResult(_Wire):
    """The envelope every task ends in; a task outcome never raises.

    ``execution_time`` is in ms. ``metadata`` says at least ``target``,
    ``cached``, ``attempts`` and ``worker`` (and ``agentId`` for agent tasks).
    """

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    task_id: str
    status: TaskStatus
    result: Any = None
    error: str | None = None
    confidence: float | None = None
    execution_time: float = 0.0
    retries: int = 0
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("confidence")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value

    @property
    def ok(self) -> bool:
        """True when the task succeeded."""
        return self.status is TaskStatus.SUCCESS


#: Largest number a plan budget may hold (tokens or calls).
MAX_BUDGET = 10**12


class PlanBudget(_Wire):
    """What a plan (and the patterns it runs) may spend on agent calls: tokens, calls or both."""

    tokens: pydantic.StrictInt | None = Field(None, gt=0, le=MAX_BUDGET)
    calls: pydantic.StrictInt | None = Field(None, gt=0, le=MAX_BUDGET)


class _Plan(_Wire):
    id: Identifier
    tasks: list[ExecutionTask] = Field(max_length=MAX_PLAN_TASKS)
    budget: PlanBudget | None = None

    @field_validator("tasks")
    @classmethod
    def _unique_ids(cls, tasks: list[ExecutionTask]) -> list[ExecutionTask]:
        seen: set[str] = set()
        for task in tasks:
            if task.id in seen:
                raise ValueError(f"task id {task.id!r} appears more than once")
            seen.add(task.id)
        return tasks


class ParallelExecutionPlan(_Plan):
    """Tasks run side by side. ``timeout`` (ms) is a deadline for the whole plan.

    ``max_concurrency`` left unset takes the engine's ``Settings.max_concurrency``.
    """

    kind: Literal["parallel"] = "parallel"
    strategy: Strategy = Strategy.ALL
    max_concurrency: int | None = Field(None, ge=1, le=10_000)
    timeout: int = Field(30000, gt=0, le=24 * 3600 * 1000)


class SequentialExecutionPlan(_Plan):
    """Tasks run one after another; task n+1 sees task n's result as ``payload.previous``."""

    kind: Literal["sequential"] = "sequential"
    continue_on_error: bool = False
    timeout: int = Field(60000, gt=0, le=24 * 3600 * 1000)


ExecutionPlan = ParallelExecutionPlan | SequentialExecutionPlan


def _raise_validation(exc: pydantic.ValidationError, what: str) -> None:
    errors = [
        {
            "field": ".".join(str(part) for part in err["loc"]) or what,
            "message": err["msg"],
        }
        for err in exc.errors()
    ]
    summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    raise ValidationError(f"invalid {what}: {summary}", errors) from None


def parse_task(data: ExecutionTask | dict[str, Any]) -> ExecutionTask:
    """Validate a task given as a model or a JSON dict.

    Raises:
        ValidationError: The message names every bad field.
    """
    if isinstance(data, ExecutionTask):
        return data
    if not isinstance(data, dict):
        raise ValidationError(f"invalid task: expected an object, got {type(data).__name__}")
    try:
        return ExecutionTask.model_validate(data)
    except pydantic.ValidationError as exc:
        _raise_validation(exc, "task")
        raise AssertionError("unreachable") from None


def plan_kind(data: dict[str, Any]) -> str:
    """Tell a sequential plan dict from a parallel one.

    ``kind`` decides when present; otherwise ``continueOnError`` means
    sequential and anything else parallel.
    """
    kind = data.get("kind")
    if kind is not None:
        return str(kind)
    if "continueOnError" in data or "continue_on_error" in data:
        return "sequential"
    return "parallel"


def parse_plan(data: ExecutionPlan | dict[str, Any], kind: str | None = None) -> ExecutionPlan:
    """Validate a plan given as a model or a JSON dict.

    Args:
        data: The plan.
        kind: ``"parallel"`` or ``"sequential"`` to insist on one; inferred otherwise.

    Raises:
        ValidationError: The message names every bad field.
    """
    if isinstance(data, ParallelExecutionPlan | SequentialExecutionPlan):
        if kind is not None and data.kind != kind:
            raise ValidationError(f"invalid plan: kind: expected a {kind} plan, got {data.kind}")
        return data
    if not isinstance(data, dict):
        raise ValidationError(f"invalid plan: expected an object, got {type(data).__name__}")
    wanted = kind or plan_kind(data)
    model: type[_Plan]
    if wanted == "parallel":
        model = ParallelExecutionPlan
    elif wanted == "sequential":
        model = SequentialExecutionPlan
    else:
        raise ValidationError(
            f"invalid plan: kind: must be 'parallel' or 'sequential', got {wanted!r}",
            [{"field": "kind", "message": "must be 'parallel' or 'sequential'"}],
        )
    if "kind" in data and data["kind"] != wanted:
        raise ValidationError(f"invalid plan: kind: expected a {wanted} plan, got {data['kind']}")
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        _raise_validation(exc, "plan")
        raise AssertionError("unreachable") from None


_CREDENTIALS = re.compile(r"(?<=://)([^/@\s:]*):([^/@\s]*)@")


def redact_credentials(text: str) -> str:
    """*text* with the password of any ``scheme://user:password@host`` replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m.group(1)}:***@", text)


def parse_result(data: ExecutionResult | dict[str, Any]) -> ExecutionResult:
    """Rebuild a result envelope from its JSON dict."""
    if isinstance(data, ExecutionResult):
        return data
    return ExecutionResult.model_validate(data)
