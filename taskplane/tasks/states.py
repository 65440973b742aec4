"""How a finished ``run_task`` ends in Celery, so Flower shows the envelope's outcome.

The envelope is recorded in the plan store before any of this (first outcome
wins); these only choose the Celery state Flower and the worker log show:

* success → Celery SUCCESS (the task returns :class:`Finished`, a short repr);
* failure or timeout → Celery FAILURE: the task raises :class:`TaskFailed`,
  an *expected* exception, so the worker logs one line without a traceback,
  sends ``task-failed`` and acknowledges the message (it is not redelivered);
* cancelled → Celery REVOKED: the task sends ``task-revoked`` and raises
  :class:`TaskCancelled` (Celery's ``Ignore``: acknowledged, no other event).

Both exceptions carry the envelope, for whatever logs or inspects them. They
never leave the worker: clients read results from the plan store. Celery
sends a chain's next step only after a success, so a sequential plan's chain
is carried on by :func:`continue_chain` before either is raised: the next
task runs (or finds the plan ended) exactly as after a success.
"""

from __future__ import annotations

from typing import Any

from celery import Task, signature
from celery.exceptions import Ignore

#: Longest error text an exception carries into Celery's events and logs.
MAX_ERROR_CHARS = 300


class Finished:
    """A successful task's envelope as ``run_task`` returns it: short in Celery's events.

    Celery puts the repr of a task's return value in ``task-succeeded``; this
    one is the task id and status, never the result (it may be large or private).
    """

    __slots__ = ("envelope",)

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope

    def __repr__(self) -> str:
        return f"{self.envelope.get('taskId', '?')} {self.envelope.get('status', '?')}"


class TaskFailed(Exception):
    """A task's envelope is a failure or a timeout (Celery state FAILURE)."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        status = envelope.get("status", "failure")
        error = str(envelope.get("error") or "")[:MAX_ERROR_CHARS]
        super().__init__(f"{envelope.get('taskId', '?')} {status}: {error}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (_failed, (str(self),))


def _failed(text: str) -> Exception:
    # what a monitor unpickling the event gets: the text, not the envelope
    return Exception(text)


class TaskCancelled(Ignore):
    """A task's envelope says cancelled (Celery state REVOKED, announced by the task).

    Raised too for an envelope recorded before this delivery (the plan was
    cancelled while the task waited in the queue), so Flower shows it.
    """

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope
        super().__init__(f"{envelope.get('taskId', '?')} cancelled")


class Rescheduled(Exception):
    """Why a task is retried: the text of the worker's one retry log line."""


def continue_chain(task: Task) -> None:
    """Send the next step of the chain *task* (running) belongs to, as a success would."""
    request = task.request
    steps = list(request.chain or [])
    if not steps:
        return
    request.chain = None  # sent here, never again by Celery
    step = signature(steps.pop(), app=task.app)
    step.apply_async(chain=steps, parent_id=request.id, root_id=request.root_id)
