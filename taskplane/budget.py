"""Plan budgets: what a plan and the patterns it runs may spend on agent calls.

A plan's ``budget: {tokens, calls}`` is kept in its run's meta hash, beside
the run it belongs to; a nested pattern's run names the same budget (meta
field ``budget``: the id of the run that holds it), so a fan-out and every
run nested in it draw from one budget.

Spending works like a token limit: before an agent call, one call and the
task's token estimate (``metadata.estimatedTokens``, else
:data:`DEFAULT_BUDGET_ESTIMATE`) are reserved; when the call ends the tokens
are settled to the usage it reported (``metadata.usage``). The rule for each
limited measure (:func:`admit`): spent already → ``exhausted`` (the task is
cancelled); reservations in flight leave no room for this one → ``wait``
(the task is rescheduled and asks again); else hold what is left, at most the
estimate. So a plan overshoots its token budget by at most the estimate error
of the calls in flight. ``plan:budget-warning`` fires once when 80 % is spent,
``plan:budget-exhausted`` once when all is.

In Redis each verb is one Lua script (``lua/plan_budget.lua``) on the run's
meta hash; :class:`InMemoryBudgetBackend` keeps the same rule for tests.
A worker settles behind the call (:class:`taskplane.redisio.WriteBehind`),
so a call waits for one round trip, its reservation; which run holds a
run's budget is read once per run (:class:`BudgetOwners`). When Redis is
unreachable the budget fails open, like the rate limiter.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from taskplane.aliases import Emit
from taskplane.contract import BudgetRefusal
from taskplane.errors import BackendError
from taskplane.events.names import PLAN_BUDGET_EXHAUSTED, PLAN_BUDGET_WARNING
from taskplane.keys import plan_key
from taskplane.models import ExecutionTask, PlanBudget
from taskplane.proxy import estimated_tokens
from taskplane.redisio import load_script, translated
from taskplane.throttle import LogThrottle
from taskplane.write_behind import WriteBehind

log = logging.getLogger(__name__)

#: Tokens a call reserves from a plan budget when its task gives no ``estimatedTokens``.
DEFAULT_BUDGET_ESTIMATE = 1000
#: The share of a budget spent at which ``plan:budget-warning`` fires.
WARNING_SHARE = 0.8
#: Measures a budget limits, in the order they are checked.
MEASURES = ("tokens", "calls")


def budget_meta(owner: str, budget: PlanBudget) -> dict[str, str]:
    """The meta fields of run *owner* that hold *budget* (none when it limits nothing)."""
    meta: dict[str, str] = {}
    if budget.tokens is not None:
        meta["budgetTokens"] = str(budget.tokens)
    if budget.calls is not None:
        meta["budgetCalls"] = str(budget.calls)
    if meta:
        meta["budget"] = owner
    return meta


def exhausted_error(meta: dict[str, str]) -> str | None:
    """The error of a task the spent budget in *meta* (its run's meta hash) cancels, if spent."""
    measure = meta.get("budgetOut")
    if measure not in MEASURES:
        return None
    name = measure.capitalize()
    used, limit = meta.get(f"used{name}", "0"), meta.get(f"budget{name}")
    return f"plan budget exhausted: {measure} {used} of {limit}"


def admit(limit: int | None, used: int, held: int, cost: int) -> tuple[str, int]:
    """One measure's verdict on a call costing *cost*: ``(run|wait|exhausted, amount to hold)``."""
    if limit is None:
        return "run", 0
    if used >= limit:
        return "exhausted", 0
    if held > 0 and used + held + cost > limit:
        return "wait", 0
    return "run", max(min(cost, limit - used - held), 1)


@dataclass(frozen=True)
class Figures:
    """A budget's limits and what is spent (settled) of each."""

    limits: dict[str, int | None]
    used: dict[str, int]

    def spent(self, measure: str) -> str:
        """``tokens 10000 of 10000``."""
        return f"{measure} {self.used[measure]} of {self.limits[measure]}"

    def to_json(self) -> dict[str, Any]:
        """The figures as event JSON."""
        return {"budget": dict(self.limits), "used": dict(self.used)}


@dataclass(frozen=True)
class Verdict:
    """A reservation's answer: ``run`` (holding *tokens*, *calls*), ``wait`` or ``exhausted``."""

    decision: str
    tokens: int
    calls: int
    measure: str
    first: bool
    figures: Figures


@dataclass(frozen=True)
class Settled:
    """What settling a call announced for the first time (*measure*: which one)."""

    warned: bool
    exhausted: bool
    measure: str
    figures: Figures


class BudgetBackend(ABC):
    """Keeps plan budgets."""

    @abstractmethod
    def reserve(self, owner: str, tokens: int) -> Verdict:
        """Reserve one call and *tokens* from the budget held by run *owner*."""

    @abstractmethod
    def settle(
        self,
        owner: str,
        *,
        held: tuple[int, int],
        spent: tuple[int, int],
        then: Callable[[Settled], None],
    ) -> None:
        """Release *held* ``(tokens, calls)`` and count *spent* ``(tokens, calls)`` instead.

        *then* receives what settling announced: at once, or later from
        another thread when the backend settles behind the caller's back.

        Raises:
            BackendError: The budget could not be settled (synchronous backends).
        """


@dataclass
class _State:
    limits: dict[str, int | None]
    used: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEASURES, 0))
    held: dict[str, int] = field(default_factory=lambda: dict.fromkeys(MEASURES, 0))
    warned: bool = False
    out: bool = False

    def figures(self) -> Figures:
        return Figures(dict(self.limits), dict(self.used))


class InMemoryBudgetBackend(BudgetBackend):
    """Budgets in this process's memory, for tests (the same rule as the Lua script)."""

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def create(self, owner: str, budget: PlanBudget) -> None:
        """Hold *budget* for run *owner*."""
        with self._lock:
            self._states[owner] = _State({"tokens": budget.tokens, "calls": budget.calls})

    def reserve(self, owner: str, tokens: int) -> Verdict:
        with self._lock:
            state = self._states.get(owner) or _State(dict.fromkeys(MEASURES))
            costs = {"tokens": tokens, "calls": 1}
            take = dict.fromkeys(MEASURES, 0)
            decision, measure = "run", ""
            for name in MEASURES:
                verdict, amount = admit(
                    state.limits[name], state.used[name], state.held[name], costs[name]
                )
                if verdict == "exhausted":
                    decision, measure = verdict, name
                    break
                if verdict == "wait":
                    decision = verdict
                take[name] = amount
            first = False
            if decision == "exhausted":
                first, state.out = not state.out, True
            if decision == "run":
                for name in MEASURES:
                    state.held[name] += take[name]
            else:
                take = dict.fromkeys(MEASURES, 0)
            return Verdict(decision, take["tokens"], take["calls"], measure, first, state.figures())

    def settle(
        self,
        owner: str,
        *,
        held: tuple[int, int],
        spent: tuple[int, int],
        then: Callable[[Settled], None],
    ) -> None:
        then(self._settle(owner, held, spent))

    def _settle(self, owner: str, held: tuple[int, int], spent: tuple[int, int]) -> Settled:
        with self._lock:
            state = self._states.get(owner)
            if state is None:
                return Settled(False, False, "", Figures(dict.fromkeys(MEASURES), {}))
            for name, back, used in zip(MEASURES, held, spent, strict=True):
                state.held[name] -= back
                state.used[name] += used
            warned = exhausted = False
            measure = ""
            for name in MEASURES:
                limit = state.limits[name]
                if limit is None:
                    continue
                if state.used[name] >= limit and not state.out:
                    state.out = exhausted = True
                    measure = name
                if state.used[name] * 5 >= limit * 4 and not state.warned:
                    state.warned = warned = True
                    measure = measure or name
            return Settled(warned, exhausted, measure, state.figures())


class RedisBudgetBackend(BudgetBackend):
    """Budgets in the meta hashes of their runs (:func:`taskplane.keys.plan_key`).

    Args:
        client: Where the runs' meta hashes are.
        prefix: Namespace of every key.
        behind: Sends settling behind the caller's back (see
            :class:`taskplane.redisio.WriteBehind`); None: settling waits for Redis.

    Raises:
        BackendError: When Redis cannot be reached.
    """

    def __init__(
        self, client: redis.Redis, *, prefix: str = "taskplane", behind: WriteBehind | None = None
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.behind = behind
        self._script = load_script(client, "taskplane", "plan_budget.lua")

    def _key(self, owner: str) -> str:
        return plan_key(self.prefix, owner, "meta")

    def _run(self, owner: str, args: list[str]) -> list[Any]:
        with translated(f"plan budget of {owner}", args[0]):
            reply = self._script(keys=[self._key(owner)], args=args)
        return _texts(reply)

    def reserve(self, owner: str, tokens: int) -> Verdict:
        reply = self._run(owner, ["reserve", str(tokens)])
        decision, take_tokens, take_calls, measure, first = reply[:5]
        return Verdict(
            str(decision), int(take_tokens), int(take_calls), str(measure), bool(first),
            _figures(reply[5:]),
        )  # fmt: skip

    def settle(
        self,
        owner: str,
        *,
        held: tuple[int, int],
        spent: tuple[int, int],
        then: Callable[[Settled], None],
    ) -> None:
        args = ["settle", str(held[0]), str(spent[0]), str(held[1]), str(spent[1])]

        def announce(reply: list[Any]) -> None:
            reply = _texts(reply)
            then(Settled(bool(reply[0]), bool(reply[1]), str(reply[2]), _figures(reply[3:])))

        if self.behind is not None:
            self.behind.submit(self._script, [self._key(owner)], args, then=announce)
        else:
            announce(self._run(owner, args))


def _texts(reply: list[Any]) -> list[Any]:
    return [v.decode() if isinstance(v, bytes) else v for v in reply]


def _figures(values: list[Any]) -> Figures:
    used_tokens, limit_tokens, used_calls, limit_calls = (str(v) for v in values)
    return Figures(
        {
            "tokens": int(limit_tokens) if limit_tokens else None,
            "calls": int(limit_calls) if limit_calls else None,
        },
        {"tokens": int(float(used_tokens)), "calls": int(float(used_calls))},
    )


#: Runs whose budget holder a :class:`BudgetOwners` remembers.
OWNERS_KEPT = 4096


class BudgetOwners:
    """Which run holds the budget a run draws from, read once per run and process.

    A run's ``budget`` meta field is written when the run is created and
    never changes, so a worker running a thousand agent tasks of one plan
    reads it once, not a thousand times. The newest :data:`OWNERS_KEPT` runs
    are remembered.

    Args:
        read: The ``budget`` meta field of a run ("" or None: no budget).
    """

    def __init__(self, read: Callable[[str], str | None]) -> None:
        self.read = read
        self._owners: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, plan_id: str) -> str:
        """The run whose budget *plan_id* draws from; "" when it has none.

        Raises:
            BackendError: The run's meta could not be read.
        """
        with self._lock:
            owner = self._owners.get(plan_id)
        if owner is None:
            owner = self.read(plan_id) or ""
            with self._lock:
                self._owners[plan_id] = owner
                if len(self._owners) > OWNERS_KEPT:
                    self._owners.popitem(last=False)
        return owner


@dataclass(frozen=True)
class Hold:
    """Tokens and calls a call holds from its plan's budget until it is settled."""

    tokens: int
    calls: int


class BudgetGate:
    """One run's view of the budget it draws from (held by run *owner*).

    Args:
        backend: Where budgets live.
        owner: The run whose meta holds the budget.
        plan_id: The run the calls belong to (a nested run's, or *owner*).
        emit: Publishes ``plan:budget-warning`` / ``plan:budget-exhausted``.
    """

    _warnings = LogThrottle(30.0)

    def __init__(self, backend: BudgetBackend, owner: str, plan_id: str, emit: Emit) -> None:
        self.backend = backend
        self.owner = owner
        self.plan_id = plan_id
        self.emit = emit

    def reserve(self, task: ExecutionTask) -> Hold | BudgetRefusal | None:
        """Reserve a call to *task*'s agent; None when the budget cannot be read (fail open)."""
        estimate = estimated_tokens(task) or DEFAULT_BUDGET_ESTIMATE
        try:
            verdict = self.backend.reserve(self.owner, estimate)
        except BackendError as exc:
            self._warn(exc)
            return None
        if verdict.decision == "run":
            return Hold(verdict.tokens, verdict.calls)
        if verdict.decision == "wait":
            return BudgetRefusal(wait=True)
        if verdict.first:
            self._announce(PLAN_BUDGET_EXHAUSTED, verdict.measure, verdict.figures)
        return BudgetRefusal(
            wait=False, error=f"plan budget exhausted: {verdict.figures.spent(verdict.measure)}"
        )

    def settle(self, hold: Hold, *, tokens: int | None, called: bool) -> None:
        """The call ended: count the *tokens* it used (None: the estimate) and if it was made."""
        spent_tokens = hold.tokens if tokens is None else max(int(tokens), 0)
        if not called:
            spent_tokens = 0
        try:
            self.backend.settle(
                self.owner,
                held=(hold.tokens, hold.calls),
                spent=(spent_tokens if hold.tokens else 0, 1 if called and hold.calls else 0),
                then=self._settled,
            )
        except BackendError as exc:
            self._warn(exc)

    def _settled(self, settled: Settled) -> None:
        if settled.warned:
            self._announce(PLAN_BUDGET_WARNING, settled.measure, settled.figures)
        if settled.exhausted:
            self._announce(PLAN_BUDGET_EXHAUSTED, settled.measure, settled.figures)

    def _announce(self, event_type: str, measure: str, figures: Figures) -> None:
        data = {"planId": self.owner, "measure": measure, **figures.to_json()}
        if self.plan_id != self.owner:
            data["runId"] = self.plan_id
        try:
            self.emit(event_type, data)
        except Exception:
            log.warning("could not publish %s for plan %s", event_type, self.owner, exc_info=True)

    def _warn(self, exc: BaseException) -> None:
        if self._warnings.due():
            log.warning("plan budget backend unreachable, failing open: %s", exc)
