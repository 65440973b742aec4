"""An event subscriber in a process of its own, for the event delivery scenarios.

``python -m tests.reliability.subscriber OUT [SINCE]`` builds an engine from
the ``TASKPLANE_*`` environment, subscribes to ``task:completed`` and
``task:failed`` through ``engine.on`` (from *SINCE*, an event id, when
given), prints ``ready`` once subscribed and appends one JSON line per
event to *OUT*: ``{"id", "type", "planId", "taskId"}``. It stops when its
standard input closes.
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from taskplane import ExecutionEngine


def main(out_path: str, since: str | None) -> None:
    engine = ExecutionEngine()
    lock = threading.Lock()
    with open(out_path, "a", encoding="utf-8") as out:

        def write(event: dict[str, Any]) -> None:
            data = event["data"]
            line = {
                "id": event["id"],
                "type": event["type"],
                "planId": data.get("planId"),
                "taskId": data.get("taskId"),
            }
            with lock:
                out.write(json.dumps(line) + "\n")
                out.flush()

        engine.on("task:completed", write, since=since)
        engine.on("task:failed", write, since=since)
        print("ready", flush=True)
        sys.stdin.read()  # until the test closes our stdin
        engine.close()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
