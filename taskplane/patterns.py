"""Nested patterns: named plan templates, and the bridge to a control plane's engine.

A *pattern* is a parallel or sequential plan template with an aggregation of
its results. Out of the box patterns are JSON or YAML files in
``Settings.patterns_dir``::

    name: code-review
    kind: sequential            # or parallel (then: strategy, maxConcurrency)
    timeout: 60000
    aggregate: last             # all | first | last | best-confidence | consensus | merge
    tasks:
      - id: architect
        type: agent
        target: architect
        payload: {task: design, code: "{{ input.code }}"}

``"{{ input.code }}"`` as a whole string is replaced by that input value (any
JSON type); inside a longer string it is replaced by its text. Nothing else is
evaluated.

Inside workers a ``pattern`` task expands into its plan without blocking a
worker slot (see :mod:`taskplane.plan.members`). :class:`PatternExecutor` is
the interface a control plane implements, and :class:`PatternExecutorAdapter`
bridges an object shaped like Parallax's ``PatternEngine`` to it.
"""

from __future__ import annotations

import importlib
import json
import re
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml
from pydantic import Field

from taskplane.contract import CallContext, Outcome
from taskplane.errors import ConfigurationError, NotFoundError, PatternError, ValidationError
from taskplane.models import (
    ExecutionPlan,
    ExecutionResult,
    ExecutionTask,
    TaskStatus,
    _Wire,
    parse_plan,
)

#: Deepest nesting of patterns inside patterns.
MAX_PATTERN_DEPTH = 5
AGGREGATIONS = ("all", "first", "last", "best-confidence", "consensus", "merge")
_TEMPLATE = re.compile(r"\{\{\s*input((?:\.[A-Za-z0-9_-]+)*)\s*\}\}")


class PatternExecutionResult(_Wire):
    """How a pattern run ended. ``execution_time`` is in ms."""

    id: str
    pattern_name: str
    status: str = Field(pattern="^(completed|failed)$")
    result: Any = None
    error: str | None = None
    confidence: float | None = None
    execution_time: float = 0.0


@runtime_checkable
class PatternExecutor(Protocol):
    """Runs a named pattern to its result."""

    def execute(
        self,
        pattern_name: str,
        input: Any,
        *,
        timeout: float | None = None,
        execution_id: str | None = None,
        parent_task_id: str | None = None,
    ) -> PatternExecutionResult:
        """Run *pattern_name* on *input*; *timeout* in ms."""
        ...


def _field(obj: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return default


class PatternExecutorAdapter:
    """A :class:`PatternExecutor` over a control plane's pattern engine.

    The engine needs ``execute_pattern(name, input, options)`` or
    ``executePattern(name, input, options)``, returning an object or dict with
    ``id``, ``status``, ``result``, ``error`` and ``confidence`` /
    ``executionTime`` (directly or under ``metrics``).
    """

    def __init__(self, pattern_engine: Any) -> None:
        call = _field(pattern_engine, "execute_pattern", "executePattern")
        if not callable(call):
            raise ValidationError(
                "invalid pattern engine: needs execute_pattern(name, input, options)"
            )
        self.pattern_engine = pattern_engine
        self._call = call

    def execute(
        self,
        pattern_name: str,
        input: Any,
        *,
        timeout: float | None = None,
        execution_id: str | None = None,
        parent_task_id: str | None = None,
    ) -> PatternExecutionResult:
        options = {
            "timeout": timeout,
            "executionId": execution_id,
            "parentTaskId": parent_task_id,
        }
        started = time.monotonic()
        try:
            raw = self._call(pattern_name, input, options)
        except Exception as exc:
            return PatternExecutionResult(
                id=execution_id or uuid.uuid4().hex,
                pattern_name=pattern_name,
                status="failed",
                error=f"{type(exc).__name__}: {exc}",
                execution_time=(time.monotonic() - started) * 1000.0,
            )
        metrics = _field(raw, "metrics", default={}) or {}
        status = str(_field(raw, "status", default="completed"))
        return PatternExecutionResult(
            id=str(_field(raw, "id", default=execution_id or uuid.uuid4().hex)),
            pattern_name=pattern_name,
            status="completed" if status in ("completed", "success", "succeeded") else "failed",
            result=_field(raw, "result"),
            error=_field(raw, "error"),
            confidence=_field(raw, "confidence", default=_field(metrics, "confidence")),
            execution_time=float(
                _field(raw, "executionTime", "execution_time", default=None)
                or _field(metrics, "executionTime", "execution_time", default=None)
                or (time.monotonic() - started) * 1000.0
            ),
        )


class PatternHandler:
    """Runner handler for ``pattern`` tasks that a :class:`PatternExecutor` runs (blocking)."""

    def __init__(self, executor: PatternExecutor) -> None:
        self.executor = executor

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        name = task.metadata.pattern or task.target
        outcome = self.executor.execute(
            name,
            task.payload,
            timeout=call.timeout_s * 1000.0,
            execution_id=call.plan_id,
            parent_task_id=task.id,
        )
        if outcome.status != "completed":
            raise PatternError(f"pattern {name}: {outcome.error or 'failed'}")
        return Outcome(
            result=outcome.result,
            confidence=outcome.confidence,
            metadata={"patternExecutionId": outcome.id},
        )


def load_pattern_executor(spec: str) -> PatternExecutor:
    """Import ``module:name`` — a :class:`PatternExecutor`, or a callable returning one.

    Raises:
        ConfigurationError: It cannot be imported or is no pattern executor; the
            message names ``TASKPLANE_PATTERN_EXECUTOR``.
    """
    module_name, _, attribute = spec.partition(":")
    try:
        found = getattr(importlib.import_module(module_name), attribute or "pattern_executor")
        ready = isinstance(found, PatternExecutor) and not isinstance(found, type)
        executor = found if ready else found()
    except Exception as exc:
        raise ConfigurationError(
            f"TASKPLANE_PATTERN_EXECUTOR: cannot load {spec!r}: {exc}"
        ) from exc
    if not isinstance(executor, PatternExecutor):
        raise ConfigurationError(
            f"TASKPLANE_PATTERN_EXECUTOR: {spec!r} gave {type(executor).__name__}, "
            "which has no execute(pattern_name, input, ...)"
        )
    return executor


def substitute(template: Any, input: Any) -> Any:
    """Replace ``{{ input.path }}`` references in *template* with values from *input*."""
    if isinstance(template, str):
        whole = _TEMPLATE.fullmatch(template.strip())
        if whole:
            return _lookup(input, whole.group(1))
        return _TEMPLATE.sub(lambda m: _text(_lookup(input, m.group(1))), template)
    if isinstance(template, list):
        return [substitute(item, input) for item in template]
    if isinstance(template, dict):
        return {key: substitute(value, input) for key, value in template.items()}
    return template


def _lookup(input: Any, path: str) -> Any:
    value = input
    for part in [p for p in path.split(".") if p]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def aggregate(how: str, results: list[ExecutionResult]) -> tuple[Any, float | None]:
    """Combine a pattern's task results into ``(result, confidence)``.

    Raises:
        PatternError: No task succeeded, or the aggregation is unknown.
    """
    ok = [r for r in results if r.ok]
    if not ok:
        raise PatternError("no task of the pattern succeeded")
    confidences = [r.confidence for r in ok if r.confidence is not None]
    mean = statistics.fmean(confidences) if confidences else None
    if how == "all":
        return [r.result for r in ok], mean
    if how == "first":
        return ok[0].result, ok[0].confidence
    if how == "last":
        return ok[-1].result, ok[-1].confidence
    if how == "best-confidence":
        best = max(ok, key=lambda r: -1.0 if r.confidence is None else r.confidence)
        return best.result, best.confidence
    if how == "consensus":
        votes = Counter(json.dumps(r.result, sort_keys=True) for r in ok)
        winner, count = votes.most_common(1)[0]
        agreeing = [r for r in ok if json.dumps(r.result, sort_keys=True) == winner]
        agree_conf = [r.confidence for r in agreeing if r.confidence is not None]
        share = count / len(results)
        confidence = share * (statistics.fmean(agree_conf) if agree_conf else 1.0)
        return json.loads(winner), confidence
    if how == "merge":
        merged: dict[str, Any] = {}
        for r in ok:
            if isinstance(r.result, dict):
                merged.update(r.result)
        return merged, mean
    raise PatternError(f"unknown aggregation {how!r}; use one of {', '.join(AGGREGATIONS)}")


@dataclass(frozen=True)
class PatternDefinition:
    """A pattern file, parsed."""

    name: str
    plan: dict[str, Any]
    aggregate: str = "last"
    description: str = ""
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def plan_for(self, input: Any, plan_id: str) -> ExecutionPlan:
        """The plan this pattern runs for *input*, as run *plan_id*."""
        data = {**substitute(self.plan, input), "id": plan_id}
        return parse_plan(data)


class FilePatternEngine:
    """Patterns read from ``*.json``, ``*.yaml`` and ``*.yml`` files of a directory.

    Files are re-read when they change, so a running worker sees edits.
    """

    def __init__(self, patterns_dir: str | Path) -> None:
        self.patterns_dir = Path(patterns_dir)
        self._cache: dict[Path, tuple[float, PatternDefinition]] = {}

    def names(self) -> list[str]:
        """Every pattern's name, sorted."""
        return sorted(p.name for p in self._definitions())

    def get(self, name: str) -> PatternDefinition:
        """The pattern called *name*.

        Raises:
            NotFoundError: ``Pattern <name> not found``.
        """
        for definition in self._definitions():
            if definition.name == name:
                return definition
        raise NotFoundError(f"Pattern {name} not found")

    def _definitions(self) -> list[PatternDefinition]:
        if not self.patterns_dir.is_dir():
            return []
        found = []
        for path in sorted(self.patterns_dir.iterdir()):
            if path.suffix not in (".json", ".yaml", ".yml"):
                continue
            mtime = path.stat().st_mtime
            cached = self._cache.get(path)
            if cached is None or cached[0] != mtime:
                cached = (mtime, load_pattern(path))
                self._cache[path] = cached
            found.append(cached[1])
        return found


def load_pattern(path: Path) -> PatternDefinition:
    """Parse one pattern file.

    Raises:
        PatternError: The file is not a valid pattern; the message names the file.
    """
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PatternError(f"pattern file {path.name}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise PatternError(f"pattern file {path.name}: needs a 'name' and 'tasks'")
    how = str(data.get("aggregate", "last"))
    if how not in AGGREGATIONS:
        raise PatternError(f"pattern file {path.name}: aggregate must be one of {AGGREGATIONS}")
    plan = {
        key: value
        for key, value in data.items()
        if key not in ("name", "description", "aggregate", "version")
    }
    plan.setdefault("kind", "parallel")
    definition = PatternDefinition(
        name=data["name"],
        plan=plan,
        aggregate=how,
        description=str(data.get("description", "")),
        source=path.name,
    )
    try:  # validate the template once, with an empty input
        definition.plan_for({}, "check")
    except ValidationError as exc:
        raise PatternError(f"pattern file {path.name}: {exc}") from exc
    return definition


def check_nesting(lineage: tuple[str, ...], name: str) -> tuple[str, ...]:
    """The lineage of a pattern run of *name* inside *lineage*.

    Raises:
        PatternError: *name* is already in the chain (a cycle) or the chain is too deep.
    """
    chain = (*lineage, name)
    if name in lineage:
        raise PatternError(f"pattern cycle: {' -> '.join(chain)}")
    if len(chain) > MAX_PATTERN_DEPTH:
        raise PatternError(f"patterns nest deeper than {MAX_PATTERN_DEPTH}: {' -> '.join(chain)}")
    return chain


def pattern_result(
    definition: PatternDefinition, results: list[ExecutionResult], *, ok: bool, reason: str
) -> tuple[TaskStatus, Any, float | None, str | None]:
    """A finished pattern plan as the ``(status, result, confidence, error)`` of its task.

    A failure names the pattern and carries the failing task's own error, so a
    failure deep in nested patterns reads as one chain.
    """
    if not ok:
        return TaskStatus.FAILURE, None, None, f"pattern {definition.name}: {reason}"
    try:
        result, confidence = aggregate(definition.aggregate, results)
    except PatternError as exc:
        bad = next((r for r in results if not r.ok), None)
        detail = f"{exc} (task {bad.task_id}: {bad.error})" if bad is not None else str(exc)
        return TaskStatus.FAILURE, None, None, f"pattern {definition.name}: {detail}"
    return TaskStatus.SUCCESS, result, confidence, None
