"""The JSON log formatter, outside any task."""

from __future__ import annotations

import json
import logging

from taskplane.observability.logs import JsonFormatter


def test_a_line_outside_a_task_has_null_context() -> None:
    record = logging.LogRecord("taskplane.x", logging.WARNING, __file__, 1, "hi %s", ("you",), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "hi you" and line["level"] == "WARNING"
    assert line["logger"] == "taskplane.x"
    assert {
        k: line[k] for k in ("plan_id", "task_id", "agent", "attempt", "trace_id")
    } == dict.fromkeys(("plan_id", "task_id", "agent", "attempt", "trace_id"))


def test_an_exception_stays_inside_the_one_line() -> None:
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    text = JsonFormatter().format(record)
    assert "\n" not in text and "ValueError: bad" in json.loads(text)["exception"]
