"""A plan run's record, typed: the one place that knows its stored field names.

A run store keeps each run as a flat map of strings (a Redis hash). This
module turns a layout into those fields (:func:`new_fields`) and those fields
back into a :class:`RunRecord`. The Redis scripts in ``lua/`` read and write
the same fields; the names below are theirs.

Modules with state of their own in a run (a plan budget's counters) keep it
in the same map under their own names; :attr:`RunRecord.fields` hands them
the map as stored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from taskplane.plan.layout import Mode, PlanLayout
from taskplane.plan.rules import WEIGHTED_CONFIDENCE_TARGET, Rule, Sequential, Weighted, rule_named


class PlanState(StrEnum):
    """Where a plan run is."""

    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"


#: The states a run ends in.
TERMINAL = frozenset(s.value for s in PlanState) - {PlanState.RUNNING.value}

#: Fields a run's creator may add to its record (see :func:`new_fields`).
PARENT, LINEAGE, PATTERN, BUDGET, TRACEPARENT = (
    "parent",
    "lineage",
    "pattern",
    "budget",
    "traceparent",
)


@dataclass(frozen=True)
class RunRecord:
    """One plan run as stored.

    Attributes:
        plan_id: The run.
        state: A :class:`PlanState` value.
        rule: How the run ends.
        mode: How its tasks go on the broker.
        total: Tasks in the plan.
        dispatched: Window mode: tasks handed to the broker so far (the cursor).
        done: Outcomes recorded.
        running: Tasks started and not yet finished.
        cancelled: The cancel flag, set as the run ends or is cancelled.
        deadline: Epoch seconds.
        order: Task indexes in dispatch order.
        retention_s: How long the run's keys live after submission.
        created: Epoch seconds of submission.
        winner: The task that won a ``race``.
        successors: Task index → the window successor it handed on.
        parent: A nested pattern's run: the pattern task that started it.
        lineage: Pattern names from the outermost run down to this one.
        pattern: The pattern a nested run runs.
        budget: The run whose plan budget this run draws from.
        traceparent: The plan span's W3C trace context.
        fields: Everything stored, by field name.
    """

    plan_id: str
    state: str
    rule: Rule
    mode: Mode
    total: int
    dispatched: int
    done: int
    running: int
    cancelled: bool
    deadline: float
    order: tuple[int, ...]
    retention_s: int
    created: float
    winner: int | None = None
    successors: Mapping[int, int] = field(default_factory=dict)
    parent: dict[str, Any] | None = None
    lineage: tuple[str, ...] = ()
    pattern: str | None = None
    budget: str | None = None
    traceparent: str | None = None
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.state in TERMINAL

    @property
    def any_started(self) -> bool:
        """Some task of the run has started (a worker took its message)."""
        return any(name.startswith("started:") for name in self.fields)

    @property
    def all_done(self) -> bool:
        """Every task has a recorded outcome."""
        return self.done >= self.total

    @property
    def sent(self) -> tuple[int, ...]:
        """Window mode: the tasks handed to the broker so far, in dispatch order."""
        return self.order[: min(self.dispatched, self.total)]

    def status(self) -> dict[str, Any]:
        """``{id, state, total, done, running, pending}``."""
        running = max(min(self.running, self.total - self.done), 0)
        return {
            "id": self.plan_id,
            "state": self.state,
            "total": self.total,
            "done": self.done,
            "running": running,
            "pending": self.total - self.done - running,
        }

    @classmethod
    def parse(cls, plan_id: str, fields: Mapping[str, str]) -> RunRecord | None:
        """The record stored as *fields* (None when there are none: no such run)."""
        if not fields:
            return None
        total = int(fields["n"])
        target = fields.get("target")
        rule = rule_named(
            fields["rule"],
            continue_on_error=fields.get("cont") == "1",
            target=float(target) if target else None,
        )
        order = tuple(int(i) for i in fields.get("order", "").split(",") if i)
        successors = {
            int(name[6:]): int(value) for name, value in fields.items() if name.startswith("after:")
        }
        parent = fields.get(PARENT)
        return cls(
            plan_id=plan_id,
            state=fields["state"],
            rule=rule,
            mode=Mode(fields.get("mode", Mode.WINDOW.value)),
            total=total,
            dispatched=int(fields.get("next", "0")),
            done=int(fields.get("done", "0")),
            running=int(fields.get("running", "0")),
            cancelled=fields.get("cancel") == "1",
            deadline=float(fields["deadline"]),
            order=order or tuple(range(total)),
            retention_s=int(fields.get("ttl", "0")),
            created=float(fields.get("created") or 0.0),
            winner=int(fields["winner"]) if fields.get("winner") else None,
            successors=successors,
            parent=json.loads(parent) if parent else None,
            lineage=tuple(p for p in fields.get(LINEAGE, "").split(",") if p),
            pattern=fields.get(PATTERN) or None,
            budget=fields.get(BUDGET) or None,
            traceparent=fields.get(TRACEPARENT) or None,
            fields=dict(fields),
        )


def new_fields(
    plan_layout: PlanLayout,
    total: int,
    *,
    deadline: float,
    retention_s: int,
    created: float,
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The stored fields of a new run laid out as *plan_layout*.

    *extra*: fields its creator adds — :data:`PARENT`, :data:`LINEAGE`,
    :data:`PATTERN`, :data:`BUDGET`, :data:`TRACEPARENT`, a budget's own.
    """
    rule = plan_layout.rule
    return {
        **(extra or {}),
        "state": PlanState.RUNNING.value,
        "rule": rule.name,
        "mode": plan_layout.mode.value,
        "n": str(total),
        "next": str(plan_layout.window),
        "done": "0",
        "running": "0",
        "cancel": "0",
        "cont": "1" if isinstance(rule, Sequential) and rule.continue_on_error else "0",
        "target": str(rule.target if isinstance(rule, Weighted) else WEIGHTED_CONFIDENCE_TARGET),
        "deadline": repr(deadline),
        "order": ",".join(map(str, plan_layout.order)),
        "ttl": str(retention_s),
        "created": repr(created),
    }
