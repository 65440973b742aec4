"""Refuse malformed broker messages instead of letting them stop the worker.

Celery's default strategy unpacks a task message's body as ``(args, kwargs,
embed)`` in the consumer itself; a body of another shape (``{"a": 1}``,
``5``, ``null``) raises ``ValueError``/``TypeError`` there, which Celery
treats as unrecoverable: the worker exits, the message goes back to the
queue, and the next worker to take it exits too. Anyone who can write to the
broker could stop the cluster with one message.

:class:`GuardedTask` (the base class of every task of taskplane's app,
Celery's built-in ones included) checks the body's shape first and raises
:class:`~celery.exceptions.InvalidTaskError`, which the consumer logs
("Received invalid task message") and rejects without requeueing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Task
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default


def body_problem(body: Any) -> str | None:
    """Why *body* is not a task message body Celery can run, or None when it is.

    Accepted: protocol 2's ``[args, kwargs, embed]`` and the hybrid
    ``{"args": [...], "kwargs": {...}}`` form.
    """
    if isinstance(body, dict):
        args, kwargs = body.get("args"), body.get("kwargs", {})
        if "args" not in body or not isinstance(args, list | tuple):
            return "a dict body needs an 'args' list"
        if not isinstance(kwargs, dict | None):
            return "'kwargs' must be an object"
        return None
    if not isinstance(body, list | tuple) or len(body) != 3:
        return f"body must be [args, kwargs, embed], got {type(body).__name__}"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        return "body must be [args (list), kwargs (object), embed]"
    if not isinstance(embed, dict | None):
        return "embed must be an object or null"
    return None


def guarded(task: Task, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    """Celery's default strategy for *task*, with the body's shape checked first."""
    handle = default(task, app, consumer, **options)

    def task_message_handler(
        message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any
    ) -> Any:
        if body is None:  # protocol 2: the consumer has not decoded the body yet
            problem = body_problem(message.payload)
            if problem is not None:
                raise InvalidTaskError(f"{task.name}: {problem}")
        return handle(message, body, ack, reject, callbacks, **kwargs)

    return task_message_handler


class GuardedTask(Task):
    """Base class of taskplane's tasks: malformed messages are rejected, not fatal."""

    Strategy = "taskplane.tasks.guard:guarded"
