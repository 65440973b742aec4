"""The toy analysis both example agents run: deterministic, instant, dependency-free.

The value summarises the input (its fields and how many words its strings
hold); the confidence is the payload's ``confidenceHint`` when it is a number
in 0..1, else derived from a hash of the input (0.50-0.99), so the same input
always gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, dict):
        return sum(_words(item) for item in value.values())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    return 0


def confidence_for(payload: dict[str, Any]) -> float:
    """The payload's ``confidenceHint`` if valid, else a stable hash-derived 0.50-0.99."""
    hint = payload.get("confidenceHint")
    if isinstance(hint, int | float) and not isinstance(hint, bool) and 0.0 <= hint <= 1.0:
        return float(hint)
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
    return 0.5 + (int(digest[:8], 16) % 50) / 100.0


def analyze(payload: dict[str, Any], *, task: str = "analyze") -> tuple[Any, float, str]:
    """Analyse *payload*; returns ``(value, confidence, reasoning)``."""
    fields = sorted(payload)
    words = _words(payload)
    value = {
        "task": task,
        "summary": f"{len(fields)} fields, {words} words",
        "fields": fields,
        "words": words,
    }
    confidence = confidence_for(payload)
    reasoning = f"counted the words in {len(fields)} top-level fields"
    return value, confidence, reasoning
