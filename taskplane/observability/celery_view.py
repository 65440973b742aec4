"""How a taskplane task looks in Flower and worker logs.

Every task of a plan runs as ``taskplane.run_task``; this module gives each one
a readable name (Celery's ``shadow``: ``agent:reviewer``, ``http:GET
api.example.com``, ``function:add``, ``pattern:code-review``) and a small,
redacted JSON ``kwargsrepr``: secrets and ``headers`` are masked and the whole
text is capped at :data:`MAX_REPR_CHARS`, so Celery's events stay small.
"""

from __future__ import annotations

import json
import re
import socket
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from celery.app.amqp import AMQP

#: Longest kwargs text shown in Flower and logs (characters).
MAX_REPR_CHARS = 1024
#: Longest readable task name.
MAX_NAME_CHARS = 120
#: What replaces a masked value.
MASK = "***"
#: The node name every process that sends tasks gives its ``task-sent`` events.
SENDER_NODE = "taskplane-sender"
#: Keys whose values are never shown (matched case-insensitively, anywhere in the key).
SECRET_KEY = re.compile(
    r"headers|authori[sz]ation|token|secret|passw|api[-_]?key|cookie|credential|private",
    re.IGNORECASE,
)


def shadow_name(task: dict[str, Any]) -> str:
    """The readable name of *task* (a task's JSON) in Flower and logs."""
    kind = str(task.get("type") or "task")
    target = str(task.get("target") or "")
    if kind == "http":
        payload = task.get("payload") or {}
        method = str(payload.get("method", "GET")).upper() if isinstance(payload, dict) else "GET"
        try:
            host = urlsplit(target).hostname or "?"
        except ValueError:
            host = "?"
        target = f"{method} {host}"  # never the path or query: they may hold secrets
    return f"{kind}:{target}"[:MAX_NAME_CHARS]


def redact(value: Any) -> Any:
    """*value* with every secret-looking key's value replaced by :data:`MASK`."""
    if isinstance(value, dict):
        return {
            k: MASK if isinstance(k, str) and SECRET_KEY.search(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def kwargs_repr(kwargs: dict[str, Any]) -> str:
    """The redacted, size-capped JSON of a ``run_task`` call's keyword arguments.

    An http task's URL is shown without its query (it may carry a key).
    """
    shown = redact(kwargs)
    task = shown.get("task")
    if isinstance(task, dict) and task.get("type") == "http" and "?" in str(task.get("target")):
        shown["task"] = {**task, "target": str(task["target"]).split("?", 1)[0] + "?" + MASK}
    text = _dumps(shown)
    if len(text) <= MAX_REPR_CHARS:
        return text
    task = shown.get("task")
    if isinstance(task, dict) and "payload" in task:
        size = len(_dumps(task["payload"]))
        shown["task"] = {**task, "payload": f"<{size} characters>"}
        text = _dumps(shown)
    return text if len(text) <= MAX_REPR_CHARS else text[: MAX_REPR_CHARS - 1] + "…"


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class NamingAMQP(AMQP):
    """Celery's message builder, with the ``task-sent`` event under the task's shadow name.

    Celery names the task in ``task-sent`` by its registered name and in the
    worker's events by its shadow; a monitor that gets ``task-sent`` last
    (it comes from another connection) would show ``taskplane.run_task``.
    Every sending process signs its ``task-sent`` events with one node name
    per host (:data:`SENDER_NODE`), not Celery's per-process ``gen<pid>``.
    """

    @cached_property
    def _event_dispatcher(self) -> Any:
        # Celery names a sending process gen<pid>@host: every client and CLI run would be a
        # new "worker" in Flower and a new label value of its /metrics; one name per host
        hostname = f"{SENDER_NODE}@{socket.gethostname()}"
        return self.app.events.Dispatcher(enabled=False, hostname=hostname)

    def as_task_v2(self, task_id: str, name: str, *args: Any, **kwargs: Any) -> Any:
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        shadow = message.headers.get("shadow")
        if shadow and message.sent_event is not None:
            message.sent_event["name"] = shadow
        return message
