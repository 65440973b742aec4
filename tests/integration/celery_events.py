"""Celery's own task events (what Flower shows), captured in a thread by Celery's receiver."""

from __future__ import annotations

import threading
from typing import Any

from taskplane import ExecutionEngine
from tests.support import wait_until

#: The events a worker sends for a task that succeeds at once.
LIFECYCLE = ("task-received", "task-started", "task-succeeded")


class CeleryEvents:
    """Every event the cluster sends while the block runs, and how many messages carried a
    worker's task events (several to a message when the worker batches them)."""

    def __init__(self, engine: ExecutionEngine) -> None:
        self.app = engine.app
        self.seen: list[dict[str, Any]] = []
        self.task_messages = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            receiver = self.app.events.Receiver(conn, handlers={"*": self.seen.append})
            receive = receiver._receive

            def counted(body: Any, message: Any) -> None:
                if isinstance(body, list) or body.get("type") in LIFECYCLE:
                    self.task_messages += 1
                receive(body, message)

            receiver._receive = counted
            self._ready.set()
            while not self._stop.is_set():
                try:
                    receiver.capture(limit=None, timeout=0.5, wakeup=False)
                except TimeoutError:
                    continue

    def __enter__(self) -> CeleryEvents:
        self._thread.start()
        self._ready.wait(5)
        # The receiver's queue is bound once it consumes: probe until a probe comes back.
        with self.app.events.default_dispatcher() as dispatcher:

            def probed() -> bool:
                dispatcher.send("test-probe")
                return bool(self.of_type("test-probe"))

            assert wait_until(probed, timeout_s=10, interval_s=0.1), "no Celery events"
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.seen) if e.get("type") == kind]
