"""Example functions for ``function`` tasks (listed in TASKPLANE_FUNCTION_MODULES)."""

from __future__ import annotations

import time
from typing import Any

import taskplane


@taskplane.function("add")
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@taskplane.function("echo")
def echo(**payload: Any) -> dict[str, Any]:
    """Return the payload as given (sequential plans show ``previous`` here)."""
    return payload


@taskplane.function("noop")
def noop(**_payload: Any) -> None:
    """Do nothing (benchmarks)."""
    return None


@taskplane.function("sleep")
def sleep(ms: float = 100, **_payload: Any) -> float:
    """Wait *ms* milliseconds and return it."""
    time.sleep(ms / 1000.0)
    return ms


@taskplane.function("score")
def score(value: Any = None, confidence: float = 0.9, **_payload: Any) -> taskplane.FunctionResult:
    """Return *value* with the given confidence."""
    return taskplane.FunctionResult(value=value, confidence=confidence)


@taskplane.function("fail")
def fail(message: str = "failed on purpose", **_payload: Any) -> None:
    """Raise, to show how a failing function ends."""
    raise RuntimeError(message)
