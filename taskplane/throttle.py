"""A throttle for repeated warnings: a component that fails the same way on
every call (Redis down) logs once per interval, not once per call."""

from __future__ import annotations

import threading
import time

from taskplane.aliases import Clock

#: Default minimum time between two warnings, in seconds.
DEFAULT_INTERVAL_S = 30.0


class LogThrottle:
    """Tells whether a repeated warning is due: at most one per *interval_s*.

    Args:
        interval_s: Minimum time between two warnings.
        clock: Monotonic seconds.
    """

    def __init__(
        self, interval_s: float = DEFAULT_INTERVAL_S, *, clock: Clock = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self._last = float("-inf")
        self._lock = threading.Lock()

    def due(self) -> bool:
        """True (and restarts the interval) when a warning may be logged now."""
        with self._lock:
            now = self.clock()
            if now - self._last < self.interval_s:
                return False
            self._last = now
            return True
