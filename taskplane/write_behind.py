"""Writes sent behind the caller's back: :class:`WriteBehind`."""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from taskplane.redisio import is_cluster
from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: Writes a :class:`WriteBehind` holds at most; beyond, the oldest are dropped (and logged).
MAX_QUEUED_WRITES = 100_000
#: Writes sent in one round trip at most.
MAX_WRITE_BATCH = 500
#: How long closing waits for queued writes to go out, in seconds.
WRITE_BEHIND_STOP_TIMEOUT_S = 5.0

Then = Callable[[Any], None]


@dataclass(frozen=True)
class _Write:
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]
    then: Then | None


class WriteBehind:
    """Runs scripts whose reply the caller need not wait for, from a background thread.

    The caller's round trip goes away, and writes queued while one batch is
    on its way leave together, in one pipeline, in the order they came. What
    a write announces reaches its *then* callback on the sender thread. A
    process that dies before a write left loses it, so only writes whose
    loss is harmless belong here (settling a reservation to what a call
    used: lost, the reservation stays at its estimate).

    Args:
        client: Where the scripts run.
        name: What the writes are, for the log line when Redis refuses them.
    """

    def __init__(self, client: redis.Redis, *, name: str) -> None:
        self.client = client
        self.name = name
        self._throttle = LogThrottle()
        self._ready = threading.Condition()
        self._queue: deque[_Write] = deque()
        self._busy = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def submit(
        self, script: Script, keys: Sequence[str], args: Sequence[Any], then: Then | None = None
    ) -> None:
        """Queue one run of *script*; *then* (if given) receives its reply."""
        with self._ready:
            if self._pid != os.getpid():  # a forked child starts with no sender of its own
                self._pid, self._thread, self._queue = os.getpid(), None, deque()
                self._busy = False
            if len(self._queue) >= MAX_QUEUED_WRITES:
                self._queue.popleft()
                self._failed(1, OverflowError("queue full"))
            self._queue.append(_Write(script, keys, args, then))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._ready.notify_all()

    def flush(self, timeout_s: float = WRITE_BEHIND_STOP_TIMEOUT_S) -> bool:
        """Wait until every write queued so far has been sent; False if *timeout_s* passed."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._queue and not self._busy, timeout_s)

    def close(self) -> None:
        """Send what is queued, then stop the sender."""
        with self._ready:
            self._stopping = True
            self._ready.notify_all()
            thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout=WRITE_BEHIND_STOP_TIMEOUT_S)

    def _take(self) -> list[_Write]:
        with self._ready:
            self._busy = False
            self._ready.notify_all()
            self._ready.wait_for(lambda: self._queue or self._stopping)
            count = min(len(self._queue), MAX_WRITE_BATCH)
            self._busy = count > 0
            if not count:  # stopping with nothing left: a later write starts a new sender
                self._thread = None
            return [self._queue.popleft() for _ in range(count)]

    def _run(self) -> None:
        while batch := self._take():
            self._send(batch)

    def _send(self, batch: list[_Write], *, reload: bool = True) -> None:
        if is_cluster(self.client):  # a cluster pipeline cannot EVALSHA: one call each
            self._send_each(batch)
            return
        # EVALSHA straight into the pipeline: a pipeline given Script objects would first
        # ask SCRIPT EXISTS, a round trip of its own, on every batch
        try:
            pipe = self.client.pipeline(transaction=False)
            for write in batch:
                pipe.evalsha(write.script.sha, len(write.keys), *write.keys, *write.args)
            replies = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as exc:
            self._failed(len(batch), exc)
            return
        unknown: list[_Write] = []
        for write, reply in zip(batch, replies, strict=True):
            if isinstance(reply, NoScriptError) and reload:
                unknown.append(write)
            elif isinstance(reply, Exception):
                self._failed(1, reply)
            else:
                self._answer(write, reply)
        if unknown:  # Redis restarted or its scripts were flushed: load them and send again
            try:
                for script in {write.script.sha: write.script for write in unknown}.values():
                    self.client.script_load(script.script)
            except (redis.RedisError, OSError) as exc:
                self._failed(len(unknown), exc)
                return
            self._send(unknown, reload=False)

    def _send_each(self, batch: list[_Write]) -> None:
        for write in batch:
            try:
                reply = write.script(keys=write.keys, args=write.args)
            except (redis.RedisError, OSError) as exc:
                self._failed(1, exc)
                continue
            self._answer(write, reply)

    def _answer(self, write: _Write, reply: Any) -> None:
        if write.then is not None:
            try:
                write.then(reply)
            except Exception:  # the caller's callback: its failure must not stop the sender
                log.exception("%s: handling a reply failed", self.name)

    def _failed(self, count: int, exc: BaseException) -> None:
        if self._throttle.due():
            log.warning(
                "%s: dropped %d write(s): %s (repeats logged at debug)", self.name, count, exc
            )
        else:
            log.debug("%s: dropped %d write(s): %s", self.name, count, exc)
