"""The sweep that gives a dead worker's unacknowledged messages back to the queue (Redis).

On the Redis transport, a message a worker took stays in kombu's ``unacked``
index until it is acknowledged (``acks_late``: after the task ends). When the
worker dies, kombu's sweep (``restore_visible``) puts every message older
than the visibility timeout back on its queue, flagged redelivered. kombu
runs that sweep on a timer only in Celery's event loop (the prefork pool);
the consumer loop of the gevent and threads pools sweeps only when a poll
comes back empty, which a worker that polls with a 1 s ``BRPOP`` never sees,
so a killed worker's tasks were not delivered again at all (until some
worker started after the visibility timeout had passed).

:class:`RedeliverySweeper` is a background thread of each worker that calls
kombu's own sweep every ``redelivery_sweep_s`` on a connection of its own;
kombu's mutex in Redis lets one worker of the cluster sweep at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any

from celery import Celery

from taskplane.throttle import LogThrottle

log = logging.getLogger(__name__)

#: Redis broker URL schemes (the sweep exists only there).
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://")


def needs_sweeper(broker_url: str) -> bool:
    """Whether a worker on *broker_url* must sweep for unacknowledged messages itself."""
    return broker_url.startswith(REDIS_SCHEMES)


class RedeliverySweeper(threading.Thread):
    """Runs kombu's sweep for unacknowledged messages every *interval_s* seconds.

    Args:
        app: The worker's Celery app (its broker and transport options).
        interval_s: Seconds between sweeps (``redelivery_sweep_s``).
    """

    def __init__(self, app: Celery, *, interval_s: float) -> None:
        super().__init__(name="taskplane-redelivery-sweep", daemon=True)
        self.app = app
        self.interval_s = interval_s
        self.stopping = threading.Event()
        self._throttle = LogThrottle()
        self._connection: Any = None

    def sweep(self) -> None:
        """One sweep: messages unacknowledged for longer than the visibility timeout go back."""
        if self._connection is None:
            self._connection = self.app.connection_for_read()
        channel = self._connection.default_channel
        channel.qos.restore_visible(num=channel.unacked_restore_limit, interval=1)

    def run(self) -> None:
        while not self.stopping.wait(self.interval_s):
            try:
                self.sweep()
            except Exception as exc:  # the broker is away: drop the connection, try again later
                if self._throttle.due():
                    log.warning("redelivery sweep failed (%s); retrying", exc)
                self._drop()
        self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.release()

    def stop(self) -> None:
        """Stop sweeping (waits for a sweep in progress, briefly)."""
        self.stopping.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)
