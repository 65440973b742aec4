"""Plans end to end: how a plan is laid out, how its rule ends it, where its run lives.

* :mod:`~taskplane.plan.layout` — a validated plan's dispatch mode, order and window;
* :mod:`~taskplane.plan.rules` — one class per rule (all, allSettled, race,
  weighted, sequential): when a run ends and what it returns;
* :mod:`~taskplane.plan.record` — a run's stored record, typed;
* :mod:`~taskplane.plan.store` — the run store interface and the recovery
  rules every store shares (lost messages, lost successors);
* :mod:`~taskplane.plan.redis_store` — runs in Redis, each step one Lua
  script (``lua/``); :mod:`~taskplane.plan.memory_store` — its in-memory twin.
"""

from taskplane.plan.layout import Mode, PlanLayout, layout, layout_for_empty, weighted_order
from taskplane.plan.memory_store import MemoryRunStore
from taskplane.plan.record import TERMINAL, PlanState, RunRecord
from taskplane.plan.redis_store import RedisRunStore
from taskplane.plan.rules import (
    WEIGHTED_CONFIDENCE_TARGET,
    All,
    AllSettled,
    Race,
    Report,
    Rule,
    Sequential,
    Weighted,
    rule_named,
)
from taskplane.plan.store import (
    WAIT_SLICE_S,
    Dispatched,
    FinishDecision,
    RunStore,
    StartAction,
    StartDecision,
    lost_messages,
)

__all__ = [
    "TERMINAL",
    "WAIT_SLICE_S",
    "WEIGHTED_CONFIDENCE_TARGET",
    "All",
    "AllSettled",
    "Dispatched",
    "FinishDecision",
    "MemoryRunStore",
    "Mode",
    "PlanLayout",
    "PlanState",
    "Race",
    "RedisRunStore",
    "Report",
    "Rule",
    "RunRecord",
    "RunStore",
    "Sequential",
    "StartAction",
    "StartDecision",
    "Weighted",
    "layout",
    "layout_for_empty",
    "lost_messages",
    "rule_named",
    "weighted_order",
]
