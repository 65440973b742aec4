"""Waiting on a plan run and reading its outcomes as they are recorded.

Two things every waiter needs, sync or async, live here once:

* :class:`PlanWatch` decides, from the run's record and the clock, what a
  waiter does next: stop (the run ended), end the run as timed out (its
  deadline passed), give up (the caller's own timeout passed) or block a
  while — and whether to resend lost messages first (no progress for longer
  than a redelivery).
* :class:`CompletionReader` reads the run's ``:order`` stream by position
  (``XREAD BLOCK``): one entry per recorded outcome, in recording order, so
  ``as_completed`` costs one stream entry per task and one round trip per wake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from taskplane.aliases import Clock
from taskplane.errors import PlanFailedError
from taskplane.models import ExecutionResult
from taskplane.plan.record import RunRecord
from taskplane.plan.redis_store import RedisRunStore
from taskplane.plan.store import WAIT_SLICE_S
from taskplane.redisio import translated

#: Stream position before the first entry.
START = "0"
#: No progress for this long, with Redis restarted since the run began, means lost messages (s).
RESTART_STALL_S = 5.0
#: ``uptime_in_seconds`` is whole seconds: a start time derived from it is this late at most (s).
UPTIME_RESOLUTION_S = 1.0
#: Two server start times closer than this are one start (s).
START_RESOLUTION_S = 2.0


class StepKind(StrEnum):
    """What a waiter does next."""

    ENDED = "ended"  # the run has ended: collect its results
    DEADLINE = "deadline"  # the run's deadline passed: end it as timed out, then collect
    GIVE_UP = "give_up"  # the caller's timeout passed: raise, the run goes on
    BLOCK = "block"  # block for ``block_s`` on the run's keys, then look again


@dataclass(frozen=True)
class Step:
    """One decision of a :class:`PlanWatch`.

    Attributes:
        kind: What to do.
        block_s: How long to block, for ``BLOCK``.
        recover: Resend lost messages first (the run made no progress for too long).
    """

    kind: StepKind
    block_s: float = 0.0
    recover: bool = False


class PlanWatch:
    """The waiting policy for one run, over its record and an injected clock.

    Args:
        record: The run's record when the wait began.
        timeout_s: How long the caller waits at most; None waits for the run's deadline.
        stall_s: No progress for this long means messages were lost: recover.
        clock: Epoch seconds (the run's deadline is epoch seconds).

    A Redis restart can lose a broker message outright: on ``SHUTDOWN`` the
    replies of the last commands Redis ran never leave, and a message it
    popped for a consumer is then gone (kombu's Redis transport records it
    as unacknowledged only once the reply arrives). So every
    :data:`RESTART_STALL_S` while it waits, the waiter looks up when the
    server started (:meth:`wants_server_start`); a start after the run was
    created means Redis restarted under it, and lost messages are resent
    then (:meth:`restarted`) instead of after ``stall_s``. It asks whether the
    run makes progress or not: a lost message of a wide window leaves the
    other tasks running, and waiting for them all to finish before asking
    would add their time to the plan's.
    """

    def __init__(
        self,
        record: RunRecord,
        *,
        timeout_s: float | None,
        stall_s: float,
        clock: Clock,
    ) -> None:
        self.clock = clock
        self.created = record.created
        self._restart_seen: float | None = None
        self.timeout_s = timeout_s
        self.deadline = record.deadline
        self.stall_s = stall_s
        now = clock()
        self.give_up = None if timeout_s is None else now + timeout_s
        self._progress: tuple[int | None, float] = (record.done, now)
        self._asked_at = now  # the server's start is first looked up RESTART_STALL_S from now

    def step(self, record: RunRecord | None) -> Step:
        """What to do next, given the run's current record (None: it is gone)."""
        if record is not None and record.ended:
            return Step(StepKind.ENDED)
        now = self.clock()
        recover = False
        done = None if record is None else record.done
        if done != self._progress[0]:
            self._progress = (done, now)
        elif now - self._progress[1] > self.stall_s:
            recover = True
            self._progress = (done, now)
        if now >= self.deadline:
            return Step(StepKind.DEADLINE, recover=recover)
        limit = self.deadline - now
        if self.give_up is not None:
            if now >= self.give_up:
                return Step(StepKind.GIVE_UP, recover=recover)
            limit = min(limit, self.give_up - now)
        return Step(StepKind.BLOCK, block_s=max(limit, 0.01), recover=recover)

    def wants_server_start(self) -> bool:
        """Whether to look up when Redis started (for :meth:`restarted`).

        True every :data:`RESTART_STALL_S` (one ``INFO`` per wait and slice at most).
        """
        return self.clock() - self._asked_at >= RESTART_STALL_S

    def restarted(self, started_at: float) -> bool:
        """Whether a Redis start at *started_at* (epoch s) is news: it came after the run began.

        True once per start, so lost messages are resent once for it.
        """
        self._asked_at = self.clock()
        # uptime is whole seconds, so *started_at* may be up to 1 s late: a server
        # started just before the run must not count as restarted under it
        if started_at - UPTIME_RESOLUTION_S <= self.created:
            return False
        seen = self._restart_seen
        if seen is not None and abs(started_at - seen) < START_RESOLUTION_S:
            return False
        self._restart_seen = started_at
        return True


def unknown_plan(plan_id: str) -> PlanFailedError:
    """The error of waiting on a run that does not exist (never submitted, or expired)."""
    return PlanFailedError(f"plan {plan_id} is unknown or expired", [], plan_id)


def block_ms(block_s: float) -> int:
    """``XREAD BLOCK`` milliseconds for *block_s*: at least 1 (0 would block forever)."""
    return max(int(min(block_s, WAIT_SLICE_S) * 1000), 1)


def order_entries(reply: Any, after: str) -> tuple[str, list[int]]:
    """The new stream position and the task indexes in an ``XREAD`` reply on one key."""
    position, indexes = after, []
    for _key, entries in reply or []:
        for entry_id, fields in entries:
            position = entry_id
            indexes.append(int(fields["i"]))
    return position, indexes


def paired_results(
    indexes: Sequence[int], raw: Sequence[str | bytes | None]
) -> list[tuple[int, ExecutionResult]]:
    """``(index, result)`` for each of *indexes* whose result JSON in *raw* is present."""
    pairs = zip(indexes, raw, strict=True)
    return [(i, ExecutionResult.model_validate_json(r)) for i, r in pairs if r is not None]


class CompletionReader:
    """Reads one run's outcomes in the order they were recorded (sync client).

    Args:
        store: The plan store (its client and key names are used).
        plan_id: The run.
    """

    def __init__(self, store: RedisRunStore, plan_id: str) -> None:
        self.client = store.client
        self.order_key = store.key(plan_id, "order")
        self.results_key = store.key(plan_id, "results")
        self.position = START
        self.seen: set[int] = set()

    def read(self, block_s: float) -> list[ExecutionResult]:
        """Outcomes recorded since the last read, not seen before; blocks up to *block_s*.

        A *block_s* of 0 does not block.

        Raises:
            BackendError: Redis cannot be reached.
        """
        with translated("plan store", "reading outcomes"):
            reply = self.client.xread(self._streams(), **self._blocking(block_s))
            fresh = self._fresh(reply)
            raw = self.client.hmget(self.results_key, [str(i) for i in fresh]) if fresh else []
        return self._take(fresh, raw)

    async def read_async(self, client: Any, block_s: float) -> list[ExecutionResult]:
        """:meth:`read` through *client*, a ``redis.asyncio`` client of the same Redis."""
        with translated("plan store", "reading outcomes"):
            reply = await client.xread(self._streams(), **self._blocking(block_s))
            fresh = self._fresh(reply)
            raw = await client.hmget(self.results_key, [str(i) for i in fresh]) if fresh else []
        return self._take(fresh, raw)

    def _streams(self) -> dict[Any, Any]:
        return {self.order_key: self.position}

    @staticmethod
    def _blocking(block_s: float) -> dict[str, int]:
        return {"block": block_ms(block_s)} if block_s > 0 else {}

    def _fresh(self, reply: Any) -> list[int]:
        self.position, indexes = order_entries(reply, self.position)
        return [i for i in dict.fromkeys(indexes) if i not in self.seen]

    def _take(self, fresh: list[int], raw: Sequence[str | bytes | None]) -> list[ExecutionResult]:
        pairs = paired_results(fresh, raw)
        self.seen.update(i for i, _ in pairs)
        return [result for _, result in pairs]

    def rest(self, results: Sequence[ExecutionResult | None]) -> list[ExecutionResult]:
        """Those of *results* (all of the run's, in task order) not read yet, marking them seen.

        The fallback at a run's end, for outcomes the stream does not list
        (a run recorded before the stream existed).
        """
        left = [r for i, r in enumerate(results) if r is not None and i not in self.seen]
        self.seen.update(i for i, r in enumerate(results) if r is not None)
        return left
