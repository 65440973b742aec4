"""How each plan rule decides that a plan has ended, and what the plan returns.

One small class per rule. Each answers two questions:

* :meth:`Rule.ends` — as each outcome is recorded, does the plan end now, and
  how? Every run store applies exactly this: the in-memory store calls it, and
  the Redis store's ``finish.lua`` spells the same decision out in Lua (one
  behaviour suite, run against both stores, keeps the two in step).
* :meth:`Rule.report` — once the plan has ended, did it succeed, what does the
  caller get, and why did it fail?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from taskplane.models import ExecutionResult, TaskStatus

#: ``weighted`` stops at the first result at least this confident.
WEIGHTED_CONFIDENCE_TARGET = 0.8

#: Final states a plan can reach (its state while it runs is ``running``).
COMPLETED, FAILED, TIMEOUT, CANCELLED = "completed", "failed", "timeout", "cancelled"


@dataclass(frozen=True)
class Progress:
    """A run just after one more outcome was recorded.

    Attributes:
        ok: That outcome succeeded.
        confidence: Its confidence, if it has one.
        done: Outcomes recorded so far, this one included.
        total: Tasks in the plan.
        any_ok: Some outcome so far, this one included, succeeded.
    """

    ok: bool
    confidence: float | None
    done: int
    total: int
    any_ok: bool

    @property
    def all_done(self) -> bool:
        return self.done >= self.total


@dataclass(frozen=True)
class Report:
    """What an ended plan gives its caller.

    Attributes:
        ok: Whether the plan succeeded by its rule.
        returned: What a successful plan returns (``race``: the winner only).
        reason: Why it failed, when it did.
    """

    ok: bool
    returned: list[ExecutionResult]
    reason: str = ""


@dataclass(frozen=True)
class Rule:
    """A plan's rule. Subclasses decide :meth:`ends` and :meth:`returns`."""

    name: ClassVar[str]
    #: The task whose outcome completed the plan is recorded as its winner.
    names_winner: ClassVar[bool] = False
    #: A plan past its deadline may still succeed with what it has.
    settles_on_timeout: ClassVar[bool] = False
    #: Each task sees the outcome of the one before (``payload.previous``).
    passes_previous: ClassVar[bool] = False

    def ends(self, progress: Progress) -> str | None:
        """The plan's final state if the outcome just recorded ends it, else None."""
        return COMPLETED if progress.all_done else None

    def returns(
        self, results: Sequence[ExecutionResult | None], order: Sequence[int], winner: int | None
    ) -> Report:
        """Judge the recorded outcomes (task order; None where a task has none)."""
        done = [r for r in results if r is not None]
        # Name the task that failed, not a sibling cancelled because of it.
        failed = (r for r in done if not r.ok and r.status is not TaskStatus.CANCELLED)
        bad = next(failed, None) or next((r for r in done if not r.ok), None)
        if bad is None and len(done) == len(results):
            return Report(True, done)
        if bad is None:
            return Report(False, done, "plan ended before every task finished")
        return Report(False, done, f"task {bad.task_id} ended {bad.status.value}: {bad.error}")

    def report(
        self,
        state: str,
        results: Sequence[ExecutionResult | None],
        *,
        order: Sequence[int] = (),
        winner: int | None = None,
    ) -> Report:
        """:meth:`returns`, overruled by how the plan ended (a deadline, a cancel)."""
        judged = self.returns(results, order, winner)
        if state == CANCELLED:
            return Report(False, judged.returned, "plan cancelled")
        if state == TIMEOUT and not self.settles_on_timeout:
            return Report(False, judged.returned, judged.reason or "plan deadline passed")
        return judged


@dataclass(frozen=True)
class All(Rule):
    """Every task must succeed; the first failure ends the plan."""

    name = "all"

    def ends(self, progress: Progress) -> str | None:
        if not progress.ok:
            return FAILED
        return super().ends(progress)


@dataclass(frozen=True)
class AllSettled(Rule):
    """Every task runs to an outcome; the plan succeeds with all of them."""

    name = "allSettled"
    settles_on_timeout = True

    def returns(
        self, results: Sequence[ExecutionResult | None], order: Sequence[int], winner: int | None
    ) -> Report:
        return Report(True, [r for r in results if r is not None])


@dataclass(frozen=True)
class Race(Rule):
    """The first success wins and ends the plan; it fails when every task failed."""

    name = "race"
    names_winner = True

    def ends(self, progress: Progress) -> str | None:
        if progress.ok:
            return COMPLETED
        return FAILED if progress.all_done else None

    def returns(
        self, results: Sequence[ExecutionResult | None], order: Sequence[int], winner: int | None
    ) -> Report:
        done = [r for r in results if r is not None]
        first = results[winner] if winner is not None else None
        if first is None or not first.ok:
            first = next((r for r in done if r.ok), None)
        if first is not None:
            return Report(True, [first])
        return Report(False, done, "race: no task succeeded")


@dataclass(frozen=True)
class Weighted(Rule):
    """Tasks run one at a time by priority until one is confident enough.

    Attributes:
        target: The confidence that ends the plan at once.
    """

    name = "weighted"

    target: float = WEIGHTED_CONFIDENCE_TARGET

    def ends(self, progress: Progress) -> str | None:
        confident = progress.confidence is not None and progress.confidence >= self.target
        if progress.ok and confident:
            return COMPLETED
        if progress.all_done:
            return COMPLETED if progress.any_ok else FAILED
        return None

    def returns(
        self, results: Sequence[ExecutionResult | None], order: Sequence[int], winner: int | None
    ) -> Report:
        ordered = [results[i] for i in order] if order else list(results)
        ran = [r for r in ordered if r is not None and r.status is not TaskStatus.CANCELLED]
        if any(r.ok for r in ran):
            return Report(True, ran)
        return Report(False, [r for r in results if r is not None], "weighted: no task succeeded")


@dataclass(frozen=True)
class Sequential(Rule):
    """Tasks run one after another, each seeing the one before.

    Attributes:
        continue_on_error: A failure does not end the plan, which then
            succeeds with every outcome.
    """

    name = "sequential"
    passes_previous = True

    continue_on_error: bool = False

    def ends(self, progress: Progress) -> str | None:
        if not progress.ok and not self.continue_on_error:
            return FAILED
        return super().ends(progress)

    def returns(
        self, results: Sequence[ExecutionResult | None], order: Sequence[int], winner: int | None
    ) -> Report:
        if self.continue_on_error:
            return Report(True, [r for r in results if r is not None])
        return super().returns(results, order, winner)


#: Every rule by the name a run records.
RULES: dict[str, type[Rule]] = {r.name: r for r in (All, AllSettled, Race, Weighted, Sequential)}


def rule_named(name: str, *, continue_on_error: bool = False, target: float | None = None) -> Rule:
    """The rule a run recorded as *name*, with its settings.

    Raises:
        ValueError: *name* is no rule.
    """
    if name not in RULES:
        raise ValueError(f"unknown plan rule {name!r}; known: {', '.join(RULES)}")
    if name == Sequential.name:
        return Sequential(continue_on_error)
    if name == Weighted.name:
        return Weighted(WEIGHTED_CONFIDENCE_TARGET if target is None else target)
    return RULES[name]()
