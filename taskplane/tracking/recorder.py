"""The recorder: takes data points off the hot path and writes them in batches.

:meth:`TrackingRecorder.add` only appends to a buffer. A daemon thread
writes the buffer through :meth:`ConfidenceTracker.record_many` (one
transaction per batch) every ``flush_interval_s`` or as soon as a batch is
full. A batch that fails to write (database down) goes back to the front of
the buffer for the next try; the buffer is bounded and drops its oldest
points, with a warning, when full. :meth:`TrackingRecorder.close` writes
what is left. Create a recorder in the process that uses it (after a fork).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from taskplane.aliases import Clock
from taskplane.hooks import ExecutionHooks
from taskplane.models import ExecutionResult, ExecutionTask
from taskplane.tracking.points import DataPoint, as_point, point_from_result
from taskplane.tracking.tracker import ConfidenceTracker

if TYPE_CHECKING:
    from taskplane.contract import RunContext

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 200
DEFAULT_FLUSH_INTERVAL_S = 1.0
#: Most points held while the store cannot be written; the oldest go first.
DEFAULT_MAX_BUFFERED = 100_000
DEFAULT_CLOSE_TIMEOUT_S = 10.0
#: Log one warning per this many dropped points.
_DROP_LOG_EVERY = 1000


class TrackingRecorder:
    """Buffers data points and writes them in batches from a background thread.

    Args:
        tracker: Where batches go (``record_many``).
        batch_size: Points per write; a full batch is written at once.
        flush_interval_s: Longest a point waits in the buffer (when the store is up).
        max_buffered: Buffer bound; beyond it the oldest points are dropped.
        clock: Monotonic seconds, for scheduling flushes.
        background: Start the flushing thread; without it, call :meth:`flush`.
    """

    def __init__(
        self,
        tracker: ConfidenceTracker,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        max_buffered: int = DEFAULT_MAX_BUFFERED,
        clock: Clock = time.monotonic,
        background: bool = True,
    ) -> None:
        if batch_size < 1 or max_buffered < batch_size:
            raise ValueError("need 1 <= batch_size <= max_buffered")
        self.tracker = tracker
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.clock = clock
        self.dropped = 0
        self._buffer: deque[DataPoint] = deque()
        self._wake = threading.Condition(threading.Lock())
        self._flushing = threading.Lock()
        self._next_flush_at = clock() + flush_interval_s
        self._failing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._run, name="taskplane-tracking-recorder", daemon=True
            )
            self._thread.start()

    @property
    def pending(self) -> int:
        """Points waiting to be written."""
        with self._wake:
            return len(self._buffer)

    def add(self, point: DataPoint | dict[str, Any]) -> None:
        """Queue one point for writing; never touches the database."""
        item = as_point(point)
        with self._wake:
            if self._closed:
                log.warning("tracking recorder is closed; dropped a point of %s", item.agent_id)
                return
            if len(self._buffer) >= self.max_buffered:
                self._buffer.popleft()
                self._drop(1)
            self._buffer.append(item)
            if len(self._buffer) >= self.batch_size:
                self._wake.notify()

    def add_result(self, result: ExecutionResult | dict[str, Any]) -> DataPoint | None:
        """Queue the point for a finished envelope, if tracked (see ``point_from_result``)."""
        point = point_from_result(result, now=self.tracker.clock())
        if point is not None:
            self.add(point)
        return point

    def _drop(self, count: int) -> None:
        before, self.dropped = self.dropped, self.dropped + count
        if before // _DROP_LOG_EVERY != self.dropped // _DROP_LOG_EVERY or before == 0:
            log.warning(
                "tracking buffer full (%d points): dropped %d oldest so far",
                self.max_buffered,
                self.dropped,
            )

    def flush(self) -> int:
        """Write every buffered point, one ``record_many`` per batch; return how many went.

        A failing batch is put back at the front of the buffer and the flush
        stops there (logged, not raised); the next flush tries again.
        """
        written = 0
        with self._flushing:
            while True:
                with self._wake:
                    batch = [
                        self._buffer.popleft()
                        for _ in range(min(self.batch_size, len(self._buffer)))
                    ]
                if not batch:
                    self._failing = False
                    break
                try:
                    self.tracker.record_many(batch)
                except Exception as exc:
                    self._put_back(batch)
                    self._failing = True
                    log.warning("tracking flush failed, %d points kept: %s", self.pending, exc)
                    break
                written += len(batch)
            self._next_flush_at = self.clock() + self.flush_interval_s
        return written

    def _put_back(self, batch: list[DataPoint]) -> None:
        with self._wake:
            self._buffer.extendleft(reversed(batch))
            excess = len(self._buffer) - self.max_buffered
            if excess > 0:
                for _ in range(excess):
                    self._buffer.popleft()
                self._drop(excess)

    def _due(self) -> bool:
        if self.clock() >= self._next_flush_at:
            return True
        return not self._failing and len(self._buffer) >= self.batch_size

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._closed and not self._due():
                    self._wake.wait(timeout=max(self._next_flush_at - self.clock(), 0.001))
                if self._closed:
                    return
            try:
                self.flush()
            except Exception:
                log.exception("tracking recorder flush crashed")

    def close(self, *, timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S) -> None:
        """Stop the thread and write everything still buffered (one last try)."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.flush()
        if self.pending:
            log.error("tracking recorder closed with %d points unwritten", self.pending)


class TrackingHooks(ExecutionHooks):
    """Hands each recorded outcome to a :class:`TrackingRecorder` (``on_finished``).

    Args:
        recorder: Buffers the outcome's data point, if it is tracked.
    """

    def __init__(self, recorder: TrackingRecorder) -> None:
        self.recorder = recorder

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.recorder.add_result(result)
