"""Names and argument texts a task shows in Flower and worker logs."""

from __future__ import annotations

import json

from taskplane.observability.celery_view import MASK, MAX_REPR_CHARS, kwargs_repr, shadow_name
from taskplane.tasks.states import Finished, TaskCancelled, TaskFailed


def test_shadow_names_are_readable() -> None:
    assert shadow_name({"type": "agent", "target": "reviewer"}) == "agent:reviewer"
    assert shadow_name({"type": "function", "target": "add"}) == "function:add"
    assert shadow_name({"type": "pattern", "target": "code-review"}) == "pattern:code-review"
    http = {"type": "http", "target": "https://api.example.com/v1/x?key=s3cret"}
    assert shadow_name(http) == "http:GET api.example.com"
    post = {**http, "payload": {"method": "post"}}
    assert shadow_name(post) == "http:POST api.example.com"
    assert len(shadow_name({"type": "agent", "target": "a" * 5000})) <= 120


def test_kwargs_repr_masks_secrets_headers_and_url_queries() -> None:
    task = {
        "type": "http",
        "target": "https://h/p?key=s3cret",
        "payload": {"headers": {"X": "s3cret"}, "json": {"apiKey": "s3cret", "n": [{"token": 1}]}},
    }
    text = kwargs_repr({"plan_id": "p1", "index": 0, "task": task})
    assert "s3cret" not in text
    shown = json.loads(text)
    assert shown["plan_id"] == "p1"
    assert shown["task"]["target"] == f"https://h/p?{MASK}"
    assert shown["task"]["payload"]["headers"] == MASK
    assert shown["task"]["payload"]["json"] == {"apiKey": MASK, "n": [{"token": MASK}]}


def test_kwargs_repr_is_capped() -> None:
    task = {"type": "function", "target": "echo", "payload": {"x": "y" * 10_000}}
    shown = json.loads(kwargs_repr({"plan_id": "p1", "index": 3, "task": task}))
    assert shown["index"] == 3 and shown["task"]["payload"].startswith("<")
    huge = {"plan_id": "p" * 5000, "index": 0, "task": {}}
    assert len(kwargs_repr(huge)) <= MAX_REPR_CHARS


def test_outcomes_carry_their_envelope_with_a_short_text() -> None:
    failed = {"taskId": "t1", "status": "failure", "error": "boom " * 500, "result": "x" * 9999}
    exc = TaskFailed(failed)
    assert exc.envelope is failed and len(repr(exc)) < 400 and "x" * 50 not in repr(exc)
    ok = {"taskId": "t2", "status": "success", "result": "x" * 9999}
    assert Finished(ok).envelope is ok and repr(Finished(ok)) == "t2 success"
    cancelled = {"taskId": "t3", "status": "cancelled"}
    assert TaskCancelled(cancelled).envelope is cancelled
